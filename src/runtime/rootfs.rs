//! The container's root: the cached layers stacked read-only by one overlay mount under the
//! container's own upper directory, mounted in eskrun's private mount namespace (so it goes
//! away with eskrun, whatever happens to it). Nothing is copied, whatever the image size.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};

/// Mounts `layers` (lowest first) at `target` with `upper`/`work` as the writable part.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    empty: &Path,
    target: &Path,
) -> Result<()> {
    // An image without layers still needs one lower directory.
    let lowers: Vec<&Path> = if layers.is_empty() {
        vec![empty]
    } else {
        layers.iter().rev().map(PathBuf::as_path).collect()
    };
    for dir in &lowers {
        if dir
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b':' | b','))
        {
            bail!(
                "layer directory {} has a ':' or ',' in its path, which overlayfs cannot take",
                dir.display()
            );
        }
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},userxattr",
        upper.display(),
        work.display()
    );
    mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str())).with_context(|| {
        format!(
            "mounting the image's {} layers as an overlay on {} (overlayfs in a user namespace needs Linux 5.11 or later)",
            lowers.len(),
            target.display()
        )
    })
}

/// Creates the working directory inside the mounted root if missing, as Docker does. A
/// symlink on the way is left to the runtime to resolve inside the container.
pub fn ensure_dir(rootfs: &Path, dir: &str) -> Result<()> {
    let mut path = rootfs.to_path_buf();
    for comp in Path::new(dir).components() {
        match comp {
            Component::Normal(c) => path.push(c),
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                bail!("invalid working directory {dir:?}")
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.is_symlink() => return Ok(()),
            Ok(_) => bail!(
                "the working directory {dir} cannot be created: {} is a file in the image",
                path.strip_prefix(rootfs).unwrap_or(&path).display()
            ),
            Err(_) => fs_err::create_dir(&path).context("creating the working directory")?,
        }
    }
    Ok(())
}
