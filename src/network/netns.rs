//! Entering the container's network namespace, one thread at a time.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::libc;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;

use super::NetworkError;

/// Moves the calling thread (only it: network namespaces are per thread) into `netns`.
pub(crate) fn enter(netns: BorrowedFd) -> Result<(), NetworkError> {
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(NetworkError::EnterNetns)
}

/// Sets `lo` up in `netns` (a new network namespace starts with it down, and the container's
/// process may lack CAP_NET_ADMIN to do it). Call it after the container is created and before
/// its process runs. The work is done by one short-lived thread, joined before this returns:
/// rootless, a thread that entered the container's namespace can never go back to the host's
/// (owned by the initial user namespace), so the caller's thread must not make the trip.
pub fn bring_loopback_up(netns: BorrowedFd) -> Result<(), NetworkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(netns)?;
                set_loopback_up().map_err(NetworkError::Loopback)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Creates a new network namespace with `lo` up and returns it as an fd, for a container to
/// join (e.g. an OCI `network` namespace with path `/proc/self/fd/N`, inherited by an init that
/// is cloned without exec) and for [`crate::network::Forwarder::serve`]. This avoids opening
/// the container's `/proc/PID/ns/net` before it execs, which is refused while it is
/// non-dumpable. The namespace belongs to the caller's user namespace: rootless, call it after
/// entering eskrun's own. Like [`bring_loopback_up`] it uses one short-lived, joined thread
/// (unshare(CLONE_NEWNET) affects only the calling thread, which cannot come back rootless).
pub fn create_netns() -> Result<OwnedFd, NetworkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(NetworkError::CreateNetns)?;
                set_loopback_up().map_err(NetworkError::Loopback)?;
                let fd = open(
                    "/proc/thread-self/ns/net",
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(NetworkError::CreateNetns)?;
                // SAFETY: `open` returned a new fd that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// SIOCSIFFLAGS on a socket of the calling thread's network namespace.
fn set_loopback_up() -> nix::Result<()> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: all-zero is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming "lo", as SIOC[GS]IFFLAGS expect.
    Errno::result(unsafe {
        libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request)
    })?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, with the flags to set.
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) })?;
    Ok(())
}
