//! Unpack errors: each names the layer and the entry, in one line.

use std::io;
use std::path::PathBuf;

/// Why a layer could not be unpacked. The io errors are part of the message (not a `source`)
/// so that the user sees one line.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "layer media type {0} is a foreign (non-distributable) layer whose bytes the registry does \
         not serve; eskrun cannot pull images with such layers (Windows base images)"
    )]
    ForeignLayer(String),
    #[error(
        "unsupported layer media type {0}; eskrun reads OCI and Docker tar layers, plain, gzip or \
         zstd"
    )]
    UnknownMediaType(String),
    #[error("layer {layer}: entry {entry:?} {reason}; refusing to unpack this image")]
    Hostile {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer}: the layer is not a readable compressed tar stream: {error}")]
    Stream { layer: String, error: io::Error },
    #[error("layer {layer}: entry {entry:?}: cannot {action}: {error}")]
    Entry {
        layer: String,
        entry: String,
        action: &'static str,
        error: io::Error,
    },
    #[error("layer directory {}: cannot open it: {error}", dest.display())]
    Dest { dest: PathBuf, error: io::Error },
    #[error("layer directory {}: hard link {path:?} -> {target:?}: {reason}", dest.display())]
    Link {
        dest: PathBuf,
        path: PathBuf,
        target: PathBuf,
        reason: LinkReason,
    },
}

/// Why a hard link into a lower layer could not be completed. System errors stay errors (not
/// text), so that a full disk is recognised as one wherever it happened.
#[derive(Debug, thiserror::Error)]
pub enum LinkReason {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Errno(#[from] nix::errno::Errno),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cannot copy the target: {0}")]
    Copy(io::Error),
}

impl LinkReason {
    /// The OS error number behind the failure, if a system call failed.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            LinkReason::Refused(_) => None,
            LinkReason::Errno(errno) => Some(*errno as i32),
            LinkReason::Io(error) | LinkReason::Copy(error) => error.raw_os_error(),
        }
    }
}
