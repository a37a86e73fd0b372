//! Docker's `-p` syntax and the image's `ExposedPorts` turned into [`PortMapping`]s.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::NetworkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One published port: the host listens on `host_ip:host_port` (all IPv4 addresses when
/// `host_ip` is `None`, as `docker run -p` does) and forwards to the container's
/// `127.0.0.1:container_port`. A `host_port` of 0 lets the kernel choose; see
/// [`super::Forwarder::published`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// Whether sharing the host's network honours this mapping: only when the container's
    /// port is the host's and it listens on every address (the container's server decides
    /// where it listens, so a loopback-only `HOST_IP` needs eskrun's forwarder).
    pub fn host_network_can_publish(&self) -> bool {
        self.host_port == self.container_port && self.host_ip.is_none_or(|ip| ip.is_unspecified())
    }

    /// The host address to listen on.
    pub fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.host_port,
        )
    }
}

/// Docker's notation, e.g. `0.0.0.0:8888->8888/tcp`.
impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{}/{}",
            self.host_addr(),
            self.container_port,
            self.protocol
        )
    }
}

/// Parses one `-p` value: `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]`, where each port may
/// be a range `8000-8002` (host and container ranges of equal length) and an IPv6 host address
/// is written in brackets (`[::1]:8080:80`).
///
/// Unlike Docker, a missing host port (`-p 8888`, `-p 127.0.0.1::8888`) means the same port as
/// the container's rather than a random one: the user of a notebook expects to find it at the
/// port it prints.
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, NetworkError> {
    let bad = |reason: String| NetworkError::BadPublish {
        spec: spec.to_string(),
        reason,
    };
    let (addr_ports, protocol) = match spec.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Protocol::Tcp),
        Some((rest, "udp")) => (rest, Protocol::Udp),
        Some((_, other)) => {
            return Err(bad(format!("unknown protocol \"{other}\", use tcp or udp")))
        }
        None => (spec, Protocol::Tcp),
    };
    let (host_ip, ports) = split_host_ip(addr_ports).map_err(bad)?;
    let (host, container) = match ports.split_once(':') {
        Some((host, container)) => (Some(host).filter(|h| !h.is_empty()), container),
        None => (None, ports),
    };
    let container = parse_range(container).map_err(bad)?;
    let host = match host {
        Some(host) => parse_range(host).map_err(bad)?,
        None => container,
    };
    if host.1 - host.0 != container.1 - container.0 {
        return Err(bad(format!(
            "the host range has {} ports but the container range has {}",
            host.1 - host.0 + 1,
            container.1 - container.0 + 1
        )));
    }
    Ok((host.0..=host.1)
        .zip(container.0..=container.1)
        .map(|(host_port, container_port)| PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
        .collect())
}

/// For `-P`: the image config's `ExposedPorts` keys (`8888/tcp`, `53/udp`, `8888`) published on
/// the same host ports, on all addresses.
pub fn exposed_to_mappings(exposed: &[String]) -> Result<Vec<PortMapping>, NetworkError> {
    let mut mappings = Vec::new();
    for key in exposed {
        // A key is a container port (or range) and a protocol, never an address.
        if key.contains(':') {
            return Err(NetworkError::BadExposed {
                key: key.clone(),
                reason: "expected PORT[/tcp|/udp]".to_string(),
            });
        }
        mappings.extend(parse_publish(key).map_err(|e| match e {
            NetworkError::BadPublish { reason, .. } => NetworkError::BadExposed {
                key: key.clone(),
                reason,
            },
            other => other,
        })?);
    }
    Ok(mappings)
}

/// `-p` mappings plus those of `exposed` (image `ExposedPorts` keys, for `-P` and `eskrun up`)
/// whose container port and protocol no `-p` publishes already: `-p 8889:8888` replaces the
/// image's `8888/tcp` rather than publishing it twice.
pub fn with_exposed(
    mut publish: Vec<PortMapping>,
    exposed: &[String],
) -> Result<Vec<PortMapping>, NetworkError> {
    for e in exposed_to_mappings(exposed)? {
        let published = publish
            .iter()
            .any(|p| (p.container_port, p.protocol) == (e.container_port, e.protocol));
        if !published {
            publish.push(e);
        }
    }
    Ok(publish)
}

/// Splits an optional leading host address from the port part.
fn split_host_ip(s: &str) -> Result<(Option<IpAddr>, &str), String> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (ip, rest) = bracketed
            .split_once(']')
            .ok_or("missing \"]\" after the IPv6 address")?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("\"{ip}\" is not an IPv6 address"))?;
        let ports = rest
            .strip_prefix(':')
            .ok_or("expected \":\" after the host address")?;
        return Ok((Some(IpAddr::V6(ip)), ports));
    }
    match s.matches(':').count() {
        0 | 1 => Ok((None, s)),
        2 => {
            let (ip, ports) = s.split_once(':').expect("two colons");
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("\"{ip}\" is not an IPv4 address"))?;
            Ok((Some(IpAddr::V4(ip)), ports))
        }
        _ => Err("an IPv6 host address must be written in brackets, e.g. [::1]:8080:80".into()),
    }
}

/// `8000` or `8000-8002`, as an inclusive range of non-zero ports.
fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be published".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("\"{p}\" is not a port number (1-65535)")),
    };
    match s.split_once('-') {
        Some((start, end)) => {
            let (start, end) = (port(start)?, port(end)?);
            if start > end {
                return Err(format!("the range {s} is reversed"));
            }
            Ok((start, end))
        }
        None => port(s).map(|p| (p, p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host_ip: Option<IpAddr>, host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn docker_forms() {
        let lo = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(parse_publish("8888:8888").unwrap(), [tcp(None, 8888, 8888)]);
        assert_eq!(
            parse_publish("8889:8888/tcp").unwrap(),
            [tcp(None, 8889, 8888)]
        );
        assert_eq!(parse_publish("8888").unwrap(), [tcp(None, 8888, 8888)]);
        assert_eq!(
            parse_publish("127.0.0.1:80:8080").unwrap(),
            [tcp(lo, 80, 8080)]
        );
        assert_eq!(parse_publish("127.0.0.1::53").unwrap(), [tcp(lo, 53, 53)]);
        let v6 = parse_publish("[::1]:8080:80/udp").unwrap();
        assert_eq!(v6[0].host_ip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(v6[0].protocol, Protocol::Udp);
        assert_eq!(v6[0].to_string(), "[::1]:8080->80/udp");
        assert_eq!(
            parse_publish("9000-9002:8000-8002").unwrap(),
            [
                tcp(None, 9000, 8000),
                tcp(None, 9001, 8001),
                tcp(None, 9002, 8002)
            ]
        );
        assert_eq!(parse_publish("7000-7001").unwrap().len(), 2);
    }

    #[test]
    fn bad_input_is_one_line_naming_the_problem() {
        for (spec, needle) in [
            ("", "is not a port number"),
            ("abc", "\"abc\" is not a port number"),
            ("8888:0", "port 0"),
            ("70000:80", "\"70000\" is not a port number"),
            ("80/sctp", "unknown protocol \"sctp\""),
            ("1.2.3:80:80", "not an IPv4 address"),
            ("::1:80:80", "must be written in brackets"),
            ("[::1:80:80", "missing \"]\""),
            ("9000-9001:80", "2 ports but the container range has 1"),
            ("9002-9000:9002-9000", "reversed"),
        ] {
            let message = parse_publish(spec).unwrap_err().to_string();
            assert!(message.contains(needle), "{spec:?}: {message}");
            assert!(message.contains(&format!("\"{spec}\"")), "{message}");
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn what_the_host_network_honours() {
        let can = |s: &str| parse_publish(s).unwrap()[0].host_network_can_publish();
        assert!(can("8888:8888") && can("0.0.0.0:8888:8888/udp") && can("[::]:80:80"));
        assert!(!can("8889:8888") && !can("127.0.0.1:8888:8888") && !can("[::1]:80:80"));
    }

    #[test]
    fn exposed_ports() {
        let keys = ["8888/tcp", "53/udp", "9000"].map(String::from);
        let mappings = exposed_to_mappings(&keys).unwrap();
        assert_eq!(mappings[0], tcp(None, 8888, 8888));
        assert_eq!(mappings[1].protocol, Protocol::Udp);
        assert_eq!(mappings[2], tcp(None, 9000, 9000));
        let err = exposed_to_mappings(&["1.2.3.4:80:80/tcp".into()]).unwrap_err();
        assert!(err.to_string().contains("exposed port"), "{err}");
        let published = with_exposed(parse_publish("8889:8888").unwrap(), &keys).unwrap();
        assert_eq!(
            published,
            [tcp(None, 8889, 8888), mappings[1], mappings[2]],
            "a -p for 8888/tcp replaces the exposed one"
        );
        let err = exposed_to_mappings(&["http/tcp".into()]).unwrap_err();
        assert!(err.to_string().contains("\"http/tcp\""), "{err}");
    }
}
