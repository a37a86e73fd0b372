//! The image a container runs, from the rootfs cache. A missing image is pulled by a child
//! `eskrun pull` process: `run` itself must stay single-threaded until the container is
//! started, and pulling is multi-threaded.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::reference::ImageRef;
use crate::store::{Image, Lock, Mode, Store};

/// An image with the cache lock that keeps it from being collected while it runs.
pub struct CachedImage {
    pub image: Image,
    _lock: Lock,
}

/// What [`cached`] found.
pub enum Lookup {
    Found(Box<CachedImage>),
    /// `eskrun pull` failed with this exit code, after saying why on stderr.
    PullFailed(i32),
}

/// Looks `reference` up in the cache, pulling it first when it is missing.
pub fn cached(reference: &str) -> Result<Lookup> {
    let parsed = ImageRef::parse(reference)?;
    let store = Store::open(&crate::dirs::cache_dir())?;
    let lock = store.lock(Mode::Shared)?;
    if let Some(image) = store.lookup(&parsed)? {
        return Ok(Lookup::Found(Box::new(CachedImage { image, _lock: lock })));
    }
    let exe = std::env::current_exe().context("finding the eskrun executable to pull with")?;
    // Progress and messages go to stderr: the container's stdout stays its own.
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = Command::new(exe)
        .args(["pull", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .context("running eskrun pull")?;
    if !status.success() {
        return Ok(Lookup::PullFailed(status.code().unwrap_or(125)));
    }
    match store.lookup(&parsed)? {
        Some(image) => Ok(Lookup::Found(Box::new(CachedImage { image, _lock: lock }))),
        None => bail!("image {parsed} is still not in the cache after pulling it"),
    }
}
