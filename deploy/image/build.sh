#!/usr/bin/env bash
# Build the agent's image into the local image store, offline, and print its name last.
#
#   deploy/image/build.sh        # IMAGE_NAME (default localhost/spark-shuffle-agent), tag = crate version
#   AGENT_BIN=path deploy/image/build.sh   # use that release binary, do not run cargo
#
# Why an assembled root filesystem and not a static binary: the only Rust target here is
# x86_64-unknown-linux-gnu (musl is not installable offline), and a statically linked glibc
# cannot load its NSS modules at run time. So the image holds the dynamically linked release
# binary, this host's /usr/sbin/nft (Debian's nftables, for pod network mode) and exactly the
# shared objects `ldd` lists for the two, copied from this build host, with those packages'
# copyright files; tests/spark/test_image.py runs the image's entrypoint and its nft from its
# unpacked filesystem, so a missing one fails.
#
# Reproducible: the binary is built with --locked from the commit, layer file times and the
# created time are SOURCE_DATE_EPOCH (default 0), and buildah's version label and history are
# left out, so two builds of one commit on one host give the same image ID. What can differ:
# nft and the shared objects come from the build host (another Debian point release, another
# image), and a dirty work tree gives a `-dirty` revision label.
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

# nft, from Debian's nftables: pod network mode runs it inside executor pods' network namespaces
# (agent.network.nft, /usr/sbin/nft in overlays/podnetwork; src/podnet/nft.rs says why a program).
NFT=/usr/sbin/nft
[[ -x $NFT ]] || fail "$NFT not found (Debian: apt-get install -y nftables)"
command -v dpkg-query >/dev/null || fail "dpkg-query not found: the notices of the files copied from this host come from its Debian packages"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/rootfs
install -d -m 0755 "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/etc" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" \
    "$ROOT/usr/share/doc/spark-shuffle-agent"
install -d -m 1777 "$ROOT/tmp"
# Debug info off (the release profile keeps it for profiling); symbols stay for backtraces.
objcopy --strip-debug "$BIN" "$ROOT/usr/bin/spark-shuffle-agent"
chmod 0755 "$ROOT/usr/bin/spark-shuffle-agent"
install -m 0755 "$NFT" "$ROOT/usr/sbin/nft"  # Debian ships it stripped
# Every shared object the two programs need (and the loader), at the path the dynamic loader will
# look for it, as `ldd` resolves them on this host: nothing listed by hand, so a new dependency of
# a new nftables comes along, and one `ldd` cannot find stops the build here rather than in a pod.
from_host=("$NFT")
for prog in "$BIN" "$NFT"; do
    deps=$(ldd "$prog")
    ! grep 'not found' <<<"$deps" >&2 || fail "ldd $prog: shared objects not found"
    for lib in $(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$deps"); do
        [[ -e $ROOT$lib ]] && continue
        install -D -m 0755 "$(readlink -f "$lib")" "$ROOT$lib"
        from_host+=("$lib")
    done
done
printf 'root:x:0:0:root:/:/nonexistent\nspark:x:185:185:spark:/nonexistent:/nonexistent\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nspark:x:185:\n' >"$ROOT/etc/group"
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group"
install -m 0644 LICENSE "$ROOT/usr/share/doc/spark-shuffle-agent/LICENSE"

# The notices of what came from this host's packages (nftables and libxtables GPL-2, libnftnl
# GPL-2+, glibc and libmnl LGPL-2.1, gmp LGPL-3+ or GPL-2+, jansson, libedit, ncurses, libbsd and
# libmd permissive; all of them ask that the copyright notices and licence go along with the
# binaries, and the GPL that the source can be had): each package's copyright file
# where Debian keeps it, /usr/share/doc/PKG/copyright, the licence texts those point to in
# /usr/share/common-licenses, and THIRD-PARTY: which file came from which package, and the source
# package and version that is its corresponding source.
owner() {  # the package that installed $1; dpkg knows some files by their /lib path, some by /usr/lib
    local f
    for f in "$1" "$(readlink -f "$1")"; do
        dpkg-query -S "$f" 2>/dev/null | sed -n '1s/^\([^:]*\).*/\1/p' | grep . && return
    done
    fail "no Debian package owns $1, so its licence is not known"
}
third_party=$ROOT/usr/share/doc/spark-shuffle-agent/THIRD-PARTY
{
    echo "Files of this image copied from the build host's Debian packages. Each package's copyright and"
    echo "licence are in /usr/share/doc/PACKAGE/copyright (full licence texts in /usr/share/common-licenses);"
    echo "the corresponding source is the Debian source package at the version named here."
    echo
    echo "file package version source-package source-version"
} >"$third_party"
declare -A pkgs=()
for f in "${from_host[@]}"; do
    pkg=$(owner "$f")
    pkgs[$pkg]=1
    echo "$f $(dpkg-query -W -f '${binary:Package} ${Version} ${source:Package} ${source:Version}' "$pkg")" >>"$STAGE/files"
done
sort "$STAGE/files" >>"$third_party"
for pkg in "${!pkgs[@]}"; do
    copyright=/usr/share/doc/$pkg/copyright
    [[ -f $copyright ]] || fail "$pkg has no $copyright"
    install -D -m 0644 "$(readlink -f "$copyright")" "$ROOT$copyright"
    for lic in $(grep -o '/usr/share/common-licenses/[A-Za-z0-9.+-]*[A-Za-z0-9+]' "$copyright" | sort -u); do
        [[ -e $lic && ! -e $ROOT$lic ]] || continue
        install -D -m 0644 "$(readlink -f "$lic")" "$ROOT$lic"
    done
done
chmod 0644 "$third_party"

buildah bud --quiet --timestamp "$EPOCH" --identity-label=false --omit-history --layers=false \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    --build-arg SOURCE="$SOURCE" --build-arg LICENSES="$LICENSES" \
    -f "$IMAGE_DIR/Containerfile" -t "$NAME" "$STAGE" >&2
echo "image ID $(buildah images --noheading --no-trunc --format '{{.ID}}' "$NAME"), $(buildah images --noheading --format '{{.Size}}' "$NAME")" >&2
echo "$NAME"
