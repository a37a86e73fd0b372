#!/usr/bin/env bash
# The main job end to end, offline: a local reference registry holding a small image (busybox
# with an Eskapade-like layout), then `eskrun pull` and `eskrun up` on it, as the user who runs
# this script. Needs root only to install packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
. scripts/image.sh
install_packages $RUN_PACKAGES docker-registry busybox-static curl
ensure_rust
cargo build --release --locked -q
eskrun=$PWD/target/release/eskrun

work=$(mktemp -d)
cleanup() { kill "$REGISTRY_PID" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
start_registry "$work/registry"
busybox_rootfs "$work/rootfs"
tar -C "$work/rootfs" -cf "$work/base.tar" .
mkdir -p "$work/app/opt/eskapade-env" && echo "eskapade demo 0.7" >"$work/app/opt/eskapade-env/VERSION"
tar -C "$work/app" -cf "$work/app.tar" .
image="$REGISTRY_ADDR/kave/eskapade-demo:0.7"
push_image "http://$REGISTRY_ADDR" kave/eskapade-demo 0.7 \
  '{"Env":["PATH=/usr/local/bin:/usr/bin:/bin","ESKAPADE=/opt/eskapade"],"Cmd":["sh"],"WorkingDir":"/opt/eskapade","ExposedPorts":{"8888/tcp":{}}}' \
  "$work/base.tar" "$work/app.tar"

export ESKRUN_CACHE=$work/cache ESKRUN_STATE=$work/state
echo "+ eskrun pull $image"
"$eskrun" pull "$image"
echo "+ eskrun images"
"$eskrun" images
echo "+ eskrun up --image $image --mount . -- sh -c '...'"
"$eskrun" up --image "$image" --mount . -- sh -c \
  'echo "in the container as $(id -un), in $PWD:"; ls README.md Cargo.toml; cat /opt/eskapade-env/VERSION; touch .eskrun-demo-was-here'
ls -l .eskrun-demo-was-here && rm -f .eskrun-demo-was-here
"$eskrun" down --mount . >/dev/null 2>&1 || true
echo "demo finished: pulled, ran with the source tree mounted, and the file it wrote is yours"
