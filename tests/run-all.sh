#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (kubectl from Debian,
# pyspark and the Python test tools into .venv), builds the agent, then runs
#   1. the Rust unit and integration tests (cargo nextest),
#   2. the real-Spark suite (Spark 4.3's own client and jobs against the agent),
#   3. the deployment checks (kustomize render + Kubernetes schema validation).
#   4. the metrics port of the real binary (tests/metrics/, prometheus_client's parser),
#   5. the image: deploy/image/build.sh, then the image run from its unpacked filesystem
#      (tests/spark/test_image.py, in step 2's pytest run; needs root for the namespaces),
#   6. the other Spark lines, 3.5.8 and 4.0.1 (tests/run-spark-lines.sh).
# Usage: tests/run-all.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v kubectl >/dev/null || need_apt+=(kubectl)
# The image test: buildah builds FROM scratch offline; unshare, setpriv and chroot run the image.
command -v buildah >/dev/null || need_apt+=(buildah)
if [ ${#need_apt[@]} -gt 0 ]; then
    step "installing ${need_apt[*]} (Debian)"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v java >/dev/null || { echo "Java 17 is required (the real Spark client runs on it)" >&2; exit 1; }

step "python venv with pyspark and test tools"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt

step "building the agent"
cargo build --release --bins --quiet

step "Rust unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
else
    cargo test --no-fail-fast
fi

step "real Spark (pyspark 4.3.0 jars, Java 17) against the agent, the image, and deployment checks"
AGENT_BIN="$PWD/target/release/spark-shuffle-agent" SHUFFLE_SERVER="${SHUFFLE_SERVER:-agent}" \
    .venv/bin/python -m pytest tests/spark tests/deploy tests/metrics -q -p no:cacheprovider "$@"

step "Spark 3.5.8 and 4.0.1 clients and jobs against the agent"
tests/run-spark-lines.sh "$@"
