#!/usr/bin/env bash
# spark-submit for unmodified Spark 3.5 / 4.x against spark-shuffle-agent
# deployed with deploy/overlays/hostnetwork. An example to copy from, not a tool:
# replace the API server, namespace, service account, image and application.
set -euo pipefail

APISERVER=${APISERVER:-https://kubernetes.example:6443}
HERE=$(cd "$(dirname "$0")" && pwd)
# Must equal the agent's --root and hostPath (deploy/base/daemonset.yaml).
LOCAL_DIR=/var/lib/spark/local
SPARK_IMAGE_VERSION=${SPARK_IMAGE_VERSION:-4.0.0}

exec "${SPARK_HOME:?set SPARK_HOME}/bin/spark-submit" \
  --master "k8s://${APISERVER}" \
  --deploy-mode cluster \
  --name shuffle-agent-smoke \
  --class org.apache.spark.examples.GroupByTest \
  --conf spark.kubernetes.namespace=spark-jobs \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName=spark \
  --conf spark.kubernetes.container.image="apache/spark:${SPARK_IMAGE_VERSION}" \
  --conf spark.kubernetes.executor.podTemplateFile="${HERE}/executor-pod-template.yaml" \
  --conf spark.shuffle.service.enabled=true \
  --conf spark.shuffle.service.port=7337 \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.dynamicAllocation.shuffleTracking.enabled=false \
  --conf spark.dynamicAllocation.minExecutors=0 \
  --conf spark.dynamicAllocation.maxExecutors=8 \
  --conf spark.dynamicAllocation.executorIdleTimeout=30s \
  --conf spark.shuffle.service.removeShuffle=true \
  --conf spark.blockManager.port=0 \
  --conf spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1.mount.path="${LOCAL_DIR}" \
  --conf spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1.options.path="${LOCAL_DIR}" \
  --conf spark.local.dir="${LOCAL_DIR}" \
  "local:///opt/spark/examples/jars/spark-examples_2.13-${SPARK_IMAGE_VERSION}.jar" \
  10 10000 1000 10
# GroupByTest args: mappers, key-value pairs per mapper, value bytes, reducers
# (about 100 MB of shuffle data). For a 3.5 image the jar is spark-examples_2.12-3.5.x.jar.
