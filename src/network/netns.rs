//! Entering the container's network namespace, one thread at a time.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::libc;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;

use super::NetworkError;

/// Moves the calling thread (only it: network namespaces are per thread) into `netns`.
pub(crate) fn enter(netns: BorrowedFd) -> Result<(), NetworkError> {
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(NetworkError::EnterNetns)
}

/// Sets `lo` up in `netns` (a new network namespace starts with it down, and the container's
/// process may lack CAP_NET_ADMIN to do it). Call it after the container is created and before
/// its process runs. It starts no thread: the calling thread visits the namespace just long
/// enough to open a socket there, which keeps its namespace for the `ioctl`.
pub fn bring_loopback_up(netns: BorrowedFd) -> Result<(), NetworkError> {
    let socket = socket_in(netns)?;
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming "lo", as SIOC[GS]IFFLAGS expect.
    Errno::result(unsafe {
        libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request)
    })
    .map_err(NetworkError::Loopback)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    Errno::result(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) })
        .map_err(NetworkError::Loopback)?;
    Ok(())
}

/// A datagram socket living in `netns`, made by a short visit of the calling thread.
fn socket_in(netns: BorrowedFd) -> Result<OwnedFd, NetworkError> {
    let home = open(
        "/proc/thread-self/ns/net",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(NetworkError::EnterNetns)?;
    // SAFETY: `open` returned a new fd that nothing else owns.
    let home = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(home) };
    enter(netns)?;
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    );
    // Go home whatever happened: the caller's thread must not stay in the container's network.
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(NetworkError::EnterNetns)?;
    socket.map_err(NetworkError::Loopback)
}
