//! Layer unpacking: one compressed layer stream in, one directory in overlayfs' own format out.
//!
//! The stream is decompressed, hashed (diff_id) and applied entry by entry in a single pass, so
//! memory stays flat whatever the layer size. Every entry is placed through directory file
//! descriptors opened with `O_NOFOLLOW`, component by component, so that no entry can create or
//! change anything outside the layer's directory, whatever the order of the entries: `..`,
//! absolute names, parents that are symlinks and hard links leaving the layer are refused.
//!
//! The result is stacked at run time by one overlay mount (`userxattr`), so whiteouts become
//! 0:0 character devices and opaque markers the `user.overlay.opaque` xattr. Hard links to files
//! of lower layers cannot be made across layer directories: they are reported as
//! [`PendingLink`]s and copied in by [`complete_links`] once the lower layers are in place.

mod apply;
mod copy;
mod error;
mod fsutil;
mod links;
mod media;
mod owned;
mod path;
mod remove;
mod stage;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::HashingReader;

pub use error::{LinkReason, UnpackError};
pub use links::complete_links;
pub use media::{compression_for, Compression};
pub use owned::{copy_owned, Owners};
pub use remove::remove_layer_dir;

/// How to treat what only real root may create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Running as real root (not root of a user namespace): keep owners, create device nodes.
    pub as_root: bool,
}

impl UnpackOptions {
    /// Options for the calling process: `as_root` only for uid 0 of the initial user namespace,
    /// where `chown` to any id and `mknod` of devices work.
    pub fn for_current_process() -> Self {
        let initial_userns = std::fs::read_to_string("/proc/self/uid_map")
            .map(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
            .unwrap_or(false);
        Self {
            as_root: nix::unistd::geteuid().is_root() && initial_userns,
        }
    }
}

/// A hard link whose target is not in its own layer: the target is a file of a lower layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLink {
    /// The link's path, relative to the layer's root.
    pub path: PathBuf,
    /// The target's path, relative to the image's root (checked: no `..`, not absolute).
    pub target: PathBuf,
}

/// What unpacking one layer found, beyond the files themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar stream, to compare with the image config.
    pub diff_id: String,
    /// Hard links to files of lower layers, to complete with [`complete_links`].
    pub pending_links: Vec<PendingLink>,
    /// Rootless only: the entries whose owner in the image is not 0:0, as (path, uid, gid),
    /// sorted by path. The files themselves belong to the invoking user.
    pub owners: Vec<(String, u32, u32)>,
    /// Device nodes and FIFOs not created because not running as root.
    pub skipped_devices: u64,
    /// Extended attributes that the filesystem or our privileges refused, or that eskrun refuses
    /// to take from an image (overlayfs' own).
    pub skipped_xattrs: u64,
}

/// Reads `input` (the compressed layer bytes) to EOF, including any bytes after the tar end
/// marker, because the caller hashes the compressed stream as it passes, and applies every
/// entry under `dest` (an existing empty directory). On error the caller removes `dest`.
pub fn unpack_layer(
    input: impl Read + Send,
    compression: Compression,
    dest: &Path,
    layer_name: &str,
    opts: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    let stream_error = |error: io::Error| UnpackError::Stream {
        layer: layer_name.to_owned(),
        error,
    };
    let mut input = input;
    let (producer, mut tar_stream) = stage::channel();
    std::thread::scope(|scope| {
        // Decompression and both hashes on one thread, the file system work on this one.
        let decompressing = scope.spawn(|| -> io::Result<Option<String>> {
            let decoder: Box<dyn Read> = match compression {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut input)),
                Compression::Zstd => Box::new(zstd::Decoder::new(&mut input)?),
                Compression::None => Box::new(&mut input),
            };
            let mut decoded = HashingReader::new(decoder);
            if !producer.fill_from(&mut decoded) {
                return Ok(None); // the tar side failed; its error says why
            }
            let diff_id = decoded.finish().0;
            io::copy(&mut input, &mut io::sink())?;
            Ok(Some(diff_id))
        });
        let applied = apply::Unpacker::new(dest, layer_name, opts)
            .and_then(|unpacker| unpacker.run(&mut tar_stream))
            .and_then(|unpacked| {
                // The tar end marker is usually followed by padding that is part of the diff_id.
                io::copy(&mut tar_stream, &mut io::sink()).map_err(stream_error)?;
                Ok(unpacked)
            });
        // Stops the producer if the tar side gave up early.
        drop(tar_stream);
        let produced = decompressing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let mut unpacked = applied?;
        match produced.map_err(stream_error)? {
            Some(diff_id) => unpacked.diff_id = diff_id,
            // The producer stops early only when the tar side gave up, with an error.
            None => unreachable!("the tar side read to the end"),
        }
        Ok(unpacked)
    })
}
