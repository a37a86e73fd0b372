//! Which process holds a busy port, so that the error can name it.
//!
//! The kernel lists the sockets of the caller's network namespace in `/proc/net/{tcp,udp}{,6}`
//! with their inode; the owning process is the one with an fd linking to `socket:[INODE]`.
//! Only processes we may read are found; the caller says "another process" otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Protocol;

/// `process PID (COMM)` of a process holding a socket bound to `addr` (a wildcard address on
/// either side counts as a match), if /proc tells.
pub(crate) fn find_holder(addr: SocketAddr, protocol: Protocol) -> Option<String> {
    let inodes = socket_inodes(addr, protocol);
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|link| targets.iter().any(|t| link.as_os_str() == t.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("process {pid} ({})", comm.trim_end()));
        }
    }
    None
}

/// Inodes of the sockets that conflict with binding `addr`: listening TCP sockets, or bound
/// UDP sockets, on the same port and an overlapping address.
fn socket_inodes(addr: SocketAddr, protocol: Protocol) -> Vec<u64> {
    let files: [&str; 2] = match protocol {
        Protocol::Tcp => ["tcp", "tcp6"],
        Protocol::Udp => ["udp", "udp6"],
    };
    let mut inodes = Vec::new();
    for file in files {
        // thread-self: the namespace of the calling thread, which is what a bind would use.
        let Ok(table) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            // 0A is TCP_LISTEN; a UDP socket conflicts in any state.
            if protocol == Protocol::Tcp && *state != "0A" {
                continue;
            }
            let Some((ip, port)) = parse_local(local) else {
                continue;
            };
            let overlaps =
                ip.is_unspecified() || addr.ip().is_unspecified() || same_ip(ip, addr.ip());
            if port == addr.port() && overlaps {
                if let Ok(inode) = inode.parse::<u64>() {
                    inodes.push(inode);
                }
            }
        }
    }
    inodes.retain(|&i| i != 0);
    inodes
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the IPv4 address for a conflict.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6): each 32-bit group is the network-order word
/// printed as a native integer.
fn parse_local(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
            .ok()
            .map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            parse_local("0100007F:1F90"),
            Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 8080))
        );
        assert_eq!(
            parse_local("00000000000000000000000001000000:0035"),
            Some((IpAddr::V6(Ipv6Addr::LOCALHOST), 53))
        );
        assert_eq!(parse_local("junk"), None);
    }

    #[test]
    fn finds_this_process_holding_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let holder = find_holder(addr, Protocol::Tcp).unwrap();
        assert!(
            holder.starts_with(&format!("process {} (", std::process::id())),
            "{holder}"
        );
        let wildcard = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
        assert!(find_holder(wildcard, Protocol::Tcp).is_some());
        drop(listener);
        assert_eq!(find_holder(addr, Protocol::Tcp), None);
    }
}
