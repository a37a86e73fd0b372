//! Removing what no image needs any more. Runs under the exclusive cache lock, so no pull or
//! container is using the cache meanwhile.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;

use super::layer::remove_if_present;
use super::lock::{Lock, Mode};
use super::{BlobKind, Store};
use crate::digest::digest_hex;

/// What a collection removed.
#[derive(Debug, Default, PartialEq)]
pub struct Freed {
    pub layers: usize,
    pub documents: usize,
    pub bytes: u64,
}

impl Store {
    /// Removes manifests, configs and layers that no ref reaches, plus the leftovers of
    /// processes that died mid-pull. `layers_in_use` names layer digests to keep although no
    /// ref reaches them: those under containers that still exist (their writable layer sits
    /// on top of them, and `eskrun up` mounts them again).
    pub fn collect(&self, layers_in_use: &HashSet<String>) -> Result<Freed> {
        let manifests: HashSet<String> = self
            .refs()?
            .into_iter()
            .map(|r| r.manifest_digest)
            .collect();
        let mut keep_layers = layers_in_use.clone();
        let mut keep_configs = HashSet::new();
        for digest in &manifests {
            // A ref whose manifest is gone keeps nothing; `lookup` reports it.
            if let Ok(manifest) = self.manifest(digest) {
                keep_configs.insert(manifest.config().digest().to_string());
                keep_layers.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
            }
        }

        let mut freed = Freed::default();
        for (kind, keep) in [
            (BlobKind::Manifest, &manifests),
            (BlobKind::Config, &keep_configs),
        ] {
            let dir = self.blob_dir(kind);
            for name in names(&dir)? {
                if !keep.contains(&format!("sha256:{name}")) {
                    let path = dir.join(&name);
                    freed.bytes += fs_err::metadata(&path)?.len();
                    fs_err::remove_file(&path)?;
                    freed.documents += 1;
                }
            }
        }
        let layers = self.root.join("layers/sha256");
        for name in names(&layers)? {
            if !keep_layers.contains(&format!("sha256:{name}")) {
                let path = layers.join(&name);
                freed.bytes += disk_usage(&path);
                remove_if_present(&path)?;
                freed.layers += 1;
            }
        }
        freed.bytes += self.remove_dead_tmp()?;
        freed.bytes += self.remove_dead_partial_files()?;
        Ok(freed)
    }

    /// Removes the temporary files of [`super::write_atomic`] that a killed pull left in
    /// `refs/`, `manifests/` and `configs/`. Only pulls write there, and none runs while we
    /// hold the cache lock exclusively, so every such file is dead.
    fn remove_dead_partial_files(&self) -> Result<u64> {
        let mut bytes = 0;
        for dir in [
            self.root.join("refs"),
            self.blob_dir(BlobKind::Manifest),
            self.blob_dir(BlobKind::Config),
        ] {
            for entry in fs_err::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                if name.to_str().is_some_and(super::is_partial_file) {
                    bytes += entry.metadata()?.len();
                    fs_err::remove_file(entry.path())?;
                }
            }
        }
        Ok(bytes)
    }

    /// Removes `tmp/layer-<hex>` directories whose layer lock nobody holds: their pull died.
    fn remove_dead_tmp(&self) -> Result<u64> {
        let tmp = self.root.join("tmp");
        let mut bytes = 0;
        for name in names(&tmp)? {
            let Some(hex) = name.strip_prefix("layer-") else {
                continue;
            };
            if digest_hex(&format!("sha256:{hex}")).is_err() {
                continue;
            }
            let lock = self.root.join("locks").join(format!("layer-{hex}.lock"));
            if let Some(_held) = Lock::try_acquire(&lock, Mode::Exclusive)? {
                let path = tmp.join(&name);
                bytes += disk_usage(&path);
                remove_if_present(&path)?;
            }
        }
        Ok(bytes)
    }
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs_err::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(name) = name.to_str() {
            if !name.starts_with('.') {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// Bytes a tree occupies on disk (allocated blocks, hard links counted once per tree).
fn disk_usage(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}
