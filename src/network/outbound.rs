//! Outbound connections for a container with its own network namespace, through pasta or
//! slirp4netns.
//!
//! Either adds a `tap0` interface to the namespace (10.0.2.100/24, gateway 10.0.2.2, DNS
//! 10.0.2.3) and turns the container's packets into ordinary sockets of its own process on the
//! host. pasta is tried first: it keeps no TCP stack of its own (each connection is mirrored
//! onto a host socket) and is what podman moved to. It is given slirp4netns' addresses, so the
//! container sees the same network whichever runs, the host's own addresses are not the
//! container's (pasta's default copies them, and the container could then not reach a server
//! on the host's address), and the gateway does not lead to the host's loopback (slirp4netns'
//! `--disable-host-loopback`, pasta's `--no-map-gw`). Both need `/dev/net/tun`, which many
//! hosts keep root-only: then the container has no outbound network and the caller says so.
//!
//! The helper runs in eskrun's user namespace (it is uid 0 there, with the capabilities to
//! enter the namespace) and never outlives eskrun: slirp4netns watches a pipe whose only writer
//! is eskrun, pasta (which has no such option) gets SIGKILL when eskrun dies.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::unistd::pipe2;

/// The DNS server the container is given: the helper forwards it to the host's resolver.
pub const DNS: &str = "10.0.2.3";

/// A running pasta or slirp4netns for one container; stopped when dropped.
pub struct Outbound {
    child: Child,
    helper: &'static str,
    /// slirp4netns exits when this, the only write end of its `--exit-fd` pipe, closes; pasta,
    /// without one, is killed.
    exit: Option<OwnedFd>,
}

impl Outbound {
    /// "pasta" or "slirp4netns", for the user.
    pub fn helper(&self) -> &'static str {
        self.helper
    }
}

/// Gives `netns` outbound connectivity through pasta, else slirp4netns, or says in a few words
/// why neither can (for the caller's one-line notice). `real_root`: eskrun runs as root of the
/// host, not in a user namespace of its own. Call it before the container starts, while eskrun
/// is single-threaded (it forks), from the thread that lives as long as eskrun (pasta is
/// killed when the thread that started it ends).
pub fn start(netns: BorrowedFd, real_root: bool) -> Result<Outbound, String> {
    let pasta = find_in_path("pasta");
    let slirp = find_in_path("slirp4netns");
    let names = match (&pasta, &slirp) {
        (None, None) => return Err("neither pasta nor slirp4netns is installed".into()),
        (Some(_), None) => "pasta",
        (None, Some(_)) => "slirp4netns",
        (Some(_), Some(_)) => "pasta and slirp4netns",
    };
    // What both open first; checking it here turns their failure into a clear reason.
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Err(format!("{names} cannot open /dev/net/tun ({e})"));
    }
    let mut failures = Vec::new();
    if let Some(pasta) = pasta {
        match start_pasta(&pasta, netns, real_root) {
            Ok(outbound) => return Ok(outbound),
            Err(e) => failures.push(e),
        }
    }
    if let Some(slirp) = slirp {
        match start_slirp(&slirp, netns) {
            Ok(outbound) => return Ok(outbound),
            Err(e) => failures.push(e),
        }
    }
    Err(failures.join("; "))
}

fn start_pasta(pasta: &Path, netns: BorrowedFd, real_root: bool) -> Result<Outbound, String> {
    // pasta opens the namespace and its pid file by these fds of its own: by eskrun's, as root,
    // it would be refused (pasta has dropped the capabilities eskrun holds).
    let netns = inherited(
        netns
            .try_clone_to_owned()
            .map_err(|e| format!("dup: {e}"))?,
    )?;
    let (ready_read, ready_write) = pipe()?;
    let ready_write = inherited(ready_write)?;
    let mut command = Command::new(pasta);
    command.args([
        "--foreground",
        "--quiet",
        "--config-net",
        "--ns-ifname",
        "tap0",
        "--address",
        "10.0.2.100",
        "--netmask",
        "24",
        "--gateway",
        "10.0.2.2",
        "--dns-forward",
        DNS,
        "--no-map-gw",
        // slirp4netns' network has no IPv6 either; pasta would give the host's own address.
        "--ipv4-only",
        // eskrun publishes ports itself.
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
    ]);
    if real_root {
        // As root pasta would switch to nobody, who may not enter root's namespace (and a uid
        // change would clear the parent-death signal); it still drops its capabilities.
        command.args(["--runas", "0:0"]);
    }
    // Written once the interface is configured: eskrun's signal that the network is ready.
    command.arg("--pid").arg(fd_path(&ready_write));
    command.arg("--netns").arg(fd_path(&netns));
    let parent = std::process::id();
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // eskrun may have died before the line above took effect.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    launch(command, "pasta", [netns, ready_write], None, ready_read)
}

fn start_slirp(slirp: &Path, netns: BorrowedFd) -> Result<Outbound, String> {
    let (exit_read, exit_write) = pipe()?;
    let (ready_read, ready_write) = pipe()?;
    let (exit_read, ready_write) = (inherited(exit_read)?, inherited(ready_write)?);
    let mut command = Command::new(slirp);
    command
        .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--exit-fd={}", exit_read.as_raw_fd()))
        .arg(format!("--ready-fd={}", ready_write.as_raw_fd()))
        .args(["--netns-type=path"])
        .arg(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            netns.as_raw_fd()
        ))
        .arg("tap0");
    launch(
        command,
        "slirp4netns",
        [exit_read, ready_write],
        Some(exit_write),
        ready_read,
    )
}

/// Starts the helper out of the terminal's process group (Ctrl-C is for the container, relayed
/// by eskrun) and silent (its messages would interleave with the container's output), closes
/// eskrun's copies of the fds it `inherits`, and waits until it is ready.
fn launch(
    mut command: Command,
    helper: &'static str,
    inherits: [OwnedFd; 2],
    exit: Option<OwnedFd>,
    ready_read: OwnedFd,
) -> Result<Outbound, String> {
    let child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {helper}: {e}"))?;
    drop(inherits);
    ready(
        Outbound {
            child,
            helper,
            exit,
        },
        ready_read,
    )
}

/// Waits for the helper to write to `ready` once the interface is configured; it closes the
/// pipe by exiting when it fails.
fn ready(mut outbound: Outbound, ready: OwnedFd) -> Result<Outbound, String> {
    let mut byte = [0u8; 1];
    if std::fs::File::from(ready).read(&mut byte).unwrap_or(0) == 1 {
        return Ok(outbound);
    }
    drop(outbound.exit.take());
    let status = outbound.child.wait().map_err(|e| e.to_string())?;
    Err(format!(
        "{} ended ({status}) before configuring the network",
        outbound.helper
    ))
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.exit.take().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A pipe whose ends are close-on-exec; [`inherited`] makes the helper's end its own.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// `fd` made inheritable by the helper; eskrun closes its copy right after the spawn.
fn inherited(fd: OwnedFd) -> Result<OwnedFd, String> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| format!("fcntl: {e}"))?;
    Ok(fd)
}

/// How the helper names an fd it inherited.
fn fd_path(fd: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
