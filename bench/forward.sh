#!/bin/sh
# Forwarded-TCP benchmark: throughput and connection latency through eskrun's port forwarder
# into a network namespace, against the host's plain loopback in the same run.
# Usage: bench/forward.sh [MIB_PER_RUN [CONNECTIONS]]   (needs unshare --net --map-root-user)
# Target (issue 4): forwarded throughput >= 50% of loopback, < 1 ms added per connection.
set -eu
cd "$(dirname "$0")/.."
cargo build --quiet --release --example forward_bench
exec target/release/examples/forward_bench "$@"
