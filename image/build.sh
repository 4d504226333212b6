#!/usr/bin/env bash
# Builds the agent image gpudock/agent:<package version> into the Docker engine that
# DOCKER_HOST names (the host's when unset), with no registry: a Debian bookworm
# minbase root filesystem from the configured Debian mirror (debootstrap), python3 and
# the storage tools, and a virtual environment with the gpudock wheel and its
# dependencies. Imported with `docker import`.
#
# Cached under $GPUDOCK_CACHE/agent-image, keyed by the hash of what goes in:
#   base-<hash>.tar    the stripped Debian root (suite, mirror, package list, this file's
#                      base recipe version)
#   agent-<hash>.tar   base + wheels (pyproject.toml, the operator/ sources, this file)
# An engine that already has the tag with the same input hash label is left alone; one
# that lacks it gets the cached tar imported (seconds).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${GPUDOCK_CACHE:-/var/cache/gpudock}/agent-image"
PYTHON="${GPUDOCK_VENV:-$REPO/.venv}/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3
SUITE=bookworm
# The storage tools are what the volume backends run (docs/sized-volumes.md): mount and
# losetup (util-linux, mount), mkfs.ext4/resize2fs/e2undo (e2fsprogs), btrfs, xfs_quota;
# setpriv ties each tool's life to the agent's; openssl makes the log streams' certificate.
PACKAGES=python3,python3-venv,e2fsprogs,btrfs-progs,xfsprogs,util-linux,mount,rsync,ca-certificates,openssl
BASE_RECIPE=2   # bump when the base steps below change
log() { printf '[image] %s\n' "$*" >&2; }

VERSION="$("$PYTHON" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$REPO/pyproject.toml")"
TAG="gpudock/agent:$VERSION"
MIRROR="${GPUDOCK_DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

base_key="$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" "$BASE_RECIPE" | sha256sum | cut -c1-16)"
app_key="$( { echo "$base_key"; cat "$0" "$REPO/pyproject.toml" "$REPO/README.md";
              cd "$REPO" && find operator -name '*.py' -o -name py.typed | LC_ALL=C sort | xargs cat; } \
            | sha256sum | cut -c1-16)"
base_tar="$CACHE/base-$base_key.tar"
app_tar="$CACHE/agent-$app_key.tar"
mkdir -p "$CACHE"

have="$(docker image inspect "$TAG" --format '{{index .Config.Labels "dev.gpudock.input-hash"}}' 2>/dev/null || true)"
if [ "$have" = "$app_key" ]; then
  log "$TAG (inputs $app_key) is already in the engine"
  exit 0
fi

work="$(mktemp -d /var/tmp/gpudock-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT

if [ ! -f "$base_tar" ]; then
  start=$(date +%s)
  log "Debian $SUITE minbase from $MIRROR (about 2 minutes)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/base" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # No apt lists, caches, docs, man pages or locales in the image.
  (cd "$work/base" && rm -rf var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old \
     var/log/* usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* \
     usr/share/lintian usr/share/linda)
  tar -C "$work/base" --numeric-owner -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  rm -rf "$work/base"
  find "$CACHE" -name 'base-*.tar' ! -name "base-$base_key.tar" -delete
  log "base root built in $(( $(date +%s) - start ))s: $(du -m "$base_tar" | cut -f1) MB"
fi

if [ ! -f "$app_tar" ]; then
  start=$(date +%s)
  log "wheels of gpudock $VERSION and its dependencies"
  mkdir -p "$work/src" "$work/root"
  # From a copy: building a wheel writes into the source tree.
  cp -a "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/operator" "$work/src/"
  find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir "$work/root/tmp/wheels" \
    "$work/src" >"$work/pip.log" 2>&1 || { tail -n 30 "$work/pip.log" >&2; exit 1; }
  tar -C "$work/root" -xf "$base_tar"
  log "installing them into /opt/gpudock in the image root"
  chroot "$work/root" /usr/bin/python3 -m venv /opt/gpudock
  chroot "$work/root" /opt/gpudock/bin/pip install -q --disable-pip-version-check \
    --no-index --find-links /tmp/wheels gpudock >"$work/pip.log" 2>&1 \
    || { tail -n 30 "$work/pip.log" >&2; exit 1; }
  chroot "$work/root" /opt/gpudock/bin/pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
  rm -rf "$work/root/tmp/wheels" "$work/root/root/.cache"
  tar -C "$work/root" --numeric-owner -cf "$app_tar.tmp" .
  mv "$app_tar.tmp" "$app_tar"
  find "$CACHE" -name 'agent-*.tar' ! -name "agent-$app_key.tar" -delete
  log "agent root built in $(( $(date +%s) - start ))s: $(du -m "$app_tar" | cut -f1) MB"
fi

log "importing $TAG into ${DOCKER_HOST:-the default Docker engine}"
docker import \
  --change 'ENTRYPOINT ["/opt/gpudock/bin/gpudock"]' \
  --change 'CMD ["agent"]' \
  --change 'ENV PATH=/opt/gpudock/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PYTHONUNBUFFERED=1' \
  --change "LABEL dev.gpudock.input-hash=$app_key" \
  --change "LABEL org.opencontainers.image.version=$VERSION" \
  --change 'LABEL org.opencontainers.image.title=gpudock-agent' \
  "$app_tar" "$TAG" >/dev/null
log "$TAG: $(docker image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%d MB", $1/1e6}')"
