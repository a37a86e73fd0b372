//! File locks of the cache. `flock(2)` only: it is released by the kernel when a process dies
//! (so a SIGKILLed pull never leaves a lock behind) and Linux maps it to byte-range locks on
//! NFSv4, so a cache shared by many jobs on a network filesystem is protected too.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A held lock; released when dropped.
pub struct Lock {
    _flock: Flock<File>,
}

#[derive(Clone, Copy)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Lock {
    /// Takes the lock on `path`, waiting for it if another process holds it. `waiting` is called
    /// once, only when we actually have to wait, so the user learns why eskrun pauses.
    pub fn acquire(path: &Path, mode: Mode, waiting: impl FnOnce()) -> Result<Lock> {
        let (nonblock, block) = match mode {
            Mode::Shared => (FlockArg::LockSharedNonblock, FlockArg::LockShared),
            Mode::Exclusive => (FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive),
        };
        let mut file = match Flock::lock(open(path)?, nonblock) {
            Ok(flock) => return Ok(Lock { _flock: flock }),
            Err((file, Errno::EWOULDBLOCK)) => file,
            Err((_, errno)) => return Err(lock_error(path, errno)),
        };
        waiting();
        loop {
            match Flock::lock(file, block) {
                Ok(flock) => return Ok(Lock { _flock: flock }),
                Err((again, Errno::EINTR)) => file = again,
                Err((_, errno)) => return Err(lock_error(path, errno)),
            }
        }
    }

    /// Takes the lock only if nobody holds it.
    pub fn try_acquire(path: &Path, mode: Mode) -> Result<Option<Lock>> {
        let arg = match mode {
            Mode::Shared => FlockArg::LockSharedNonblock,
            Mode::Exclusive => FlockArg::LockExclusiveNonblock,
        };
        match Flock::lock(open(path)?, arg) {
            Ok(flock) => Ok(Some(Lock { _flock: flock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(lock_error(path, errno)),
        }
    }
}

fn open(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))
}

fn lock_error(path: &Path, errno: Errno) -> anyhow::Error {
    let hint = if errno == Errno::ENOLCK || errno == Errno::EOPNOTSUPP {
        ": the filesystem does not support file locks (an NFS mount without lockd?); \
         put the cache elsewhere with ESKRUN_CACHE"
    } else {
        ""
    };
    anyhow::anyhow!("cannot lock {}: {errno}{hint}", path.display())
}
