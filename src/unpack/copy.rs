//! Copying one entry of a layer tree with its metadata, for link completion and for layers
//! given back their owners.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmodat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use xattr::FileExt;

use super::fsutil::{file_type, lstat_at};

/// An entry to copy: its directory (open), its name there and what lstat said of it.
pub(super) struct Source {
    pub dir: File,
    pub name: OsString,
    pub stat: FileStat,
}

/// Copies one non-directory entry to `name` in `parent` with its content, mode, xattrs and
/// mtime, owned by `owner`. Something other than a directory already there is replaced.
pub(super) fn copy_entry(
    parent: RawFd,
    name: &OsStr,
    source: &Source,
    owner: (u32, u32),
) -> io::Result<()> {
    if let Some(existing) = lstat_at(parent, name)? {
        if file_type(&existing) == SFlag::S_IFDIR {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a directory is in the way",
            ));
        }
        unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir)?;
    }
    let stat = &source.stat;
    let mode = Mode::from_bits_truncate(stat.st_mode & 0o7777);
    let kind = file_type(stat);
    match kind {
        SFlag::S_IFREG => {
            let mut from = open_file(source.dir.as_raw_fd(), &source.name, OFlag::O_RDONLY, 0)?;
            let mut to = open_file(
                parent,
                name,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                0o600,
            )?;
            io::copy(&mut from, &mut to)?;
            if let Ok(names) = from.list_xattr() {
                for xattr in names {
                    if let Ok(Some(value)) = from.get_xattr(&xattr) {
                        // Best effort, as when unpacking: some namespaces need privileges.
                        let _ = to.set_xattr(&xattr, &value);
                    }
                }
            }
        }
        SFlag::S_IFLNK => {
            let target = readlinkat(Some(source.dir.as_raw_fd()), source.name.as_os_str())?;
            symlinkat(target.as_os_str(), Some(parent), name)?;
        }
        _ => mknodat(Some(parent), name, kind, mode, stat.st_rdev)?,
    }
    let copy = lstat_at(parent, name)?.ok_or(io::ErrorKind::NotFound)?;
    // Skipped when the copy has it already: rootless without a mapped range we may not chown.
    if (copy.st_uid, copy.st_gid) != owner {
        fchownat(
            Some(parent),
            name,
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    if kind != SFlag::S_IFLNK {
        // Not a symlink (checked above), and created just now in our own layer directory.
        fchmodat(Some(parent), name, mode, FchmodatFlags::FollowSymlink)?;
    }
    let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
    utimensat(
        Some(parent),
        name,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

pub(super) fn open_file(dir: RawFd, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<File> {
    let fd = openat(
        Some(dir),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}
