//! The container's stdio and eskrun's foreground loop: signals forwarded to the container's
//! init, the exit status turned into eskrun's exit code, and with `-t` a pseudo-terminal whose
//! master eskrun relays to its own terminal (window size kept in sync). With `-i` too, eskrun's
//! terminal is raw and every key, Ctrl-C and Ctrl-D included, goes to the container's terminal
//! as typed. Without `-i` it stays as it is (eskrun reads no input, as Docker's `-t` does), and
//! the Ctrl-C or Ctrl-\ that it turns into a signal for eskrun is typed into the container's
//! terminal instead, so it interrupts what runs there in the foreground as under `-it`.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::termios::{
    cfmakeraw, tcgetattr, tcsetattr, SetArg, SpecialCharacterIndices, Termios,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The stdio fds handed to the container (without `-t`).
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// eskrun's own stdio, passed through unchanged, except that /dev/null as stdout/stderr
/// becomes a write-only /dev/zero: libcontainer would reopen /dev/null read-only, and writes
/// would fail with EBADF. Without `-i` the container's stdin is /dev/null, as in Docker.
pub fn passthrough(interactive: bool) -> Result<Stdio> {
    let stdin = if interactive {
        dup(0)?
    } else {
        fs_err::File::open("/dev/null")?.into_parts().0.into()
    };
    let out = |fd: RawFd| -> Result<OwnedFd> {
        if is_dev_null(fd) {
            Ok(fs_err::OpenOptions::new()
                .write(true)
                .open("/dev/zero")?
                .into_parts()
                .0
                .into())
        } else {
            dup(fd)
        }
    };
    Ok(Stdio {
        stdin,
        stdout: out(1)?,
        stderr: out(2)?,
    })
}

fn dup(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new fd that we own.
    let new = unsafe { nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        bail!(
            "fd {fd} is not open: eskrun needs stdin, stdout and stderr ({})",
            Errno::last()
        );
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn is_dev_null(fd: RawFd) -> bool {
    fstat(fd).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
            && nix::sys::stat::major(st.st_rdev) == 1
            && nix::sys::stat::minor(st.st_rdev) == 3
    })
}

/// The socket on which the container's init sends its pty master (`-t`).
pub struct ConsoleSocket {
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds `dir/console.sock`, through a relative name: socket paths are limited to 108 bytes.
    pub fn bind(dir: &Path) -> Result<(Self, std::path::PathBuf)> {
        let prev = std::env::current_dir().ok();
        std::env::set_current_dir(dir).with_context(|| format!("entering {}", dir.display()))?;
        let _ = std::fs::remove_file("console.sock");
        let bound = UnixListener::bind("console.sock");
        if let Some(prev) = prev {
            let _ = std::env::set_current_dir(prev);
        }
        let listener = bound.context("creating the console socket")?;
        Ok((ConsoleSocket { listener }, dir.join("console.sock")))
    }

    /// Receives the pty master (SCM_RIGHTS).
    pub fn receive(self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .context("waiting for the container's terminal")?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the container's terminal")?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd in our table for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
            }
        }
        bail!("the container did not send its terminal")
    }
}

/// Puts eskrun's terminal in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}

nix::ioctl_read_bad!(get_winsize, nix::libc::TIOCGWINSZ, nix::libc::winsize);
nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, nix::libc::winsize);

/// Copies eskrun's terminal size (stdin, else stdout) to the container's pty. Called before
/// the container starts, so that its first look at the size is right, and on each SIGWINCH.
pub fn sync_winsize(master: BorrowedFd) {
    // SAFETY: all-zero is a valid winsize, which the ioctls fill or read.
    let mut ws: nix::libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: see above; fds 0/1 and the master are plain fds.
    unsafe {
        if get_winsize(0, &mut ws).is_ok() || get_winsize(1, &mut ws).is_ok() {
            let _ = set_winsize(master.as_raw_fd(), &ws);
        }
    }
}

/// The signals eskrun handles itself: blocked from `build()` on (a container that exits at
/// once must not lose its SIGCHLD), read through a signalfd.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Blocks [`handled_signals`]; the container's init, cloned before this, keeps its mask.
pub fn block_signals() -> Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None)
        .context("blocking signals")
}

/// Waits for the container's init, forwarding signals and relaying the terminal. Returns the
/// exit code: the init's, or 128+N when signal N killed it.
pub fn wait(init: Pid, tty: Option<OwnedFd>, relay_stdin: bool) -> Result<i32> {
    let sfd = SignalFd::with_flags(
        &handled_signals(),
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .context("creating a signalfd")?;
    let mut stdin_open = relay_stdin && tty.is_some();
    let mut master_open = tty.is_some();
    let mut status = None;
    let mut buf = vec![0u8; 16384];
    while status.is_none() || master_open {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let master = tty.as_ref().map(|m| m.as_fd());
        let stdin = std::io::stdin();
        if let (Some(m), true) = (master, master_open) {
            fds.push(PollFd::new(m, PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // Once init is gone, only drain what the terminal still holds.
        let timeout = if status.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the container"),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (sig_ready, master_ready, stdin_ready) = (
            ready(0),
            master_open && ready(1),
            stdin_open && ready(if master_open { 2 } else { 1 }),
        );
        drop(fds);
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                let master = tty.as_ref().map(|m| m.as_fd());
                match (sig, master) {
                    (Signal::SIGCHLD, _) => reap(init, &mut status),
                    (Signal::SIGWINCH, Some(m)) => sync_winsize(m),
                    (Signal::SIGINT | Signal::SIGQUIT, Some(m))
                        if info.ssi_code == nix::libc::SI_KERNEL && type_key_of(m, sig) => {}
                    _ if status.is_none() => {
                        let _ = kill(init, sig);
                    }
                    _ => {}
                }
            }
        }
        if let (true, Some(m)) = (master_ready, &tty) {
            match nix::unistd::read(m.as_raw_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => master_open = false,
                Ok(n) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => master_open = false,
            }
        }
        if let (true, Some(m)) = (stdin_ready, &tty) {
            match nix::unistd::read(0, &mut buf) {
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = write_all(m.as_fd(), &buf[..n]);
                }
            }
        }
    }
    Ok(status.unwrap_or(0))
}

/// Types the container terminal's own INTR (for SIGINT) or QUIT character into it: its line
/// discipline then signals the container's foreground process group, as the key does under
/// `-it`. Used for the signals eskrun's own terminal raised (`SI_KERNEL`): a `kill` of eskrun
/// still goes to the init. False when the container's terminal has that character disabled.
fn type_key_of(master: BorrowedFd, sig: Signal) -> bool {
    let index = match sig {
        Signal::SIGINT => SpecialCharacterIndices::VINTR,
        _ => SpecialCharacterIndices::VQUIT,
    };
    tcgetattr(master).is_ok_and(|t| {
        let key = t.control_chars[index as usize];
        key != 0 && write_all(master, &[key]).is_ok()
    })
}

fn reap(init: Pid, status: &mut Option<i32>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => *status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                *status = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn write_all(fd: BorrowedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
