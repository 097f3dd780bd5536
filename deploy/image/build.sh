#!/usr/bin/env bash
# Build the agent's image into the local image store, offline, and print its name last.
#
#   deploy/image/build.sh        # IMAGE_NAME (default localhost/spark-shuffle-agent), tag = crate version
#   AGENT_BIN=path deploy/image/build.sh   # use that release binary, do not run cargo
#
# Why an assembled root filesystem and not a static binary: the only Rust target here is
# x86_64-unknown-linux-gnu (musl is not installable offline), and a statically linked glibc
# cannot load its NSS modules at run time. So the image holds the dynamically linked release
# binary and exactly the shared objects `ldd` lists for it, copied from this build host;
# tests/image/ runs the image's entrypoint from its unpacked filesystem, so a missing one fails.
#
# Reproducible: the binary is built with --locked from the commit, layer file times and the
# created time are SOURCE_DATE_EPOCH (default 0), and buildah's version label and history are
# left out, so two builds of one commit on one host give the same image ID. What can differ:
# the shared objects come from the build host (another glibc, another image), and a dirty work
# tree gives a `-dirty` revision label.
set -euo pipefail

IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$IMAGE_DIR/../.." && pwd)
cd "$REPO"
fail() { echo "build.sh: $*" >&2; exit 1; }
command -v buildah >/dev/null || fail "buildah not found (Debian: apt-get install -y buildah)"

field() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" Cargo.toml | head -1; }
VERSION=$(field version)
LICENSES=$(field license)
NAME=${IMAGE_NAME:-localhost/spark-shuffle-agent}:$VERSION
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $REVISION != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    REVISION=$REVISION-dirty
fi
SOURCE=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo "git:$REVISION")}
EPOCH=${SOURCE_DATE_EPOCH:-0}

# AGENT_BIN: a binary already built (tests/run-all.sh passes the one it just built; a shared build
# machine passes a copy rather than compiling again). Its caller vouches that it is this commit's
# release build: the revision label says which commit the script ran from, not how the binary was made.
if [[ -n ${AGENT_BIN:-} ]]; then
    BIN=$AGENT_BIN
    [[ -x $BIN ]] || fail "AGENT_BIN=$BIN is not an executable file"
    echo "using the agent binary $BIN (AGENT_BIN; not building)" >&2
else
    echo "building the agent (cargo build --release --locked)" >&2
    cargo build --release --locked --bin spark-shuffle-agent --quiet
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/spark-shuffle-agent
fi

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/rootfs
install -d -m 0755 "$ROOT/usr/bin" "$ROOT/etc" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" \
    "$ROOT/usr/share/doc/spark-shuffle-agent"
install -d -m 1777 "$ROOT/tmp"
# Debug info off (the release profile keeps it for profiling); symbols stay for backtraces.
objcopy --strip-debug "$BIN" "$ROOT/usr/bin/spark-shuffle-agent"
chmod 0755 "$ROOT/usr/bin/spark-shuffle-agent"
# Every shared object the binary needs, at the path the dynamic loader will look for it.
for lib in $(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$ROOT$lib"
done
printf 'root:x:0:0:root:/:/nonexistent\nspark:x:185:185:spark:/nonexistent:/nonexistent\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nspark:x:185:\n' >"$ROOT/etc/group"
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group"
install -m 0644 LICENSE "$ROOT/usr/share/doc/spark-shuffle-agent/LICENSE"

buildah bud --quiet --timestamp "$EPOCH" --identity-label=false --omit-history --layers=false \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    --build-arg SOURCE="$SOURCE" --build-arg LICENSES="$LICENSES" \
    -f "$IMAGE_DIR/Containerfile" -t "$NAME" "$STAGE" >&2
echo "image ID $(buildah images --noheading --no-trunc --format '{{.ID}}' "$NAME"), $(buildah images --noheading --format '{{.Size}}' "$NAME")" >&2
echo "$NAME"
