#!/usr/bin/env bash
# Warm-start benchmark: `eskrun run --rm IMAGE true` as an unprivileged user (one id mapped,
# and with a subordinate id range) and as root, for a ~2 MiB and a large image, beside
# `runc run` (root, on the same busybox tree as a bundle) where installed, and beside
# examples/libcontainer_floor: the same namespaces and spec handed to libcontainer on a plain
# directory, with nothing of eskrun's own around it (the floor eskrun stands on). podman is left out:
# on this kind of host it cannot start a container with its defaults (root lacks
# CAP_SYS_RESOURCE, so its rlimits fail; crun refuses cgroup-v1 hybrid); the figures measured
# for it on such a machine are in ../shared/HOST-NOTES.md and the README.
# Target (issue 3): at most 10 ms median rootless, flat in image size.
# Usage (as root): bench/run.sh [BIG_MIB]   (BIG_MIB: size of the large image, default 1024;
# RUNS: hyperfine runs, default 100; ROUNDS: interleaved rounds, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
. scripts/image.sh
big_mib=${1:-1024}
install_packages docker-registry busybox-static uidmap hyperfine curl
cargo build --release --locked -q
cargo build --release --locked -q --example libcontainer_floor

work=$(mktemp -d /var/tmp/eskrun-runbench.XXXXXX)
chmod 755 "$work"
cleanup() {
  kill "$REGISTRY_PID" 2>/dev/null || true
  { grep -F "$work" /proc/mounts || true; } | cut -d' ' -f2 | sort -r | xargs -r umount -l
  rm -rf "$work"
}
trap cleanup EXIT
install -m 755 target/release/eskrun "$work/eskrun"
install -m 755 target/release/examples/libcontainer_floor "$work/floor"
start_registry "$work/registry"

busybox_rootfs "$work/rootfs"
tar -C "$work/rootfs" -cf "$work/small.tar" .
push_image "http://$REGISTRY_ADDR" bench/small 1 '{"Cmd":["sh"]}' "$work/small.tar"
# The large image: the small one plus incompressible data, in 4 layers.
big_layers=("$work/small.tar")
for i in 1 2 3 4; do
  mkdir -p "$work/data$i/data"
  head -c "$((big_mib / 4))M" /dev/urandom >"$work/data$i/data/blob$i"
  tar -C "$work/data$i" -cf "$work/data$i.tar" . && rm -rf "$work/data$i"
  big_layers+=("$work/data$i.tar")
done
push_image "http://$REGISTRY_ADDR" bench/big 1 '{"Cmd":["sh"]}' "${big_layers[@]}"
rm -f "$work"/*.tar
# The floor's root: the busybox tree with the mount points libcontainer needs.
cp -a "$work/rootfs" "$work/floor-rootfs"
mkdir -p "$work/floor-rootfs/proc" "$work/floor-rootfs/dev" "$work/floor-rootfs/sys"

for user in eskrun-bench eskrun-bench-sub; do
  id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
done
grep -q '^eskrun-bench-sub:' /etc/subuid || usermod --add-subuids 400000-465535 --add-subgids 400000-465535 eskrun-bench-sub
# useradd gives new users a subordinate range where login.defs says so (Debian 12 does): the
# one-id user must have none.
sed -i '/^eskrun-bench:/d' /etc/subuid /etc/subgid

# The command line that runs eskrun as USER with its own directories under $work (no shell,
# so hyperfine times eskrun, setpriv and env only).
as_user() {
  local user=$1
  shift
  echo "setpriv --reuid=$user --regid=$user --init-groups env -i PATH=/usr/bin:/bin HOME=$work/home-$user" \
    "ESKRUN_CACHE=$work/home-$user/cache ESKRUN_STATE=$work/home-$user/state XDG_RUNTIME_DIR=$work/home-$user/run $*"
}
for user in eskrun-bench eskrun-bench-sub; do
  install -d -o "$user" -g "$user" -m 700 "$work/home-$user" "$work/home-$user/run"
  for image in small big; do $(as_user "$user" "$work/eskrun" pull -q "$REGISTRY_ADDR/bench/$image:1"); done
done

cmds=(-n "setpriv+env alone" "$(as_user eskrun-bench true)")
cmds+=(-n "libcontainer floor, one id" "$(as_user eskrun-bench "$work/floor" "$work/floor-rootfs" "$work/home-eskrun-bench/floor" true)")
cmds+=(-n "libcontainer floor, subuid range" "$(as_user eskrun-bench-sub "$work/floor" "$work/floor-rootfs" "$work/home-eskrun-bench-sub/floor" true)")
for image in small big; do
  cmds+=(-n "eskrun rootless, one id, $image" "$(as_user eskrun-bench "$work/eskrun" run --rm "$REGISTRY_ADDR/bench/$image:1" true)")
  cmds+=(-n "eskrun rootless, subuid range, $image" "$(as_user eskrun-bench-sub "$work/eskrun" run --rm "$REGISTRY_ADDR/bench/$image:1" true)")
  cmds+=(-n "eskrun as root, $image" "env ESKRUN_CACHE=$work/root/cache ESKRUN_STATE=$work/root/state $work/eskrun run --rm $REGISTRY_ADDR/bench/$image:1 true")
done
for image in small big; do
  ESKRUN_CACHE=$work/root/cache "$work/eskrun" pull -q "$REGISTRY_ADDR/bench/$image:1"
done
if command -v runc >/dev/null; then
  mkdir -p "$work/bundle/rootfs"
  cp -a "$work/rootfs/." "$work/bundle/rootfs/"
  (cd "$work/bundle" && runc spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"true"/' config.json)
  cmds+=(-n "runc run (root), small" "runc run --bundle $work/bundle bench-$$")
fi
hyperfine -N --warmup 5 --runs "${RUNS:-100}" --export-json "$work/run.json" "${cmds[@]}"
# Medians: this kind of machine has outliers of several milliseconds.
python3 - "$work/run.json" <<'PY'
import json, sys
print("| command | median | mean |\n|---|---|---|")
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"| {r['command']} | {r['median'] * 1000:.1f} ms | {r['mean'] * 1000:.1f} ms |")
PY

# Interleaved: each command in turn, ROUNDS times, so that the machine's drift (several ms
# within minutes on this kind of VM) and the disk's recent history (ext4 without a journal
# searches past recently freed inodes) weigh on all of them alike. Medians, minus the
# loop's own start of `true` through setpriv and env.
python3 - "${ROUNDS:-60}" \
  "floor, one id=$(as_user eskrun-bench "$work/floor" "$work/floor-rootfs" "$work/home-eskrun-bench/floor" true)" \
  "eskrun, one id=$(as_user eskrun-bench "$work/eskrun" run --rm "$REGISTRY_ADDR/bench/small:1" true)" \
  "floor, subuid range=$(as_user eskrun-bench-sub "$work/floor" "$work/floor-rootfs" "$work/home-eskrun-bench-sub/floor" true)" \
  "eskrun, subuid range=$(as_user eskrun-bench-sub "$work/eskrun" run --rm "$REGISTRY_ADDR/bench/small:1" true)" \
  "true=$(as_user eskrun-bench true)" <<'PY'
import statistics, subprocess, sys, time
rounds = int(sys.argv[1])
cmds = dict(a.split("=", 1) for a in sys.argv[2:])
times = {name: [] for name in cmds}
for r in range(rounds + 3):
    for name, cmd in cmds.items():
        start = time.perf_counter()
        subprocess.run(cmd.split(), check=True, stderr=subprocess.DEVNULL)
        if r >= 3:
            times[name].append(time.perf_counter() - start)
base = statistics.median(times.pop("true"))
print(f"\n| interleaved, {rounds} rounds, minus setpriv+env ({base * 1000:.1f} ms) | median | over the floor (paired) |\n|---|---|---|")
for name, t in times.items():
    # Each round's eskrun against the same round's floor: what eskrun adds, drift cancelled.
    over = ""
    if name.startswith("eskrun"):
        floor = times[name.replace("eskrun", "floor")]
        over = f"{statistics.median(a - b for a, b in zip(t, floor)) * 1000:+.1f} ms"
    print(f"| {name} | {(statistics.median(t) - base) * 1000:.1f} ms | {over} |")
PY
