//! Port publishing for containers with their own network namespace (`--network private`).
//!
//! Rootless hosts often cannot run slirp4netns or pasta (`/dev/net/tun` is root-only), so eskrun
//! forwards published ports itself: it listens on the host and joins every accepted connection
//! (or UDP client) to a socket connected to `127.0.0.1:CONTAINER_PORT` inside the container's
//! network namespace. Those inner sockets are created by forwarder threads that entered the
//! namespace with `setns(2)`; network namespaces are per thread, so the rest of eskrun stays in
//! the host's namespace.
//!
//! The life cycle follows the runtime's constraints: [`Forwarder::bind`] opens every host
//! listener before the container starts (a busy port is an error up front, naming the process
//! that holds it) without starting any thread, because the runtime must still be single-threaded
//! when it clones the container; [`Forwarder::serve`] starts the threads once the container runs;
//! [`RunningForwarder::stop`] (or dropping it) closes listeners and connections when the
//! container exits. For `--network host`, [`check_free`] gives the same early error.
//!
//! Outbound connections from such a namespace go through pasta or slirp4netns where one can
//! run ([`outbound`]); elsewhere the container has none.
//!
//! A new network namespace has `lo` down: [`create_netns`] makes one with `lo` up for the
//! container to join, or [`bring_loopback_up`] fixes the container's own.

mod forward;
mod holder;
mod netns;
pub mod outbound;
mod publish;

pub use forward::{check_free, Forwarder, RunningForwarder};
pub use netns::{bring_loopback_up, create_netns};
pub use publish::{exposed_to_mappings, parse_publish, with_exposed, PortMapping, Protocol};

use std::net::SocketAddr;

/// Everything that can go wrong while publishing ports; each renders as one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid port mapping \"{spec}\": {reason} (expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp])")]
    BadPublish { spec: String, reason: String },

    #[error("invalid exposed port \"{key}\" in the image config: {reason}")]
    BadExposed { key: String, reason: String },

    #[error("port {port}/{protocol} on {ip} is published twice")]
    Duplicate {
        ip: std::net::IpAddr,
        port: u16,
        protocol: Protocol,
    },

    #[error("port {port}/{protocol} on {ip} is already in use by {holder}: stop it or publish another port (-p {suggestion})", ip = .addr.ip(), port = .addr.port())]
    PortInUse {
        addr: SocketAddr,
        protocol: Protocol,
        /// "process 1234 (python3)" or "another process" when /proc does not tell us.
        holder: String,
        suggestion: String,
    },

    #[error("cannot listen on {addr}/{protocol}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        protocol: Protocol,
        source: std::io::Error,
        hint: &'static str,
    },

    #[error("cannot enter the container's network namespace: {0} (eskrun needs CAP_SYS_ADMIN over it, e.g. by running in the user namespace that owns it)")]
    EnterNetns(#[source] nix::Error),

    #[error(
        "cannot create a network namespace: {0} (eskrun needs CAP_SYS_ADMIN in its user namespace)"
    )]
    CreateNetns(#[source] nix::Error),

    #[error("cannot bring up the loopback interface in the container's network namespace: {0}")]
    Loopback(#[source] nix::Error),

    #[error("cannot start the port forwarder: {0}")]
    Start(#[source] std::io::Error),
}
