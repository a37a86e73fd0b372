//! Clean-up of containers left by an eskrun that was killed: their init is killed (only if it
//! is still the very process that eskrun started), their cgroups removed, and `--rm`
//! containers removed. Runs at the start of every `run`, in two halves: the kill from the
//! host side (a process of another user namespace can only be reached from its parent), the
//! rest inside eskrun's namespaces (the writable layer may hold files of subordinate ids).
//! libcontainer's own state needs nothing: it lived on the dead eskrun's tmpfs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::record::{start_time, ContainerDir, Record};

/// A stale container, locked by this process, its init already killed.
pub struct Stale {
    dir: ContainerDir,
    record: Record,
}

/// Finds containers whose eskrun died and kills what they left running.
pub fn find_and_kill(containers: &Path) -> Vec<Stale> {
    let Ok(entries) = std::fs::read_dir(containers) else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let Ok(Some(dir)) = ContainerDir::lock_existing(&entry.path()) else {
            continue;
        };
        let Ok(Some(record)) = dir.read() else {
            continue;
        };
        if let Some((pid, started)) = dir.init() {
            kill_if_same(pid, started);
        }
        stale.push(Stale { dir, record });
    }
    stale
}

/// Removes the cgroups of each stale container, and the container itself when it was `--rm`.
pub fn finish(stale: Vec<Stale>) {
    for Stale { dir, record } in stale {
        remove_cgroups(&record.id);
        tracing::info!(
            "cleaned up container {} left by an eskrun that was killed",
            dir.path.display()
        );
        if record.remove {
            if let Err(e) = fs_err::remove_dir_all(&dir.path) {
                tracing::warn!("{e}");
            }
        } else {
            let _ = dir.clear_init();
        }
    }
}

/// SIGKILLs `pid` if it still has start time `started`, then waits until it is gone. A pidfd
/// pins the process, so the check and the kill are about the same one.
fn kill_if_same(pid: i32, started: u64) {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the fd was just created for us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if start_time(pid) != Some(started) {
        return;
    }
    if send_kill(&pidfd).is_err() {
        // It runs as a subordinate id: only from inside its user namespace can we signal it.
        kill_from_its_userns(pid, &pidfd);
    }
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&pidfd),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16));
}

/// Removes the cgroups libcontainer made for container `id` (`/eskrun/<id>` under the v2
/// mount or under each v1 controller; none when it could make none). The killed init can
/// stay a zombie in its v1 cgroup for a moment, until whoever inherited it reaps it: rmdir
/// fails with EBUSY until then. rmdir only ever removes empty cgroups.
fn remove_cgroups(id: &str) {
    let mut dirs = vec![Path::new("/sys/fs/cgroup/eskrun").join(id)];
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(
            controllers
                .flatten()
                .map(|c| c.path().join("eskrun").join(id)),
        );
    }
    // One second for all of them: an empty cgroup left behind is harmless.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    for dir in dirs {
        while let Err(e) = std::fs::remove_dir(&dir) {
            if e.raw_os_error() != Some(nix::libc::EBUSY) || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn send_kill(pidfd: &OwnedFd) -> nix::Result<()> {
    // SAFETY: plain syscall on a valid pidfd.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            nix::libc::SIGKILL,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

fn kill_from_its_userns(pid: i32, pidfd: &OwnedFd) {
    let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/user")) else {
        return;
    };
    // SAFETY: eskrun is single-threaded here; the child only makes syscalls and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let ok = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUSER).is_ok()
                && send_kill(pidfd).is_ok();
            // SAFETY: leave without running the parent's destructors.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(_) => {}
    }
}
