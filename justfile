# Development recipes (https://github.com/casey/just: `cargo install just`).
# `pull` and `up` use ./rootfs-cache as the cache, which git ignores.

export ESKRUN_CACHE := justfile_directory() / "rootfs-cache"

build:
    cargo build --release

# The whole suite, as CI runs it (installs the Debian packages it needs; run as root).
test:
    bash scripts/test.sh

lint:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

bench:
    bash bench/pull.sh

# The main job end to end, offline: local registry, small image, pull, up.
demo:
    bash scripts/demo.sh

pull IMAGE *ARGS:
    cargo run --release -- pull {{IMAGE}} {{ARGS}}

up *ARGS:
    cargo run --release -- up {{ARGS}}
