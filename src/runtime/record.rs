//! A container's directory under `state_dir()/containers/<name>/`: its writable layer
//! (`upper`, `work`), `container.json`, `init` while it runs, and `lock`, held by the eskrun
//! that runs it (the bundle and libcontainer's state are on that eskrun's scratch tmpfs). A
//! container whose lock nobody holds and whose `container.json` exists was left by an eskrun
//! that died.
//!
//! Files are never replaced by rename on the hot path: replacing a file makes ext4 write it
//! out at once and, on a disk mounted with `discard`, discard the old block. `init` and the
//! record of a spare directory ([`super::spare`]) are rewritten in place instead; a record
//! others may be reading (a visible directory) is still written whole under a new name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// What `container.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// libcontainer's id, also the name of its cgroup (`/eskrun/<id>`).
    pub id: String,
    /// `--rm`: everything goes when the container ends.
    pub remove: bool,
    /// The layer trees the container's root stacks, lowest first: `prune` and `rmi` keep
    /// them while the container exists.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// The image, as `eskrun ps` shows it (absent from records of earlier eskruns).
    #[serde(default)]
    pub image: Option<String>,
}

/// A container directory, locked by this process.
pub struct ContainerDir {
    pub path: PathBuf,
    _lock: Flock<std::fs::File>,
    /// The init this eskrun started, once it has.
    started: std::cell::Cell<Option<nix::unistd::Pid>>,
}

impl ContainerDir {
    /// Creates `path` if needed and locks it, unless a running eskrun holds it.
    pub fn create_and_lock(path: &Path) -> Result<Option<Self>> {
        fs_err::create_dir_all(path)?;
        Self::lock(path, true)
    }

    /// Locks an existing container directory, unless a running eskrun holds it. `None` too
    /// when it is gone: another eskrun may be removing it right now.
    pub fn lock_existing(path: &Path) -> Result<Option<Self>> {
        Self::lock(path, false)
    }

    fn lock(path: &Path, create: bool) -> Result<Option<Self>> {
        let lock_path = path.join("lock");
        let file = match std::fs::OpenOptions::new()
            .create(create)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", lock_path.display())),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(ContainerDir {
                path: path.to_path_buf(),
                _lock: lock,
                started: std::cell::Cell::new(None),
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", lock_path.display())),
        }
    }

    pub fn read(&self) -> Result<Option<Record>> {
        let file = self.path.join("container.json");
        match std::fs::read(&file) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("reading {}", file.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    /// The running init, as `set_init` recorded it (by whichever eskrun).
    pub fn init(&self) -> Option<(i32, u64)> {
        read_init(&self.path)
    }

    /// The init this eskrun started.
    pub fn started(&self) -> Option<nix::unistd::Pid> {
        self.started.get()
    }

    /// Records the running init: pid and start time (/proc/PID/stat field 22), so a recycled
    /// pid is never taken for it. Fixed width and written in place, so the file keeps its
    /// disk block from run to run.
    pub fn set_init(&self, pid: nix::unistd::Pid) -> Result<()> {
        self.started.set(Some(pid));
        let Some(started) = start_time(pid.as_raw()) else {
            return Ok(());
        };
        overwrite(
            &self.path.join("init"),
            format!("{pid:>10} {started:>20}\n").as_bytes(),
        )
    }

    /// Blanks `init` (same width, so it keeps its disk block).
    pub fn clear_init(&self) -> Result<()> {
        if !self.path.join("init").exists() {
            return Ok(());
        }
        overwrite(&self.path.join("init"), format!("{:31}\n", "").as_bytes())
    }

    /// Writes the record over the one this directory holds, in place: only for a directory
    /// nobody else reads (a spare being taken).
    pub fn overwrite_record(&self, record: &Record) -> Result<()> {
        overwrite(
            &self.path.join("container.json"),
            &serde_json::to_vec(record)?,
        )
    }

    pub fn write(&self, record: &Record) -> Result<()> {
        let tmp = self.path.join("container.json.tmp");
        fs_err::write(&tmp, serde_json::to_vec(record)?)?;
        fs_err::rename(&tmp, self.path.join("container.json"))?;
        Ok(())
    }
}

fn read_init(dir: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(dir.join("init")).ok()?;
    let mut fields = text.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Replaces `path`'s content in place (made if missing): an existing file keeps its inode and
/// disk block, written over from the start and cut to length only when it was longer (a
/// truncate is an inode update even to the same length, and `init` never changes length).
fn overwrite(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(bytes)?;
    if file.metadata()?.len() > bytes.len() as u64 {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(())
}

/// Start time of `pid` (clock ticks since boot), `None` when it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Digests of the cached layers that existing containers stack (running or kept), read from
/// every `container.json`, so that `prune` and `rmi` leave them alone.
pub fn layers_in_use() -> Result<std::collections::HashSet<String>> {
    let mut digests = std::collections::HashSet::new();
    for (_, record) in records()? {
        // A cached layer tree is `.../layers/sha256/<hex>/tree`.
        for tree in record.layers {
            if let Some(hex) = tree.parent().and_then(Path::file_name) {
                digests.insert(format!("sha256:{}", hex.to_string_lossy()));
            }
        }
    }
    Ok(digests)
}

/// A container as `eskrun ps` lists it.
pub struct Container {
    pub name: String,
    pub running: bool,
    pub image: Option<String>,
}

/// Every container, sorted by name. One runs when the init it records is still that very
/// process and an eskrun holds its lock; any other is stopped (one whose eskrun was killed is
/// cleaned up by the next `run`, `rm` or `down`).
pub fn list() -> Result<Vec<Container>> {
    let mut list: Vec<Container> = records()?
        .into_iter()
        .map(|(path, record)| Container {
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            running: read_init(&path)
                .is_some_and(|(pid, started)| start_time(pid) == Some(started))
                // Held by its eskrun; taken here (and dropped at once) only when nobody does.
                && matches!(ContainerDir::lock_existing(&path), Ok(None)),
            image: record.image,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

/// Every container directory with its record; those being created or removed right now
/// (no readable `container.json`) are left out.
fn records() -> Result<Vec<(PathBuf, Record)>> {
    let dir = super::containers_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let file = path.join("container.json");
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let record = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", file.display()))?;
        records.push((path, record));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_keeps_the_inode_and_cuts_to_length() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("container.json");
        overwrite(&f, b"a longer first record").unwrap();
        let ino = std::fs::metadata(&f).unwrap().ino();
        overwrite(&f, b"shorter").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"shorter");
        overwrite(&f, b"longer again").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"longer again");
        assert_eq!(std::fs::metadata(&f).unwrap().ino(), ino);
    }
}
