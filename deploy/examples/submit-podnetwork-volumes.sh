#!/usr/bin/env bash
# spark-submit for unmodified Spark 3.5 / 4.x against spark-shuffle-agent
# deployed with deploy/overlays/podnetwork-volumes: executors on the ordinary
# pod network with their local dir on a node-local PersistentVolume, so the
# executor pods need neither hostNetwork nor hostPath and pass the Pod Security
# "restricted" level. An example to copy from, not a tool: replace the API
# server, namespace, service account, image and application.
#
# Compared with submit-podnetwork.sh: the local dir is an on-demand
# PersistentVolumeClaim per executor from the local-path StorageClass
# (storageclass-local-path.yaml) instead of a hostPath, the claims are owned by
# the driver pod, host-local disk reads are off, and the pod template is the
# restricted one. If the namespace enforces the restricted level, the driver
# pod must pass it too (spark.kubernetes.driver.podTemplateFile with the same
# pod securityContext and container securityContext; no init container).
set -euo pipefail

APISERVER=${APISERVER:-https://kubernetes.example:6443}
HERE=$(cd "$(dirname "$0")" && pwd)
# Where the volume is mounted in the executor: any path (the agent translates it
# to the PV's node directory); a volume named spark-local-dir-* is a local dir.
LOCAL_DIR=/data/spark-local-dir-1
STORAGE_CLASS=${STORAGE_CLASS:-local-path}
SPARK_IMAGE_VERSION=${SPARK_IMAGE_VERSION:-4.0.0}

exec "${SPARK_HOME:?set SPARK_HOME}/bin/spark-submit" \
  --master "k8s://${APISERVER}" \
  --deploy-mode cluster \
  --name shuffle-agent-podnetwork-volumes-smoke \
  --class org.apache.spark.examples.GroupByTest \
  --conf spark.kubernetes.namespace=spark-jobs \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName=spark \
  --conf spark.kubernetes.container.image="apache/spark:${SPARK_IMAGE_VERSION}" \
  --conf spark.kubernetes.executor.podTemplateFile="${HERE}/executor-pod-template-restricted.yaml" \
  --conf spark.shuffle.service.enabled=true \
  --conf spark.shuffle.service.port=7337 \
  --conf spark.shuffle.registration.maxAttempts=6 \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.dynamicAllocation.shuffleTracking.enabled=false \
  --conf spark.dynamicAllocation.minExecutors=0 \
  --conf spark.dynamicAllocation.maxExecutors=8 \
  --conf spark.dynamicAllocation.executorIdleTimeout=30s \
  --conf spark.shuffle.service.removeShuffle=true \
  --conf spark.shuffle.readHostLocalDisk=false \
  --conf spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1.options.claimName=OnDemand \
  --conf spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1.options.storageClass="${STORAGE_CLASS}" \
  --conf spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1.options.sizeLimit=100Gi \
  --conf spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1.mount.path="${LOCAL_DIR}" \
  --conf spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1.mount.readOnly=false \
  --conf spark.kubernetes.driver.ownPersistentVolumeClaim=true \
  --conf spark.kubernetes.driver.reusePersistentVolumeClaim=true \
  "local:///opt/spark/examples/jars/spark-examples_2.13-${SPARK_IMAGE_VERSION}.jar" \
  10 10000 1000 10
# OnDemand: Spark creates one claim per executor, <executor pod>-pvc-0, and with
# ownPersistentVolumeClaim the driver pod owns it, so the claim outlives the
# executor (its shuffle files stay on the node, served by the agent) and goes
# when the driver pod is deleted; the class's reclaimPolicy Delete then removes
# the directory. reusePersistentVolumeClaim (Spark's default since 3.4): a new
# executor takes over a dead one's claim, and so lands on that claim's node.
# No spark.local.dir: executors use the volume's mount path (SPARK_LOCAL_DIRS);
# the driver keeps its own default.
# spark.shuffle.readHostLocalDisk=false: on the pod network every executor has a
# host of its own (its pod IP), so Spark never takes another executor's blocks as
# host-local; were these settings reused with hostNetwork executors, which share
# the node's address, Spark would open the other executor's registered path,
# /data/spark-local-dir-1/..., in its own container, where a different volume, or
# nothing, is mounted. Off, every fetch goes through the agent.
# spark.shuffle.registration.maxAttempts=6: as in submit-podnetwork.sh.
