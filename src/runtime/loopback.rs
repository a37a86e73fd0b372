//! A new network namespace comes with `lo` down, and the container has no CAP_NET_ADMIN to
//! bring it up. Its namespace can't be entered from outside before it execs (its /proc entries
//! are root-only), so eskrun creates the namespace itself, brings `lo` up there, and the
//! container shares it.

use anyhow::{bail, Result};
use nix::libc;

/// Brings up `lo` in eskrun's (new) network namespace, which the container shares.
pub fn bring_up() -> Result<()> {
    if !set_lo_up() {
        bail!(
            "could not bring up the loopback interface of the container's network: {}",
            nix::errno::Errno::last()
        );
    }
    Ok(())
}

fn set_lo_up() -> bool {
    // SAFETY: a plain socket and two ioctls on a zeroed ifreq naming "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0
        };
        libc::close(sock);
        ok
    }
}
