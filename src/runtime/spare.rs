//! Spare container directories: the directory of a container that ended with nothing in its
//! writable layer is kept under `state_dir()/spare/` and becomes the next new container's,
//! instead of being removed and made again.
//!
//! Why: a `--rm` run would otherwise create and remove six inodes on the state disk (the
//! directory, `lock`, `container.json`, `init`, `upper/`, `work/`), on top of the ones
//! overlayfs makes in `work/` at each mount. On ext4 without a journal (this kind of host's
//! root disk), every freed block is discarded synchronously when the disk is mounted with
//! `discard` (~0.15 ms each here), and every new inode is searched for past
//! all those freed in the last minutes (ext4 keeps recently deleted inodes unused), so runs
//! in a loop got slower the more of them there were. A spare directory costs none of that:
//! its files are rewritten in place and it moves by rename.
//!
//! A spare holds `lock`, `container.json` and `init` of its last container (rewritten before
//! anyone sees them again), an empty `upper/` and an empty `work/`: what overlayfs made in it
//! is moved to the trash, to be removed while later containers run ([`set_work_aside`]). It
//! is taken under its lock and renamed into place with `RENAME_NOREPLACE`, so two eskruns
//! never take the same one and a name made meanwhile by another eskrun is never replaced.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use nix::fcntl::{renameat2, RenameFlags};

use super::record::{ContainerDir, Record};

/// Spare directories kept at most: as many containers as usually start at once.
const KEEP: usize = 4;

/// The mode of a container's root directory (its writable layer's top), as Docker has it. A
/// directory made with the user's umask could be 0700: a container user other than root
/// could not even look up `/bin`.
pub const ROOT_MODE: u32 = 0o755;

/// Where spare directories wait.
fn spare_dir() -> PathBuf {
    crate::dirs::state_dir().join("spare")
}

/// Where the work directories of spares' last containers wait to be removed ([`Cleaner`]).
fn trash_dir() -> PathBuf {
    crate::dirs::state_dir().join("trash")
}

/// Moves a spare directory to `path`, holding `record`, and returns it locked. `None` when
/// there is no spare fit for this process (or `path` appeared meanwhile): the caller makes
/// the directory itself.
pub fn take(path: &Path, record: &Record) -> Result<Option<ContainerDir>> {
    let Ok(entries) = std::fs::read_dir(spare_dir()) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let spare = entry.path();
        // Taken by another eskrun, or one that is still being given back.
        let Ok(Some(mut dir)) = ContainerDir::lock_existing(&spare) else {
            continue;
        };
        // Made by this process's identity, or its `/` would show other owners.
        if !fresh_root(&spare.join("upper")) {
            continue;
        }
        dir.overwrite_record(record)?;
        match renameat2(None, &spare, None, path, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {
                dir.path = path.to_path_buf();
                return Ok(Some(dir));
            }
            // Taken and given back under another name between the listing and the lock.
            Err(nix::errno::Errno::ENOENT) => continue,
            // EEXIST: the name was made meanwhile, which the caller reports. EINVAL: a
            // filesystem without RENAME_NOREPLACE (NFS): the caller makes the directory.
            Err(_) => return Ok(None),
        }
    }
    Ok(None)
}

/// `upper` as a new container's: a directory owned by this process (as another identity
/// it would show other owners in the container), with the root's mode.
fn fresh_root(upper: &Path) -> bool {
    std::fs::symlink_metadata(upper).is_ok_and(|m| {
        m.is_dir()
            && m.uid() == nix::unistd::geteuid().as_raw()
            && m.gid() == nix::unistd::getegid().as_raw()
            && m.mode() & 0o7777 == ROOT_MODE
    })
}

/// Gives the directory of an ended container back as a spare when its writable layer holds
/// nothing the container made, else removes it.
pub fn give_back(dir: ContainerDir) -> Result<()> {
    let spares = spare_dir();
    let room = std::fs::read_dir(&spares).map_or(true, |e| e.count() < KEEP);
    if room && reusable(&dir.path) && set_work_aside(&dir.path).is_ok() {
        dir.clear_init()?;
        // Renamed while still locked: nobody takes it before it is clean.
        if rename_into(&dir.path, &spares, &super::random_id()?).is_ok() {
            return Ok(());
        }
    }
    fs_err::remove_dir_all(&dir.path)?;
    Ok(())
}

/// Nothing but eskrun's own files and an untouched, empty writable layer: no copied root
/// (`rootfs/`), nothing written, no owner, mode or extended attribute set on `/` by the
/// container.
fn reusable(path: &Path) -> bool {
    let own = ["lock", "container.json", "init", "upper", "work"];
    let only_own = std::fs::read_dir(path).is_ok_and(|entries| {
        entries
            .flatten()
            .all(|e| own.iter().any(|o| e.file_name() == *o))
    });
    let upper = path.join("upper");
    only_own
        && fresh_root(&upper)
        && std::fs::read_dir(&upper).is_ok_and(|mut e| e.next().is_none())
        && xattr_names(&upper).is_some_and(|names| {
            names
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .all(|n| n.starts_with(b"user.overlay.") || n.starts_with(b"trusted.overlay."))
        })
}

/// Empties a spare's `work/` into the trash, keeping the directory for the next container.
/// overlayfs refuses a work directory where a `volatile` mount left
/// `work/work/incompat/volatile`, and removing those directories costs a discard each on
/// this kind of disk (~0.25 ms): renamed away, they are removed while later containers run
/// ([`Cleaner`]), when eskrun only waits.
fn set_work_aside(path: &Path) -> std::io::Result<()> {
    let trash = trash_dir();
    for entry in std::fs::read_dir(path.join("work"))? {
        let name = super::random_id().map_err(std::io::Error::other)?;
        rename_into(&entry?.path(), &trash, &name)?;
    }
    Ok(())
}

/// Renames `from` to `dir/name`, making `dir` only when it is missing (the first time).
fn rename_into(from: &Path, dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::rename(from, dir.join(name)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && from.exists() => {
            std::fs::create_dir_all(dir)?;
            std::fs::rename(from, dir.join(name))
        }
        result => result,
    }
}

/// Work directories left in the trash at most: a cleaner asked to stop goes on while there
/// are more, so that short containers in a loop cannot pile them up.
const TRASH_KEEP: usize = 8;

/// Removes what is in the trash, in a thread, while a container runs: for a container that
/// has started (eskrun must not have threads before). [`Cleaner::stop`] it when the
/// container has ended: it leaves the rest to later containers instead of making eskrun
/// wait for it.
pub struct Cleaner {
    stop: Arc<AtomicBool>,
    /// Trash entries not yet removed.
    left: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Cleaner {
    pub fn start() -> Option<Cleaner> {
        let entries: Vec<PathBuf> = std::fs::read_dir(trash_dir())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        if entries.is_empty() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicUsize::new(entries.len()));
        let (asked, count) = (Arc::clone(&stop), Arc::clone(&left));
        let thread = std::thread::Builder::new()
            .name("eskrun-clean".into())
            .spawn(move || {
                for entry in entries {
                    let halt = || {
                        count.load(Ordering::Relaxed) <= TRASH_KEEP && asked.load(Ordering::Relaxed)
                    };
                    if !remove_until(&entry, &halt) {
                        return;
                    }
                    count.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .ok()?;
        Some(Cleaner { stop, left, thread })
    }

    /// Stops it before its next removal once the trash is small enough, waiting for that only
    /// while it is not: the removal under way (a discard, up to ~0.25 ms here) ends while
    /// eskrun removes its container and exits (the kernel ends a process only once each of
    /// its threads is out of its system call). A tree cut short there is finished by a later
    /// cleaner.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.left.load(Ordering::Relaxed) > TRASH_KEEP {
            let _ = self.thread.join();
        }
    }
}

/// Removes the tree at `path` entry by entry until `halt` says to stop; `false` when it
/// stopped. What cannot be removed (another eskrun removed it first, or it is not ours) is
/// passed over.
fn remove_until(path: &Path, halt: &dyn Fn() -> bool) -> bool {
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if halt() || (is_dir && !remove_until(&entry.path(), halt)) {
                return false;
            }
            if !is_dir {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if halt() {
        return false;
    }
    if let Err(e) = std::fs::remove_dir(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::debug!("removing {}: {e}", path.display());
        }
    }
    true
}

/// The names of `path`'s extended attributes, NUL-separated.
fn xattr_names(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = vec![0u8; 1024];
    // SAFETY: `c` is a valid C string and `buf` is writable for its length.
    let n = unsafe { nix::libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}
