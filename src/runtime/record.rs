//! A container's directory under `state_dir()/containers/<name>/`: its bundle (`config.json`,
//! the `rootfs` mount point, /etc files), its writable layer (`upper`, `work`), `container.json`
//! and `lock`, held by the eskrun that runs it. A container whose lock nobody holds and whose
//! `container.json` exists was left by an eskrun that died.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// What `container.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// libcontainer's id (its state lives under [`libcontainer_root`]).
    pub id: String,
    /// `--rm`: everything goes when the container ends.
    pub remove: bool,
    /// The running init: pid and start time (/proc/PID/stat field 22), so a recycled pid is
    /// never taken for it.
    pub init: Option<(i32, u64)>,
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

    pub fn write(&self, record: &Record) -> Result<()> {
        let tmp = self.path.join("container.json.tmp");
        fs_err::write(&tmp, serde_json::to_vec(record)?)?;
        fs_err::rename(&tmp, self.path.join("container.json"))?;
        Ok(())
    }
}

/// Where libcontainer keeps its state: `$XDG_RUNTIME_DIR/eskrun`, else `/run/eskrun` for
/// root and `/tmp/eskrun-UID` (checked to be ours, mode 0700) for anyone else.
pub fn libcontainer_root() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::getuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("eskrun"),
        None if uid == 0 => PathBuf::from("/run/eskrun"),
        None => PathBuf::from(format!("/tmp/eskrun-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let meta = fs_err::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid {
        bail!(
            "{} is not a directory owned by you: remove it or set XDG_RUNTIME_DIR",
            dir.display()
        );
    }
    Ok(dir)
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
            running: record
                .init
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
