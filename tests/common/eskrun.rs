//! Running the real `eskrun` binary in tests: each [`Eskrun`] has its own cache, config, Docker
//! config and home directory in a temporary directory, so tests never read or write the
//! machine's, and can run as the current user or as an unprivileged user created for the
//! tests (through `setpriv`, with a clean environment).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// Far longer than any run of eskrun in the tests takes, even on a loaded machine.
pub const HANG: Duration = Duration::from_secs(120);

/// The unprivileged user rootless pulls run as (created if missing).
pub const TEST_USER: &str = "eskrun-pull";

/// What one run of eskrun gave.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless eskrun exited with 0.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "eskrun failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Checks that eskrun failed with exactly one line on stderr, and returns that line.
    #[track_caller]
    pub fn one_line_error(&self) -> String {
        assert!(
            matches!(self.code, Some(code) if code != 0),
            "eskrun should have failed: {self:?}"
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr expected: {self:?}");
        assert!(lines[0].starts_with("eskrun: "), "{self:?}");
        lines[0].to_string()
    }
}

/// A private eskrun environment.
pub struct Eskrun {
    dir: tempfile::TempDir,
    /// `Some((uid, gid))` when eskrun runs as the unprivileged test user.
    user: Option<(u32, u32)>,
    bin: PathBuf,
}

impl Eskrun {
    /// Runs eskrun as the current user.
    pub fn new() -> Eskrun {
        let dir = tempfile::Builder::new()
            .prefix("eskrun-cli-")
            .tempdir()
            .expect("temp dir");
        Eskrun {
            dir,
            user: None,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_eskrun")),
        }
    }

    /// Runs eskrun as [`TEST_USER`], whose directories it owns. Only root may do this.
    pub fn as_test_user() -> Eskrun {
        let (uid, gid) = test_user();
        let mut eskrun = Eskrun::new();
        let top = eskrun.dir.path();
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !reachable_by_others(&eskrun.bin) {
            let copy = top.join("eskrun");
            std::fs::copy(&eskrun.bin, &copy).expect("copy the eskrun binary");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            eskrun.bin = copy;
        }
        for sub in ["cache", "config", "docker", "home"] {
            let path = top.join(sub);
            std::fs::create_dir_all(&path).unwrap();
            nix::unistd::chown(&path, Some(uid.into()), Some(gid.into())).unwrap();
        }
        eskrun.user = Some((uid, gid));
        eskrun
    }

    pub fn user(&self) -> Option<(u32, u32)> {
        self.user
    }

    /// `$ESKRUN_CACHE`.
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The cache's current layout, where everything lives.
    pub fn store(&self) -> PathBuf {
        self.cache().join("v1")
    }

    /// `$ESKRUN_CONFIG` (`certs.d/` goes here).
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// `$DOCKER_CONFIG`: where `eskrun login` stores credentials.
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// The layer directory of a layer digest in the cache.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.store()
            .join("layers/sha256")
            .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
    }

    /// A command running eskrun with `args` in this environment, nothing inherited from the
    /// caller's but `PATH`.
    pub fn command(&self, args: &[&str]) -> Command {
        let env = [
            ("ESKRUN_CACHE", self.cache()),
            ("ESKRUN_CONFIG", self.config()),
            ("DOCKER_CONFIG", self.docker_config()),
            ("HOME", self.dir.path().join("home")),
        ];
        let mut command = match self.user {
            None => {
                let mut command = Command::new(&self.bin);
                command.env_clear().envs(env);
                command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
                command
            }
            Some((uid, gid)) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "--reset-env", "--", "env"])
                    .args(env.iter().map(|(k, v)| format!("{k}={}", v.display())))
                    .arg(&self.bin);
                command
            }
        };
        command.args(args).stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Eskrun::wait(self.spawn(args))
    }

    /// Runs eskrun with `input` on its standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eskrun");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Eskrun::wait(child)
    }

    /// Starts eskrun without waiting for it, its output captured.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eskrun")
    }

    /// Collects a child started by [`Eskrun::spawn`]. A run that hangs (a deadlock is a
    /// bug these tests look for) is killed after [`HANG`], so the test fails instead of
    /// hanging too: the run then has no exit code.
    pub fn wait(child: Child) -> Run {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (finished, watch) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(HANG) == Err(RecvTimeoutError::Timeout) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
        let output = child.wait_with_output().unwrap();
        drop(finished);
        watchdog.join().unwrap();
        Run::from_output(output)
    }
}

/// What a snapshot records of a path: inode, mtime (s, ns), mode, size.
pub type Stamp = (u64, i64, i64, u32, u64);

/// What a tree holds, for "nothing was written" checks: every path below `root` and its
/// [`Stamp`].
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Stamp> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        found.insert(
            path.strip_prefix(root).unwrap().to_path_buf(),
            (
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.mode(),
                meta.size(),
            ),
        );
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

/// The names in a directory, sorted; none when it does not exist.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether any user may execute `bin`: every directory above it searchable by others and the
/// file readable and executable by them.
fn reachable_by_others(bin: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.mode()).unwrap_or(0);
    mode(bin) & 0o005 == 0o005 && bin.ancestors().skip(1).all(|dir| mode(dir) & 0o001 != 0)
}

/// Creates [`TEST_USER`] if it does not exist; returns its uid and gid.
pub fn test_user() -> (u32, u32) {
    super::users::ensure_ids(TEST_USER)
}
