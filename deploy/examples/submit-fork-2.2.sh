#!/usr/bin/env bash
# spark-submit for the apache-spark-on-k8s 2.2 fork (0.5.0) against
# spark-shuffle-agent deployed with deploy/overlays/fork-labels. An example to
# copy from: replace the API server, namespaces, service account and images.
#
# The fork's driver lists the agent pods itself, so its service account needs
# get/list/watch on pods in spark.kubernetes.shuffle.namespace
# (fork-driver-rbac.yaml). The fork mounts each spark.local.dir entry in the
# executors as a hostPath at the same path when the shuffle service is on.
set -euo pipefail

APISERVER=${APISERVER:-https://kubernetes.example:6443}

exec "${SPARK_HOME:?set SPARK_HOME}/bin/spark-submit" \
  --master "k8s://${APISERVER}" \
  --deploy-mode cluster \
  --class org.apache.spark.examples.GroupByTest \
  --conf spark.app.name=shuffle-agent-smoke \
  --conf spark.kubernetes.namespace=spark-jobs \
  --conf spark.kubernetes.authenticate.driver.serviceAccountName=spark \
  --conf spark.kubernetes.driver.docker.image=kubespark/spark-driver:v2.2.0-kubernetes-0.5.0 \
  --conf spark.kubernetes.executor.docker.image=kubespark/spark-executor:v2.2.0-kubernetes-0.5.0 \
  --conf spark.kubernetes.initcontainer.docker.image=kubespark/spark-init:v2.2.0-kubernetes-0.5.0 \
  --conf spark.shuffle.service.enabled=true \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.kubernetes.shuffle.namespace=spark-shuffle-agent \
  --conf spark.kubernetes.shuffle.labels=app=spark-shuffle-service,spark-version=2.2.0 \
  --conf spark.local.dir=/tmp/spark-local \
  local:///opt/spark/examples/jars/spark-examples_2.11-2.2.0-k8s-0.5.0.jar 10 400000 2
