#!/usr/bin/env bash
# make docker-test: build the image and hold a conversation with it.
#
# Uses the Docker engine that runs; where none does, starts dockerd (Debian's
# docker.io, installed if missing; as root) without iptables or a bridge, and
# stops it at the end. The image's base is built locally from Debian packages
# with debootstrap (no registry of images needed) unless DOCKER_BASE names an
# image that exists or can be pulled. The container runs with the host's
# network and `--loopback-only`; tests/docker/ talks to it over 127.0.0.1.
#
# Settings (environment or make variables):
#   DOCKER_IMAGE    tag to build                    (videochat:test)
#   DOCKER_BASE     base image                      (videochat-base:bookworm, made here)
#   DOCKER_CA       CA bundle to trust in the image (/etc/ssl/certs/ca-certificates.crt
#                   where it exists; empty: none); for TLS-inspecting proxies
#   DOCKER_VOLUME   weights volume, kept            (videochat-test-weights)
#   DOCKER_WORK     scratch folder, logs            (/var/tmp/videochat-docker)
#   DOCKERD_STORAGE_DRIVER  for a dockerd started here (dockerd's choice; vfs always works)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${DOCKER_IMAGE:-videochat:test}
LOCAL_BASE=videochat-base:bookworm
BASE=${DOCKER_BASE:-$LOCAL_BASE}
CA=${DOCKER_CA-/etc/ssl/certs/ca-certificates.crt}
VOLUME=${DOCKER_VOLUME:-videochat-test-weights}
WORK=${DOCKER_WORK:-/var/tmp/videochat-docker}
PYTHON=${PYTHON_BIN:-.venv/bin/python}
CA_COPY=docker/ca/make-docker-test.crt

mkdir -p "$WORK"
say() { echo "docker-test: $*"; }

apt_install() {
    [[ $EUID -eq 0 ]] || { echo "error: installing $* needs root" >&2; exit 1; }
    say "installing $* (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

DOCKERD_PID=""
cleanup() {
    rm -f "$CA_COPY"
    if [[ -n $DOCKERD_PID ]]; then
        say "stopping the dockerd started here"
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# 1. A Docker engine.
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || apt_install docker.io
    [[ $EUID -eq 0 ]] || { echo "error: no Docker engine runs; starting one needs root" >&2; exit 1; }
    args=(--iptables=false --ip6tables=false --bridge=none)
    [[ -n ${DOCKERD_STORAGE_DRIVER:-} ]] && args+=(--storage-driver="$DOCKERD_STORAGE_DRIVER")
    say "starting dockerd ${args[*]} (log: $WORK/dockerd.log)"
    dockerd "${args[@]}" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "error: dockerd did not come up" >&2; exit 1; }
fi
say "engine: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}')"

# 2. The base image.
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [[ $BASE == "$LOCAL_BASE" ]]; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        rootfs="$WORK/rootfs-bookworm"
        say "making $BASE with debootstrap (minbase bookworm)"
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
            >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
        # The package lists and downloaded .debs are not needed in an image.
        tar -C "$rootfs" --exclude='./var/lib/apt/lists/*' --exclude='./var/cache/apt/*' -c . \
            | docker import - "$BASE" >/dev/null
        rm -rf "$rootfs"
    else
        docker pull "$BASE"
    fi
fi

# 3. The image.
if [[ -n $CA ]]; then
    [[ -f $CA ]] || { echo "error: DOCKER_CA=$CA: no such file" >&2; exit 1; }
    cp "$CA" "$CA_COPY"
fi
say "building $IMAGE on $BASE (log: $WORK/build.log)"
previous=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
started=$SECONDS
# The classic builder (Debian's docker.io has no buildx); --network host gives
# the build steps this machine's network (no bridge here).
if ! DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE="$BASE" \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log" >&2
    exit 1
fi
build_s=$((SECONDS - started))
rm -f "$CA_COPY"
# The image this build replaced (untagged now); kept if something still uses it.
if [[ -n $previous && $previous != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_s} s; image size $((size / 1000000)) MB"

# 4. A conversation with it.
started=$SECONDS
VIDEOCHAT_DOCKER_IMAGE=$IMAGE VIDEOCHAT_DOCKER_VOLUME=$VOLUME \
    VIDEOCHAT_DOCKER_LOG="$WORK/container.log" \
    "$PYTHON" -m pytest -m docker -p no:cacheprovider -q -s tests/docker
say "build ${build_s} s, test $((SECONDS - started)) s, image $((size / 1000000)) MB" \
    "(container log: $WORK/container.log)"
