#!/usr/bin/env bash
# Installs eskrun for the current user on Debian: uidmap (newuidmap/newgidmap, for images with
# several users), passt and slirp4netns (outbound network of --network private), Rust when
# missing, then eskrun itself into ~/.cargo/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
install_packages $RUN_PACKAGES
ensure_rust
cargo install --locked --path . --root "$HOME/.cargo" --force
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) echo "add ~/.cargo/bin to your PATH" ;; esac
