# Sourced by the set-up scripts: the Debian packages eskrun and its tests need, and how to get
# them onto a fresh Debian 12 machine.

# Running containers: newuidmap/newgidmap for subordinate id ranges; pasta (package passt),
# else slirp4netns, gives `--network private` containers outbound connections where
# /dev/net/tun allows it.
RUN_PACKAGES="uidmap passt slirp4netns"
# Tests: the reference registry, static busybox for test images, htpasswd, openssl for the test
# CA, iproute2 for network namespaces, util-linux for setpriv/unshare/script, procps for ps.
TEST_PACKAGES="$RUN_PACKAGES docker-registry busybox-static apache2-utils openssl iproute2 util-linux procps ca-certificates git gcc libc6-dev pkg-config"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# eskrun needs Rust >= 1.85 (Debian 12's rustc is older): use the one on PATH, else rustup.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
      install_packages curl ca-certificates gcc libc6-dev
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    }
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}
