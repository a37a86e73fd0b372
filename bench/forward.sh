#!/bin/sh
# Forwarded-TCP benchmark: throughput and connection latency through eskrun's port forwarder
# into a network namespace, against the host's plain loopback in the same run.
# Usage: bench/forward.sh [MIB_PER_RUN [CONNECTIONS [ROUNDS]]]   (needs unshare --net --map-root-user)
# Target (issue 4): forwarded throughput >= 50% of loopback, < 1 ms added per connection.
# Run twice: on all CPUs, where the figures depend on where the scheduler puts the client, the
# server and the forwarder, then on one CPU, where the ratio is the loopback's CPU time per byte
# over the forwarded path's.
set -eu
cd "$(dirname "$0")/.."
cargo build --quiet --release --example forward_bench
echo "== all CPUs ($(nproc))"
target/release/examples/forward_bench "$@"
echo "== one CPU"
exec taskset -c 0 target/release/examples/forward_bench "$@"
