//! The rootfs cache.
