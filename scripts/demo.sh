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

# eskrun is for people without root: when this script runs as root, the eskrun part runs as
# the unprivileged user eskrun-demo, on a copy of this source tree that it owns.
project=$PWD
as_user=()
if [ "$(id -u)" -eq 0 ]; then
  id eskrun-demo >/dev/null 2>&1 || useradd --create-home --shell /bin/sh eskrun-demo
  chmod 755 "$work"
  project=$work/project
  git ls-files -z | tar --null -T - -cf - | (mkdir -p "$project" && tar -C "$project" -xf -)
  install -m 755 "$eskrun" "$work/eskrun" && eskrun=$work/eskrun
  install -d -o eskrun-demo -g eskrun-demo "$work/user"
  chown -R eskrun-demo:eskrun-demo "$project"
  as_user=(setpriv --reuid=eskrun-demo --regid=eskrun-demo --init-groups env HOME="$work/user")
fi
export ESKRUN_CACHE=$work/user/cache ESKRUN_STATE=$work/user/state
run() { echo "+ eskrun $*" | cut -c1-110; (cd "$project" && "${as_user[@]}" "$eskrun" "$@"); }
run pull "$image"
run images
run up --image "$image" --mount . -- sh -c \
  'echo "in the container as $(id -un), in $PWD:"; ls README.md Cargo.toml; cat /opt/eskapade-env/VERSION; touch .eskrun-demo-was-here'
echo "on the host, as $(cd "$project" && "${as_user[@]}" id -un):"
ls -l "$project/.eskrun-demo-was-here" && rm -f "$project/.eskrun-demo-was-here"
run down
echo "demo finished: pulled, ran rootless with the source tree mounted, and the file written inside is the user's"
