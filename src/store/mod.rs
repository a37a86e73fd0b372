//! The rootfs cache: content-addressed, unpacked layers plus the small JSON documents (refs,
//! manifests, configs) that tie image names to them. ARCHITECTURE.md describes the layout and
//! why every write is a rename of something complete.

mod gc;
mod layer;
mod lock;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::{digest_hex, sha256_digest};
use crate::reference::ImageRef;

pub use gc::Freed;
pub use layer::{LayerMeta, LayerSlot, LayerWriter};
pub use lock::{Lock, Mode};

/// Bumped when the on-disk format changes, so an old eskrun never misreads a new cache.
const LAYOUT: &str = "v1";

/// Why a command pauses on the cache lock.
pub const WAITING_FOR_CACHE: &str = "waiting for another eskrun using the cache to finish";

/// An open cache directory.
pub struct Store {
    root: PathBuf,
}

/// What a reference points to, written last by a pull.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefRecord {
    /// The normalised reference, e.g. `docker.io/kave/eskapade-env:0.7`.
    pub reference: String,
    /// `os/arch[/variant]` the manifest was chosen for.
    pub platform: String,
    /// Digest of what the registry served for the reference (an index for multi-platform
    /// images): a `HEAD` returning it again means the image is up to date.
    pub source_digest: String,
    /// Digest of the platform's image manifest, stored under `manifests/`.
    pub manifest_digest: String,
}

/// An image ready to run: its config and its layer trees.
pub struct Image {
    pub reference: String,
    pub manifest_digest: String,
    pub config: oci_spec::image::ImageConfiguration,
    /// Layer trees in overlayfs format, lowest first.
    pub layers: Vec<PathBuf>,
}

/// Which small document directory a blob goes to.
#[derive(Clone, Copy)]
pub enum BlobKind {
    Manifest,
    Config,
}

impl Store {
    /// Opens (and creates if needed) the cache at `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let root = dir.join(LAYOUT);
        for sub in [
            "refs",
            "manifests/sha256",
            "configs/sha256",
            "layers/sha256",
            "tmp",
            "locks",
        ] {
            let path = root.join(sub);
            // One mkdir where the cache exists (every `run`), not create_dir_all's mkdir and
            // stat: a file in a directory's place fails the first use, naming its path.
            match std::fs::create_dir(&path) {
                Ok(()) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => {}
            }
            fs_err::create_dir_all(&path).with_context(|| {
                format!(
                    "cannot create the image cache at {} (set ESKRUN_CACHE to a writable directory)",
                    dir.display()
                )
            })?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cache-wide lock: shared by pull and run (nothing may be collected while they use the
    /// cache), exclusive by rmi and prune.
    pub fn lock(&self, mode: Mode) -> Result<Lock> {
        self.lock_or_else(mode, || eprintln!("eskrun: {WAITING_FOR_CACHE}"))
    }

    /// [`Store::lock`], telling the user through `waiting` when it has to wait.
    pub fn lock_or_else(&self, mode: Mode, waiting: impl FnOnce()) -> Result<Lock> {
        Lock::acquire(&self.root.join("locks/cache.lock"), mode, waiting)
    }

    /// Looks up a reference in the cache; `None` when it was never pulled.
    pub fn lookup(&self, reference: &ImageRef) -> Result<Option<Image>> {
        let Some(record) = self.read_ref(reference)? else {
            return Ok(None);
        };
        self.image(&record).map(Some)
    }

    /// The complete image a ref record points to, or an error saying what is missing.
    pub fn image(&self, record: &RefRecord) -> Result<Image> {
        let manifest = self.manifest(&record.manifest_digest)?;
        let config_path = self.blob_path(BlobKind::Config, manifest.config().digest().as_ref())?;
        let config =
            oci_spec::image::ImageConfiguration::from_file(&config_path).with_context(|| {
                format!(
                    "image {}: cannot read its config {}",
                    record.reference,
                    config_path.display()
                )
            })?;
        let mut layers = Vec::new();
        for layer in manifest.layers() {
            let dir = self.layer_dir(layer.digest().as_ref())?;
            if !dir.is_dir() {
                bail!(
                    "image {}: layer {} is missing from the cache; pull the image again",
                    record.reference,
                    layer.digest()
                );
            }
            layers.push(dir.join("tree"));
        }
        Ok(Image {
            reference: record.reference.clone(),
            manifest_digest: record.manifest_digest.clone(),
            config,
            layers,
        })
    }

    /// The stored image manifest with this digest.
    pub fn manifest(&self, digest: &str) -> Result<oci_spec::image::ImageManifest> {
        let path = self.blob_path(BlobKind::Manifest, digest)?;
        oci_spec::image::ImageManifest::from_file(&path)
            .with_context(|| format!("cannot read manifest {}", path.display()))
    }

    pub fn read_ref(&self, reference: &ImageRef) -> Result<Option<RefRecord>> {
        let path = self.ref_path(&reference.to_string());
        match fs_err::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("corrupt ref file {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Every ref in the cache, sorted by name.
    pub fn refs(&self) -> Result<Vec<RefRecord>> {
        let mut refs = Vec::new();
        for entry in fs_err::read_dir(self.root.join("refs"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = fs_err::read(&path)?;
                refs.push(
                    serde_json::from_slice::<RefRecord>(&bytes)
                        .with_context(|| format!("corrupt ref file {}", path.display()))?,
                );
            }
        }
        refs.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(refs)
    }

    /// Points a reference at an image. Written last by a pull, after everything it names.
    pub fn write_ref(&self, record: &RefRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)?;
        write_atomic(&self.ref_path(&record.reference), &bytes)
    }

    /// Removes a reference; its layers stay until nothing uses them (see [`Store::collect`]).
    pub fn remove_ref(&self, reference: &str) -> Result<bool> {
        match fs_err::remove_file(self.ref_path(reference)) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Stores a manifest or config after checking that `bytes` hash to `digest`. Already
    /// present content is left untouched, so an up-to-date image writes nothing.
    pub fn put_blob(&self, kind: BlobKind, digest: &str, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(kind, digest)?;
        if path.exists() {
            return Ok(());
        }
        let actual = sha256_digest(bytes);
        if actual != digest {
            bail!("content of {digest} hashes to {actual}: the registry sent corrupt data");
        }
        write_atomic(&path, bytes)
    }

    pub fn has_blob(&self, kind: BlobKind, digest: &str) -> Result<bool> {
        Ok(self.blob_path(kind, digest)?.exists())
    }

    fn blob_dir(&self, kind: BlobKind) -> PathBuf {
        let dir = match kind {
            BlobKind::Manifest => "manifests",
            BlobKind::Config => "configs",
        };
        self.root.join(dir).join("sha256")
    }

    fn blob_path(&self, kind: BlobKind, digest: &str) -> Result<PathBuf> {
        Ok(self.blob_dir(kind).join(digest_hex(digest)?))
    }

    /// Where the complete layer with this (compressed) digest lives.
    pub fn layer_dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers/sha256").join(digest_hex(digest)?))
    }

    pub fn has_layer(&self, digest: &str) -> Result<bool> {
        Ok(self.layer_dir(digest)?.is_dir())
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", escape_ref(reference)))
    }
}

/// A reference as one file name: `/` cannot appear in a name and `%` must stay unambiguous.
fn escape_ref(reference: &str) -> String {
    reference.replace('%', "%25").replace('/', "%2F")
}

/// What marks the temporary name of a file being written by [`write_atomic`].
const PARTIAL: &str = ".tmp-";

/// Whether a file name is one [`write_atomic`] writes to before the rename.
fn is_partial_file(name: &str) -> bool {
    name.starts_with('.') && name.contains(PARTIAL)
}

/// Writes `path` so that readers see either the old content or the whole new one: a
/// temporary file beside it, then `rename(2)`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    let tmp = dir.join(format!(
        ".{}{PARTIAL}{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut file = fs_err::File::create(&tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(anyhow::Error::from)
        .and_then(|()| fs_err::rename(&tmp, path).map_err(anyhow::Error::from));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_become_single_unambiguous_file_names() {
        assert_eq!(
            escape_ref("localhost:5000/a/b:1"),
            "localhost:5000%2Fa%2Fb:1"
        );
        assert_ne!(escape_ref("a/b"), escape_ref("a%2Fb"));
    }

    #[test]
    fn put_blob_checks_the_digest_and_writes_once() {
        let dir = tempdir();
        let store = Store::open(&dir).unwrap();
        let bytes = b"{\"a\":1}";
        let digest = sha256_digest(bytes);
        store.put_blob(BlobKind::Config, &digest, bytes).unwrap();
        assert!(store.has_blob(BlobKind::Config, &digest).unwrap());
        let wrong = sha256_digest(b"other");
        let err = store.put_blob(BlobKind::Config, &wrong, bytes).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(!store.has_blob(BlobKind::Config, &wrong).unwrap());
        fs_err::remove_dir_all(&dir).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "eskrun-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs_err::create_dir_all(&dir).unwrap();
        dir
    }
}
