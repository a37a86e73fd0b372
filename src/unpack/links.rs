//! Completing hard links to files of lower layers: the file is looked up in the stacked
//! lowers as overlayfs would, then copied into the layer (a hard link cannot cross layer
//! directories, and the layers must stay independent of each other in the cache).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{fchmod, fstat, futimens, Mode, SFlag};
use nix::sys::time::TimeSpec;
use xattr::FileExt;

use super::apply::OPAQUE_XATTR;
use super::copy::{copy_entry, Source};
use super::error::LinkReason;
use super::fsutil::{file_type, is_whiteout, lstat_at, open_child_dir, open_dir, walk, Step};
use super::path;
use super::{PendingLink, UnpackError};

/// Completes pending hard links by copying each target from the stacked lower layers
/// (`lowers`: their tree directories, topmost first), honouring their whiteouts (0:0 character
/// devices) and opaque directories (`user.overlay.opaque=y`). The copy keeps content, mode,
/// owner (where we may change it), xattrs and mtime; the directory it lands in keeps its mode
/// and mtime.
pub fn complete_links(
    dest: &Path,
    pending: &[PendingLink],
    lowers: &[&Path],
) -> Result<(), UnpackError> {
    if pending.is_empty() {
        return Ok(());
    }
    let open = |dir: &Path| {
        open_dir(dir).map_err(|error| UnpackError::Dest {
            dest: dir.to_owned(),
            error,
        })
    };
    let root = open(dest)?;
    let lowers = lowers
        .iter()
        .map(|dir| open(dir))
        .collect::<Result<Vec<_>, _>>()?;
    for link in pending {
        let fail = |reason: LinkReason| UnpackError::Link {
            dest: dest.to_owned(),
            path: link.path.clone(),
            target: link.target.clone(),
            reason,
        };
        let source = find_in_lowers(&lowers, &link.target).map_err(fail)?;
        place_copy(&root, &link.path, &source).map_err(fail)?;
    }
    Ok(())
}

/// Looks `target` up through the lowers as the merged overlay would see it.
fn find_in_lowers(lowers: &[File], target: &Path) -> Result<Source, LinkReason> {
    let components = path::components(target.as_os_str().as_bytes())
        .map_err(|problem| LinkReason::Refused(format!("the target {}", problem.reason())))?;
    let Some((name, parents)) = components.split_last() else {
        return Err(LinkReason::Refused(
            "the target is the root directory".to_owned(),
        ));
    };
    for lower in lowers {
        let mut dir = lower.try_clone().map_err(LinkReason::from)?;
        // An opaque directory on the way hides what the layers below have there.
        let mut opaque = false;
        let mut present = true;
        for (index, component) in parents.iter().enumerate() {
            let shown = || path::display(&parents[..=index]);
            let Some(stat) = lstat_at(dir.as_raw_fd(), component).map_err(LinkReason::from)? else {
                present = false;
                break;
            };
            match file_type(&stat) {
                SFlag::S_IFDIR => {}
                SFlag::S_IFLNK => {
                    return Err(LinkReason::Refused(format!(
                        "{:?} is a symlink in a lower layer; hard links do not go through symlinks",
                        shown()
                    )))
                }
                _ if is_whiteout(&stat) => {
                    return Err(LinkReason::Refused(format!(
                        "a lower layer deletes {:?}",
                        shown()
                    )))
                }
                _ => {
                    return Err(LinkReason::Refused(format!(
                        "{:?} is not a directory in the lower layers",
                        shown()
                    )))
                }
            }
            dir = match open_child_dir(dir.as_raw_fd(), component, false) {
                Ok(Some(child)) => child,
                Ok(None) | Err(Step::Symlink | Step::NotDir) => {
                    return Err(LinkReason::Refused(format!(
                        "{:?} changed while being read",
                        shown()
                    )))
                }
                Err(Step::Io(errno)) => return Err(errno.into()),
            };
            opaque |= dir.get_xattr(OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y");
        }
        if present {
            if let Some(stat) = lstat_at(dir.as_raw_fd(), name).map_err(LinkReason::from)? {
                if is_whiteout(&stat) {
                    return Err(LinkReason::Refused(
                        "a lower layer deletes the target".to_owned(),
                    ));
                }
                if file_type(&stat) == SFlag::S_IFDIR {
                    return Err(LinkReason::Refused("the target is a directory".to_owned()));
                }
                return Ok(Source {
                    dir,
                    name: name.to_os_string(),
                    stat,
                });
            }
        }
        if opaque {
            break;
        }
    }
    Err(LinkReason::Refused(
        "the target is in none of the lower layers".to_owned(),
    ))
}

/// Copies `source` to `path` in the layer, keeping the mode and mtime of the directory it
/// goes into (unpacking set them from the layer already).
fn place_copy(root: &File, path: &Path, source: &Source) -> Result<(), LinkReason> {
    let components = path::components(path.as_os_str().as_bytes())
        .map_err(|problem| LinkReason::Refused(format!("the link {}", problem.reason())))?;
    let Some((name, parents)) = components.split_last() else {
        return Err(LinkReason::Refused(
            "the link is the root directory".to_owned(),
        ));
    };
    let parent = match walk(root, parents, true) {
        Ok(Some(dir)) => dir,
        Ok(None) => unreachable!("walk creates missing directories"),
        Err((index, Step::Symlink)) => {
            return Err(LinkReason::Refused(format!(
                "{:?} is a symlink",
                path::display(&parents[..=index])
            )))
        }
        Err((index, Step::NotDir)) => {
            return Err(LinkReason::Refused(format!(
                "{:?} is not a directory",
                path::display(&parents[..=index])
            )))
        }
        Err((_, Step::Io(errno))) => return Err(errno.into()),
    };
    let fd = parent.as_raw_fd();
    let before = fstat(fd).map_err(LinkReason::from)?;
    let before_mode = Mode::from_bits_truncate(before.st_mode & 0o7777);
    // Rootless, a read-only directory of the image must be opened up for the copy.
    let read_only = before.st_mode & 0o200 == 0;
    if read_only {
        fchmod(fd, before_mode | Mode::S_IWUSR).map_err(LinkReason::from)?;
    }
    let copied = copy_entry(fd, name, source, (source.stat.st_uid, source.stat.st_gid));
    if read_only {
        fchmod(fd, before_mode).map_err(LinkReason::from)?;
    }
    futimens(
        fd,
        &TimeSpec::new(before.st_atime, before.st_atime_nsec),
        &TimeSpec::new(before.st_mtime, before.st_mtime_nsec),
    )
    .map_err(LinkReason::from)?;
    copied.map_err(LinkReason::Copy)
}
