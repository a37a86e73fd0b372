//! Entering the container's network namespace, one thread at a time.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

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
