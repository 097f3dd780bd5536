#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (kubectl from Debian,
# pyspark and the Python test tools into .venv), builds the agent, then runs
#   1. the Rust unit and integration tests (cargo nextest),
#   2. the real-Spark suite (Spark 4.3's own client and jobs against the agent),
#   3. the deployment checks (kustomize render + Kubernetes schema validation).
#   4. the metrics port of the real binary (tests/metrics/, prometheus_client's parser), and
#      tests/faultfs, the FUSE filesystem that injects disk faults for the other tests,
#   5. the image: deploy/image/build.sh, then the image run from its unpacked filesystem
#      (tests/spark/test_image.py, in step 2's pytest run; needs root for the namespaces),
#   6. the other Spark lines, 3.5.8 and 4.0.1 (tests/run-spark-lines.sh).
# Usage: tests/run-all.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# kubectl renders the manifests; nft is what pod-network mode installs its redirects with (the
# namespaced podnet tests run it inside network namespaces they create); buildah builds the
# image FROM scratch offline (unshare, setpriv and chroot, from util-linux, run it); fuse3 brings
# libfuse 3 and fusermount3 for tests/faultfs, the fault-injecting filesystem (through mfusepy).
need_apt=()
command -v kubectl >/dev/null || need_apt+=(kubectl)
command -v nft >/dev/null || need_apt+=(nftables)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
if [ ${#need_apt[@]} -gt 0 ]; then
    step "installing ${need_apt[*]} (Debian)"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v java >/dev/null || { echo "Java 17 is required (the real Spark client runs on it)" >&2; exit 1; }

step "python venv with pyspark and test tools"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt

# One profile for everything: the Rust tests and the real-Spark tests use the same release
# build of the crate, so nothing is compiled twice (the integration tests build the binary).
step "Rust unit and integration tests (release profile; they build the agent binary too)"
# The auth tests talk to Spark's own Java AuthEngine and SASL client from the pyspark jars.
export SPARK_JARS_DIR="$(.venv/bin/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --cargo-profile release --no-fail-fast
else
    cargo test --release --no-fail-fast
fi

step "real Spark (pyspark 4.3.0 jars, Java 17) against the agent, the image, and deployment checks"
AGENT_BIN="$PWD/target/release/spark-shuffle-agent" SHUFFLE_SERVER="${SHUFFLE_SERVER:-agent}" \
    .venv/bin/python -m pytest tests/spark tests/deploy tests/metrics tests/faultfs -q -p no:cacheprovider "$@"

step "Spark 3.5.8 and 4.0.1 clients and jobs against the agent"
tests/run-spark-lines.sh "$@"
