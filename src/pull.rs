//! One image from registry to cache.
