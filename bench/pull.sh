#!/usr/bin/env bash
# Cold-pull benchmark: builds a ~1 GiB multi-layer image from this machine's /usr, pushes it
# to a local reference registry, then times in the same run, each with an empty cache:
#   eskrun pull (wall time and peak RSS), podman pull, skopeo copy + umoci unpack (when
#   installed), and the floor: plain `gzip -dc | tar -x` of the same layers, one after another.
# Targets (issue 2): eskrun <= 1/4 of podman's time, <= 1.5x the floor, peak RSS <= 64 MiB.
# Usage: bench/pull.sh [RUNS]   (run as root so podman and umoci can be compared)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
. scripts/image.sh
runs=${1:-3}
install_packages docker-registry curl time
cargo build --release --locked -q
eskrun=$PWD/target/release/eskrun

work=$(mktemp -d /var/tmp/eskrun-bench.XXXXXX)
trap 'kill $REGISTRY_PID 2>/dev/null; rm -rf "$work"' EXIT
start_registry "$work/registry"
layers=()
for dir in usr/share usr/bin usr/include usr/libexec; do
  tar -C / -cf "$work/$(echo "$dir" | tr / _).tar" "$dir"
  layers+=("$work/$(echo "$dir" | tr / _).tar")
done
echo "pushing $(du -ch "${layers[@]}" | tail -1 | cut -f1) in ${#layers[@]} layers..."
push_image "http://$REGISTRY_ADDR" bench/big 1 '{"Cmd":["sh"]}' "${layers[@]}"
image=$REGISTRY_ADDR/bench/big:1
gzipped=()
for layer in "${layers[@]}"; do gzip -c -1 "$layer" >"$layer.gz"; gzipped+=("$layer.gz"); rm "$layer"; done
echo "compressed: $(du -ch "${gzipped[@]}" | tail -1 | cut -f1)"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

timeit() { # NAME SETUP CMD... : median wall seconds over $runs, SETUP run before each
  local name=$1 setup=$2 t
  shift 2
  for _ in $(seq "$runs"); do
    eval "$setup"; drop
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; return 1; }
    cat "$work/time"
  done >"$work/$name.times"
  t=$(cut -d' ' -f1 "$work/$name.times" | median)
  printf '%-22s %8.2f s   peak RSS %6d MiB\n' "$name" "$t" "$(($(cut -d' ' -f2 "$work/$name.times" | median) / 1024))"
}

printf 'for gz in %s; do gzip -dc "$gz" | tar -x -C %s/floor; done\n' "${gzipped[*]}" "$work" >"$work/floor.sh"
timeit "floor (gzip|tar)" 'rm -rf $work/floor; mkdir -p $work/floor' bash "$work/floor.sh"
timeit "eskrun pull" 'rm -rf $work/cache' env ESKRUN_CACHE="$work/cache" "$eskrun" pull -q "$image"
if command -v podman >/dev/null; then
  timeit "podman pull" 'rm -rf $work/podman; mkdir -p $work/podman' \
    podman --root "$work/podman/root" --runroot "$work/podman/run" pull -q --tls-verify=false "docker://$image"
fi
if command -v skopeo >/dev/null && command -v umoci >/dev/null; then
  timeit "skopeo+umoci" 'rm -rf $work/oci $work/bundle' sh -c \
    "skopeo copy -q --src-tls-verify=false docker://$image oci:$work/oci:1 && umoci unpack --image $work/oci:1 $work/bundle"
fi
