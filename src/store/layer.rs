//! Claiming, filling and publishing one layer directory.
//!
//! A layer is unpacked into `tmp/layer-<hex>` while `locks/layer-<hex>.lock` is held, then
//! renamed to `layers/sha256/<hex>`. The rename is the only step that makes a layer visible, so
//! a layer in `layers/` is always complete, and the lock makes concurrent pulls of the same
//! layer wait for the first instead of downloading it again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::lock::{Lock, Mode};
use super::{write_atomic, Store};
use crate::digest::digest_hex;

/// What the cache records about a layer beside its tree.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Compressed digest, as named by the manifest.
    pub digest: String,
    /// Digest of the uncompressed tar, as named by the image config.
    pub diff_id: String,
    pub media_type: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Rootless pulls cannot chown: entries whose owner in the image was not root, as
    /// (path, uid, gid), so the runtime can still know who owned them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<(String, u32, u32)>,
    /// Device nodes and FIFOs left out because eskrun was not running as real root.
    #[serde(default)]
    pub skipped_devices: u64,
    /// Extended attributes the filesystem or our privileges refused.
    #[serde(default)]
    pub skipped_xattrs: u64,
}

impl LayerMeta {
    /// The metadata of the cached layer whose tree is `tree`; `None` for a tree outside the
    /// cache (no layer.json beside it).
    pub fn of_tree(tree: &Path) -> Result<Option<LayerMeta>> {
        let path = tree.with_file_name("layer.json");
        match fs_err::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged: remove the image and pull it again",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the copy of the layer's tree owned as the image says, for the id mapping named
    /// `key`, lives: beside the tree, so it goes with the layer.
    pub fn owned_tree(tree: &Path, key: &str) -> PathBuf {
        tree.with_file_name("owned").join(key)
    }
}

/// The outcome of claiming a layer.
pub enum LayerSlot {
    /// Already in the cache (perhaps just finished by a concurrent pull).
    Present(PathBuf),
    /// Ours to fill.
    Fresh(LayerWriter),
}

/// An exclusive claim on a layer being unpacked. Dropping it without [`LayerWriter::commit`]
/// removes the partial directory.
pub struct LayerWriter {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
    _lock: Lock,
}

impl Store {
    /// Claims the layer with compressed digest `digest`: waits while another process unpacks
    /// it (calling `waiting` first, to tell the user), then returns it as present, or hands
    /// us an empty directory to unpack into.
    pub fn claim_layer(&self, digest: &str, waiting: impl FnOnce()) -> Result<LayerSlot> {
        let hex = digest_hex(digest)?;
        let dest = self.layer_dir(digest)?;
        if dest.is_dir() {
            return Ok(LayerSlot::Present(dest));
        }
        let lock = Lock::acquire(
            &self.root.join("locks").join(format!("layer-{hex}.lock")),
            Mode::Exclusive,
            waiting,
        )?;
        if dest.is_dir() {
            return Ok(LayerSlot::Present(dest));
        }
        let tmp = self.root.join("tmp").join(format!("layer-{hex}"));
        // Under the lock, a leftover is from a process that died mid-layer.
        remove_if_present(&tmp)?;
        fs_err::create_dir_all(tmp.join("tree"))?;
        Ok(LayerSlot::Fresh(LayerWriter {
            tmp,
            dest,
            committed: false,
            _lock: lock,
        }))
    }
}

impl LayerWriter {
    /// The directory to unpack the layer's files into.
    pub fn tree(&self) -> PathBuf {
        self.tmp.join("tree")
    }

    /// Publishes the layer: records its metadata, then renames it into place.
    pub fn commit(mut self, meta: &LayerMeta) -> Result<PathBuf> {
        write_atomic(
            &self.tmp.join("layer.json"),
            &serde_json::to_vec_pretty(meta)?,
        )?;
        fs_err::rename(&self.tmp, &self.dest)
            .with_context(|| format!("cannot publish layer {}", meta.digest))?;
        self.committed = true;
        Ok(self.dest.join("tree"))
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(err) = remove_if_present(&self.tmp) {
                tracing::warn!("cannot remove partial layer: {err:#}");
            }
        }
    }
}

/// Removes a layer directory if it exists, also one whose image made directories read-only.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    crate::unpack::remove_layer_dir(path)
        .with_context(|| format!("cannot remove {}", path.display()))
}
