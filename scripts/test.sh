#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the system packages the tests
# use (the reference registry, busybox for test images, newuidmap, ...), then runs the checks
# and every test. Tests start their own registries on 127.0.0.1 and create their own
# unprivileged users, so this must run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (the tests create users and run real containers)" >&2
  exit 2
fi
install_packages $TEST_PACKAGES
ensure_rust

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --no-fail-fast -- --test-threads="${ESKRUN_TEST_THREADS:-4}"
