#!/usr/bin/env bash
# spark-submit for unmodified Spark 3.5 / 4.x against spark-shuffle-agent
# deployed with deploy/overlays/podnetwork: executors on the ordinary pod
# network, no hostNetwork. An example to copy from, not a tool: replace the API
# server, namespace, service account, image and application.
#
# Compared with submit-hostnetwork.sh: no spark.blockManager.port=0 (each
# executor has its own pod IP and port space, so Spark's default port cannot
# clash), a pod template without hostNetwork, and more registration attempts.
set -euo pipefail

APISERVER=${APISERVER:-https://kubernetes.example:6443}
HERE=$(cd "$(dirname "$0")" && pwd)
# Must equal the agent's --root and hostPath (deploy/base/daemonset.yaml).
LOCAL_DIR=/var/lib/spark/local
SPARK_IMAGE_VERSION=${SPARK_IMAGE_VERSION:-4.0.0}

exec "${SPARK_HOME:?set SPARK_HOME}/bin/spark-submit" \
  --master "k8s://${APISERVER}" \
  --deploy-mode cluster \
  --name shuffle-agent-podnetwork-smoke \
  --class org.apache.spark.examples.GroupByTest \
  --conf spark.kubernetes.namespace=spark-jobs \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName=spark \
  --conf spark.kubernetes.container.image="apache/spark:${SPARK_IMAGE_VERSION}" \
  --conf spark.kubernetes.executor.podTemplateFile="${HERE}/executor-pod-template-podnetwork.yaml" \
  --conf spark.shuffle.service.enabled=true \
  --conf spark.shuffle.service.port=7337 \
  --conf spark.shuffle.registration.maxAttempts=6 \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.dynamicAllocation.shuffleTracking.enabled=false \
  --conf spark.dynamicAllocation.minExecutors=0 \
  --conf spark.dynamicAllocation.maxExecutors=8 \
  --conf spark.dynamicAllocation.executorIdleTimeout=30s \
  --conf spark.shuffle.service.removeShuffle=true \
  --conf spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1.mount.path="${LOCAL_DIR}" \
  --conf spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1.options.path="${LOCAL_DIR}" \
  --conf spark.local.dir="${LOCAL_DIR}" \
  "local:///opt/spark/examples/jars/spark-examples_2.13-${SPARK_IMAGE_VERSION}.jar" \
  10 10000 1000 10
# spark.shuffle.registration.maxAttempts=6 (Spark's default: 3, 5 s apart): room for
# the agent to adopt a new executor pod before its registration gives up, with or
# without the init container in the pod template.
