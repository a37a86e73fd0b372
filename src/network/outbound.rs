//! Outbound connections for a container with its own network namespace, through slirp4netns.
//!
//! slirp4netns adds a `tap0` interface to the namespace (10.0.2.100/24, gateway 10.0.2.2, DNS
//! 10.0.2.3) and turns the container's packets into ordinary sockets of its own process on the
//! host. It needs `/dev/net/tun`, which many hosts keep root-only: then the container has no
//! outbound network and the caller says so. The helper is started in eskrun's user namespace
//! (it is uid 0 there, so it has the capabilities to open the namespace by eskrun's fd path)
//! and exits as soon as eskrun does: it watches a pipe whose only writer is eskrun.

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

/// The DNS server slirp4netns answers on inside the namespace.
pub const SLIRP_DNS: &str = "10.0.2.3";

/// A running slirp4netns for one container; stopped when dropped.
pub struct Outbound {
    child: Child,
    /// slirp4netns exits when this, the only write end of its `--exit-fd` pipe, closes.
    exit: Option<OwnedFd>,
}

/// Gives `netns` outbound connectivity through slirp4netns, or says in a few words why it
/// cannot (for the caller's one-line notice). Call it before the container starts and while
/// eskrun is single-threaded (it forks).
pub fn start(netns: BorrowedFd) -> Result<Outbound, String> {
    let Some(slirp) = find_in_path("slirp4netns") else {
        return Err("slirp4netns is not installed".into());
    };
    // What slirp4netns opens first; checking it here turns its failure into a clear reason.
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Err(format!("slirp4netns cannot open /dev/net/tun ({e})"));
    }
    let pipes = || pipe2(OFlag::empty()).map_err(|e| format!("pipe: {e}"));
    // The child ends are inherited (no close-on-exec) and closed here right after the spawn;
    // eskrun's ends are close-on-exec.
    let (exit_read, exit_write) = pipes()?;
    let (ready_read, ready_write) = pipes()?;
    for fd in [&exit_write, &ready_read] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| format!("pipe: {e}"))?;
    }
    let child = Command::new(slirp)
        .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--exit-fd={}", exit_read.as_raw_fd()))
        .arg(format!("--ready-fd={}", ready_write.as_raw_fd()))
        .args(["--netns-type=path"])
        .arg(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            netns.as_raw_fd()
        ))
        .arg("tap0")
        // Out of the terminal's process group: Ctrl-C is for the container, relayed by eskrun.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its messages would interleave with the container's output.
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run slirp4netns: {e}"))?;
    drop((exit_read, ready_write));
    let mut outbound = Outbound {
        child,
        exit: Some(exit_write),
    };
    // It writes "1" once tap0 is configured, or exits (closing the pipe) on failure.
    let mut ready = [0u8; 1];
    let n = std::fs::File::from(ready_read)
        .read(&mut ready)
        .unwrap_or(0);
    if n == 1 {
        return Ok(outbound);
    }
    drop(outbound.exit.take());
    let status = outbound.child.wait().map_err(|e| e.to_string())?;
    Err(format!(
        "slirp4netns ended ({status}) before configuring the network"
    ))
}

impl Drop for Outbound {
    fn drop(&mut self) {
        drop(self.exit.take());
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
