#!/usr/bin/env bash
# Cold-pull benchmark: builds a ~1 GiB multi-layer image from this machine's /usr, pushes it
# to a local reference registry, then times in the same run, each into an empty directory:
#   - eskrun pull (wall time and peak RSS), and eskrun pull of the same files as one layer
#     (its memory must not grow with a layer's size),
#   - podman pull (as root, its own throw-away storage),
#   - skopeo copy + umoci unpack,
#   - the floor: plain `gzip -dc | tar -x` of the same layers, one after another.
# The contenders take turns within each round, so a change of load on the machine hits all of
# them alike; the figures printed are medians over the rounds.
# Targets (issue 2): eskrun <= 1/4 of podman's time, <= 1.5x the floor, peak RSS <= 64 MiB.
#
# Usage: bench/pull.sh [--runs N]      (as root: podman and umoci are compared as root)
# The image and registry live under one directory in /var/tmp, and each round's unpacked trees
# in a loop-mounted filesystem image there (about 7 GiB at peak); all removed on exit, and the
# registry stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
. scripts/image.sh

usage() { sed -n 's/^# Usage: //p' "$0"; }
runs=3
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --runs=*) runs=${1#--runs=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
case $runs in '' | *[!0-9]* | 0) echo "--runs wants a positive number, not '$runs'" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run bench/pull.sh as root (podman and umoci are compared as root)" >&2; exit 1; }

install_packages docker-registry curl time gzip tar e2fsprogs mount util-linux
echo "building eskrun (release)..."
cargo build --release --locked -q
eskrun=$PWD/target/release/eskrun

work=$(mktemp -d /var/tmp/eskrun-bench.XXXXXX)
REGISTRY_PID=
# Unmounts everything below DIR, deepest first: the rounds' filesystems and whatever podman's
# overlay driver left mounted in its storage.
unmount_under() {
  local target
  findmnt -rn -o TARGET | { grep -F "$1/" || true; } | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
  done
}
cleanup() {
  if [ -n "$REGISTRY_PID" ]; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
  fi
  unmount_under "$work"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The image: four layers of very different sizes (650, 340, 130, 50 MiB), as real images have.
start_registry "$work/registry"
dirs=(usr/share usr/bin usr/include usr/libexec)
gzipped=()
for dir in "${dirs[@]}"; do
  layer="$work/layers/${dir//\//_}.tar.gz"
  mkdir -p "$work/layers"
  tar -C / -cf - "$dir" | gzip -1 >"$layer"
  gzipped+=("$layer")
done
image_size=$(for gz in "${gzipped[@]}"; do gzip -dc "$gz" | wc -c; done | awk '{s+=$1} END {printf "%.2f GiB", s/2^30}')
compressed_size=$(du -cb "${gzipped[@]}" | awk 'END {printf "%.0f MiB", $1/2^20}')
echo "pushing ${#gzipped[@]} layers, $compressed_size compressed, $image_size unpacked..."
push_gz_image "http://$REGISTRY_ADDR" bench/big 1 '{"Cmd":["sh"]}' "${gzipped[@]}"
image=$REGISTRY_ADDR/bench/big:1
# The same files as one layer, to see that eskrun's memory does not grow with a layer's size.
tar -C / -cf - "${dirs[@]}" | gzip -1 >"$work/layers/one.tar.gz"
push_gz_image "http://$REGISTRY_ADDR" bench/one 1 '{"Cmd":["sh"]}' "$work/layers/one.tar.gz"
rm "$work/layers/one.tar.gz"
one_layer_image=$REGISTRY_ADDR/bench/one:1

# One timed command per contender; each gets an empty output directory "$out/NAME".
out=$work/out
run_floor() {
  local gz
  for gz in "${gzipped[@]}"; do gzip -dc "$gz" | tar -x -C "$out/floor"; done
}
run_eskrun() { ESKRUN_CACHE="$out/eskrun" "$eskrun" pull -q "$image"; }
run_eskrun_one_layer() { ESKRUN_CACHE="$out/eskrun_one_layer" "$eskrun" pull -q "$one_layer_image"; }
run_podman() {
  podman --root "$out/podman/root" --runroot "$out/podman/run" --tmpdir "$out/podman/tmp" \
    --events-backend none pull -q --tls-verify=false "docker://$image"
}
run_skopeo_umoci() {
  skopeo copy -q --src-tls-verify=false "docker://$image" "oci:$out/skopeo_umoci/oci:1" &&
    umoci unpack --image "$out/skopeo_umoci/oci:1" "$out/skopeo_umoci/bundle"
}
export -f run_floor run_eskrun run_eskrun_one_layer run_podman run_skopeo_umoci
export out eskrun image one_layer_image
contenders=(floor eskrun eskrun_one_layer)
command -v podman >/dev/null && contenders+=(podman) || echo "podman not installed: skipped"
if command -v skopeo >/dev/null && command -v umoci >/dev/null; then
  contenders+=(skopeo_umoci)
else
  echo "skopeo or umoci not installed: skipped"
fi

load() { cut -d' ' -f1 /proc/loadavg; }
# time_one NAME: one cold run into an empty "$out/NAME"; appends "seconds peak_rss_kib load"
# to $work/NAME.times.
time_one() {
  local name=$1 seconds kib
  mkdir -p "$out/$name"
  if [ "$name" = podman ]; then mkdir -p "$out/podman/tmp"; fi
  # Earlier runs' dirty pages must not be written back during this one.
  sync
  # bash -c with the exported functions: the gzipped layer list is passed as arguments.
  if ! /usr/bin/time -f '%e %M' -o "$work/time" \
    bash -c 'gzipped=("$@"); run_'"$name" bash "${gzipped[@]}" >"$work/$name.log" 2>&1; then
    echo "$name failed:" >&2
    cat "$work/$name.log" >&2
    exit 1
  fi
  read -r seconds kib <"$work/time"
  echo "$seconds $kib $(load)" >>"$work/$name.times"
  printf '  %-17s %7.2f s  %5d MiB  (load %s)\n' "$name" "$seconds" $((kib / 1024)) "$(load)"
}

# Every round writes to a new ext4 filesystem (default options, journal included) in a file on
# this machine's disk. Reusing a directory would make the figures depend on what was removed
# before: ext4 without a journal (this machine's root) checks each inode it is about to reuse
# for a deletion in the last minute (six while its inode table block is dirty), and after
# removing a 1 GiB tree creating files costs several times the system time for minutes.
# Without loop devices (some containers), the rounds share a directory on /var/tmp's filesystem.
fresh_output_fs() {
  unmount_under "$work"
  rm -rf "$out" "$work/out.img"
  mkdir -p "$out"
  truncate -s 12G "$work/out.img"
  # Inode tables and journal written now, not by a kernel thread during the timed runs.
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/out.img"
  if ! mount -o loop "$work/out.img" "$out" 2>"$work/mount.err"; then
    rm "$work/out.img"
    echo "  no loop mount ($(cat "$work/mount.err")): this round writes to $(findmnt -n -o FSTYPE --target "$out") under $out" >&2
  fi
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
for round in $(seq "$runs"); do
  echo "round $round/$runs"
  fresh_output_fs
  for name in "${contenders[@]}"; do time_one "$name"; done
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field_median() { cut -d' ' -f"$2" "$work/$1.times" | median; }
echo
echo "image: ${#gzipped[@]} layers, $compressed_size compressed, $image_size unpacked; medians of $runs runs"
echo "machine: $(nproc) cores, $(uname -r), load after: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%F %H:%M UTC')"
for name in "${contenders[@]}"; do
  printf '%-17s %7.2f s   peak RSS %5d MiB\n' "$name" "$(field_median "$name" 1)" \
    $(($(field_median "$name" 2) / 1024))
done
eskrun_s=$(field_median eskrun 1)
awk -v e="$eskrun_s" -v f="$(field_median floor 1)" -v rss="$(field_median eskrun 2)" \
  'BEGIN {printf "eskrun / floor: %.2fx (target <= 1.5x); eskrun peak RSS %d MiB (target <= 64)\n", e/f, rss/1024}'
if [ -f "$work/podman.times" ]; then
  awk -v e="$eskrun_s" -v p="$(field_median podman 1)" \
    'BEGIN {printf "eskrun / podman: %.2f (target <= 0.25)\n", e/p}'
fi
