//! Directory walks that never follow a symlink, shared by unpacking and link completion.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};

/// Why a path component could not be opened as a directory.
#[derive(Debug)]
pub(super) enum Step {
    Symlink,
    NotDir,
    Io(Errno),
}

/// Opens an existing directory (a layer's root, given by the caller).
pub(super) fn open_dir(path: &Path) -> io::Result<File> {
    let fd = openat(
        None,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the directory `name` in `parent` without following a symlink; with `create`, makes
/// it (mode 0755, whatever the umask) when missing. `None`: missing and not created.
pub(super) fn open_child_dir(
    parent: RawFd,
    name: &OsStr,
    create: bool,
) -> Result<Option<File>, Step> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut created = false;
    loop {
        match openat(Some(parent), name, flags, Mode::empty()) {
            Ok(fd) => {
                // SAFETY: openat just returned this descriptor and nothing else owns it.
                let dir = unsafe { File::from_raw_fd(fd) };
                if created {
                    fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o755)).map_err(Step::Io)?;
                }
                return Ok(Some(dir));
            }
            Err(Errno::ENOENT) if create && !created => {
                match mkdirat(Some(parent), name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => created = true,
                    Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(Step::Io(errno)),
                }
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return match lstat_at(parent, name) {
                    Ok(Some(stat)) if file_type(&stat) == SFlag::S_IFLNK => Err(Step::Symlink),
                    Ok(_) => Err(Step::NotDir),
                    Err(errno) => Err(Step::Io(errno)),
                }
            }
            Err(errno) => return Err(Step::Io(errno)),
        }
    }
}

/// Opens the directory `components` below `root`, one component at a time (see
/// [`open_child_dir`]). On failure, also says at which component.
pub(super) fn walk(
    root: &File,
    components: &[&OsStr],
    create: bool,
) -> Result<Option<File>, (usize, Step)> {
    let mut dir = root.try_clone().map_err(|e| (0, Step::Io(io_errno(&e))))?;
    for (index, component) in components.iter().enumerate() {
        match open_child_dir(dir.as_raw_fd(), component, create) {
            Ok(Some(child)) => dir = child,
            Ok(None) => return Ok(None),
            Err(step) => return Err((index, step)),
        }
    }
    Ok(Some(dir))
}

/// `fstatat` without following a symlink; `None` when nothing is there.
pub(super) fn lstat_at(dir: RawFd, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno),
    }
}

pub(super) fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// overlayfs' whiteout: a 0:0 character device.
pub(super) fn is_whiteout(stat: &FileStat) -> bool {
    file_type(stat) == SFlag::S_IFCHR && stat.st_rdev == 0
}

pub(super) fn io_errno(error: &io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(Errno::EIO as i32))
}
