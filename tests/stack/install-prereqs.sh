#!/usr/bin/env bash
# Installs everything the local stack and the tests need, idempotently:
#   - Debian packages (dockerd, etcd, Go toolchain, busybox, e2fsprogs, btrfs-progs, gcc, ...)
#   - kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler and the
#     pause binary built from Debian's `kubernetes` source package, cached outside the
#     repo under $GPUDOCK_CACHE, keyed by the source version.
#   - the gpudock package with its test extra, editable, in a virtual environment
#     ($GPUDOCK_VENV, default .venv in the repo).
# Safe to run again: each step checks before it works.
set -euo pipefail

CACHE="${GPUDOCK_CACHE:-/var/cache/gpudock}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
APT_PACKAGES=(docker.io etcd-server golang-go rsync jq golang-github-modern-go-reflect2-dev
              busybox-static e2fsprogs btrfs-progs xfsprogs gcc make dpkg-dev debootstrap iptables
              docker-registry apache2-utils
              lua5.1)  # lua5.1: Argo CD's health checks (gitops/argocd/health.lua) run as Argo does
log() { printf '[install-prereqs] %s\n' "$*" >&2; }

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
}

if [ "${GPUDOCK_ONLY_VENV:-0}" = 1 ]; then
  APT_PACKAGES=()  # the unit tests need the venv alone
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt_update_once
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${GPUDOCK_ONLY_VENV:-0}" != 1 ]; then
# --- Kubernetes binaries from Debian's kubernetes source ----------------------------
# kube-apiserver and kubectl for every test; kubelet, kube-controller-manager and
# kube-scheduler for the real node (tests/stack/node.py). Only missing ones are built.
# deb-src twin of the deb entries, so `apt-get source` can find the package.
SRC_LIST=/etc/apt/sources.list.d/gpudock-deb-src.sources
if [ ! -f "$SRC_LIST" ]; then
  sed -e 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$SRC_LIST"
  apt_updated=0
fi
version_file="$CACHE/kubernetes-source-version"
if [ ! -f "$version_file" ]; then
  apt_update_once
  mkdir -p "$CACHE"
  apt-cache showsrc kubernetes | awk '/^Version:/ {print $2; exit}' >"$version_file.tmp"
  mv "$version_file.tmp" "$version_file"
fi
K8S_VERSION="$(cat "$version_file")"
BIN_DIR="$CACHE/kubernetes-$K8S_VERSION/bin"
K8S_COMMANDS=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler)
want=()
for c in "${K8S_COMMANDS[@]}"; do [ -x "$BIN_DIR/$c" ] || want+=("$c"); done
if [ "${#want[@]}" = 0 ] && [ -x "$BIN_DIR/pause" ]; then
  log "kubernetes $K8S_VERSION (${K8S_COMMANDS[*]}): cached in $BIN_DIR"
else
  start=$(date +%s)
  BUILD="$CACHE/build-$K8S_VERSION"
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  log "building ${want[*]} $K8S_VERSION in $BUILD (cold: up to 25 minutes on 2 cores)"
  apt_update_once
  (cd "$BUILD" && apt-get source --download-only -qq "kubernetes=$K8S_VERSION" >/dev/null)
  orig=$(ls "$BUILD"/kubernetes_*.orig.tar.* | head -n1)
  mkdir -p "$BUILD/src"
  tar -xf "$orig" -C "$BUILD/src" --strip-components=1
  cd "$BUILD/src"
  # Go 1.19 + the vendored reflect2 crash on the first custom resource; use Debian's.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  # These VMs lack CAP_SYS_RESOURCE: runc cannot set the negative OOM score (-998) that
  # dockershim asks for pod sandboxes. 0 keeps them ordinary (Guaranteed pods get 0 in 1.20).
  sandbox=pkg/kubelet/dockershim/docker_sandbox.go
  sed -i -e 's/^\(\s*defaultSandboxOOMAdj\s*int\s*=\s*\)-998/\10/' "$sandbox"
  grep -Eq 'defaultSandboxOOMAdj\s+int\s*=\s*0$' "$sandbox" \
    || { log "could not patch $sandbox"; exit 1; }
  mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
  targets=""; for c in ${want[@]+"${want[@]}"}; do targets="$targets cmd/$c"; done
  if [ -n "$targets" ]; then
    env GOPATH="$PWD/.go" CGO_ENABLED=0 \
        make WHAT="${targets# }" >"$BUILD/build.log" 2>&1 \
        || { tail -n 50 "$BUILD/build.log" >&2; exit 1; }
  fi
  # the pause container of pod sandboxes, from the same tree (tests/stack/node.py)
  mkdir -p "$BIN_DIR"
  gcc -Os -static -o "$BIN_DIR/pause.tmp" build/pause/linux/pause.c && mv "$BIN_DIR/pause.tmp" "$BIN_DIR/pause"
  for c in ${want[@]+"${want[@]}"}; do cp _output/bin/"$c" "$BIN_DIR/$c.tmp" && mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"; done
  cd /; rm -rf "$BUILD"
  log "built in $(( $(date +%s) - start ))s"
fi
ln -sfn "$BIN_DIR" "$CACHE/kubernetes-bin"
fi

# --- the project, in its own virtual environment -----------------------------------
VENV="${GPUDOCK_VENV:-$REPO/.venv}"
if [ "${GPUDOCK_SKIP_PIP:-0}" != 1 ]; then
  stamp="$VENV/.gpudock-installed"
  want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "pip: gpudock[test] already installed in $VENV"
  else
    log "pip: installing gpudock[test] (editable) into $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"
    echo "$want" >"$stamp"
  fi
fi
log "ready"
