//! The forwarder: host listeners bound before the container starts, served by threads after.
//!
//! TCP: one thread polls every listener; each accepted connection gets a thread (started in
//! the container's network namespace, inherited from the accepting thread) that connects to
//! the container's port, then one thread per direction moves bytes with splice(2) through a
//! pipe, so data never crosses into user space. UDP: one thread polls the host sockets and
//! keeps, per client address, a session socket connected to the container's port; a session
//! thread relays the replies and ends after [`UDP_IDLE`] without traffic.
//! Stopping closes a pipe that every poll loop watches and shuts down every TCP socket.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::socket::{setsockopt, sockopt::TcpCongestion};
use nix::unistd::pipe2;
use tracing::{debug, warn};

use super::holder::find_holder;
use super::netns::enter;
use super::{NetworkError, PortMapping, Protocol};

/// Concurrent TCP connections per forwarder (each costs two threads); more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// Concurrent UDP client addresses per forwarder; datagrams of further clients are dropped.
const MAX_UDP_SESSIONS: usize = 1024;
/// A UDP session without traffic in either direction for this long is closed (Docker's
/// userland proxy uses 90 s).
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Connecting inside the namespace only waits when the container's accept queue is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay threads keep no buffers on their stacks.
const THREAD_STACK: usize = 128 * 1024;
/// Bytes in flight per direction; larger pipes than the default 64 KiB raise throughput.
const PIPE_SIZE: usize = 256 * 1024;
/// Congestion control of the connection inside the container's namespace. It never leaves
/// that namespace's loopback, where BBR (a common host default, which new namespaces inherit)
/// only adds pacing timers: with cubic, bench/forward.sh moves 9-12% more.
const INNER_CONGESTION: &str = "cubic";

/// Host listeners for a set of port mappings, bound but not yet served.
pub struct Forwarder {
    tcp: Vec<(TcpListener, PortMapping)>,
    udp: Vec<(UdpSocket, PortMapping)>,
}

impl Forwarder {
    /// Binds every host listener now, before the container starts, so that a busy port is
    /// an error up front naming the process that holds it. Starts no thread (the runtime
    /// clones the container from a single-threaded process after this). The listeners are
    /// close-on-exec, so the container never inherits them.
    pub fn bind(mappings: &[PortMapping]) -> Result<Forwarder, NetworkError> {
        let mut seen = std::collections::HashSet::new();
        for m in mappings {
            if m.host_port != 0 && !seen.insert((m.host_addr(), m.protocol)) {
                return Err(NetworkError::Duplicate {
                    ip: m.host_addr().ip(),
                    port: m.host_port,
                    protocol: m.protocol,
                });
            }
        }
        let mut forwarder = Forwarder {
            tcp: Vec::new(),
            udp: Vec::new(),
        };
        for m in mappings {
            let addr = m.host_addr();
            // Non-blocking: the serving loops poll, then take whatever is ready.
            match m.protocol {
                Protocol::Tcp => {
                    let listener = TcpListener::bind(addr)
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                        .map_err(|e| listen_error(m, e))?;
                    forwarder.tcp.push((listener, *m));
                }
                Protocol::Udp => {
                    let socket = UdpSocket::bind(addr)
                        .and_then(|s| s.set_nonblocking(true).map(|()| s))
                        .map_err(|e| listen_error(m, e))?;
                    forwarder.udp.push((socket, *m));
                }
            }
        }
        Ok(forwarder)
    }

    /// The mappings as bound (TCP first), a host port 0 replaced by the port the kernel chose.
    pub fn published(&self) -> Vec<PortMapping> {
        let tcp = self.tcp.iter().map(|(l, m)| (l.local_addr(), m));
        let udp = self.udp.iter().map(|(s, m)| (s.local_addr(), m));
        tcp.chain(udp)
            .map(|(addr, m)| PortMapping {
                host_port: addr.map_or(m.host_port, |a| a.port()),
                ..*m
            })
            .collect()
    }

    /// Starts serving once the container runs: connections are forwarded to
    /// `127.0.0.1:CONTAINER_PORT` (then `[::1]`) inside `netns`, an fd of the container's
    /// `/proc/PID/ns/net`. The caller needs CAP_SYS_ADMIN over that namespace (rootless eskrun
    /// has it in its own user namespace). A connection that finds no server in the container is
    /// closed at once.
    pub fn serve(self, netns: OwnedFd) -> Result<RunningForwarder, NetworkError> {
        let (stop_read, stop_write) =
            pipe2(OFlag::O_CLOEXEC).map_err(|e| NetworkError::Start(e.into()))?;
        let shared = Arc::new(Shared {
            netns,
            stop: stop_read,
            stopping: AtomicBool::new(false),
            live: Mutex::new(Live::default()),
            changed: Condvar::new(),
            epoch: Instant::now(),
        });
        let mut running = RunningForwarder {
            stop: Some(stop_write),
            threads: Vec::new(),
            shared: Arc::clone(&shared),
        };
        let (entered_tx, entered_rx) = mpsc::channel();
        let mut spawn = |name: &str, body: Box<dyn FnOnce(Arc<Shared>) + Send>| {
            let shared = Arc::clone(&shared);
            let entered_tx = entered_tx.clone();
            let thread = thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // Signals are the runtime's business (it relays them to the container);
                    // a reset peer must not kill eskrun with SIGPIPE. Threads started from
                    // here inherit both the mask and the network namespace.
                    let _ = SigSet::all().thread_block();
                    let entered = enter(shared.netns.as_fd());
                    let ok = entered.is_ok();
                    let _ = entered_tx.send(entered);
                    // serve() reads until every sender is gone.
                    drop(entered_tx);
                    if ok {
                        body(shared);
                    }
                })
                .map_err(NetworkError::Start)?;
            running.threads.push(thread);
            Ok::<_, NetworkError>(())
        };
        if !self.tcp.is_empty() {
            let listeners = self.tcp;
            spawn(
                "eskrun-fwd-tcp",
                Box::new(move |s| accept_loop(listeners, s)),
            )?;
        }
        if !self.udp.is_empty() {
            let sockets = self.udp;
            spawn("eskrun-fwd-udp", Box::new(move |s| udp_loop(sockets, s)))?;
        }
        drop(entered_tx);
        // Dropping `running` on an error stops whatever did start.
        for entered in entered_rx {
            entered?;
        }
        Ok(running)
    }
}

/// For `--network host`: fails, naming the holder, if any host port of `mappings` is taken.
pub fn check_free(mappings: &[PortMapping]) -> Result<(), NetworkError> {
    Forwarder::bind(mappings).map(drop)
}

fn listen_error(m: &PortMapping, source: io::Error) -> NetworkError {
    let addr = m.host_addr();
    match source.kind() {
        io::ErrorKind::AddrInUse => {
            let other = if m.host_port == u16::MAX {
                m.host_port - 1
            } else {
                m.host_port + 1
            };
            let ip = match m.host_ip {
                Some(ip) if ip.is_ipv6() => format!("[{ip}]:"),
                Some(ip) => format!("{ip}:"),
                None => String::new(),
            };
            let proto = match m.protocol {
                Protocol::Tcp => "",
                Protocol::Udp => "/udp",
            };
            NetworkError::PortInUse {
                addr,
                protocol: m.protocol,
                holder: find_holder(addr, m.protocol)
                    .unwrap_or_else(|| "another process".to_string()),
                suggestion: format!("{ip}{other}:{}{proto}", m.container_port),
            }
        }
        kind => NetworkError::Listen {
            addr,
            protocol: m.protocol,
            source,
            hint: match kind {
                io::ErrorKind::PermissionDenied if m.host_port < 1024 => {
                    "; ports below 1024 need privileges: publish a host port above 1023"
                }
                io::ErrorKind::AddrNotAvailable => "; no interface of this host has that address",
                _ => "",
            },
        },
    }
}

/// The serving threads, until [`RunningForwarder::stop`] or drop.
pub struct RunningForwarder {
    /// Closing it wakes every poll loop.
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RunningForwarder {
    /// Closes the listeners and every forwarded connection and session, and waits for the
    /// threads to end. Dropping the forwarder does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(stop) = self.stop.take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(stop);
        // The loops own the listeners: they are closed once these threads end.
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let mut live = self.shared.lock();
        for sockets in live.tcp.values() {
            for socket in sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        while !(live.tcp.is_empty() && live.udp_threads == 0) {
            live = self
                .shared
                .changed
                .wait(live)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for RunningForwarder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// State shared by the serving threads.
struct Shared {
    netns: OwnedFd,
    /// Read end of the stop pipe: readable (hung up) once stopping.
    stop: OwnedFd,
    stopping: AtomicBool,
    live: Mutex<Live>,
    /// Signalled whenever a connection or session ends.
    changed: Condvar,
    epoch: Instant,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    /// Per TCP connection, its sockets, to shut down on stop.
    tcp: HashMap<u64, Vec<TcpStream>>,
    /// Per (UDP host socket, client address), its session.
    udp: HashMap<(usize, SocketAddr), Arc<Session>>,
    /// Session threads still running; they hold the host sockets until they end.
    udp_threads: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panicking relay thread must not stop the others from cleaning up.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Waits until one of `fds` or the stop pipe is ready; returns the indices of the ready
/// `fds`, or `None` when stopping (or on a poll failure, which ends the loop too).
fn wait_ready(
    fds: &[std::os::fd::BorrowedFd],
    shared: &Shared,
    timeout: PollTimeout,
) -> Option<Vec<usize>> {
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    polled.push(PollFd::new(shared.stop.as_fd(), PollFlags::POLLIN));
    loop {
        match poll(&mut polled, timeout) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!("port forwarder stopped: poll failed: {e}");
                return None;
            }
        }
    }
    let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
    let (stop, fds) = polled.split_last().expect("the stop pipe is polled");
    if ready(stop) {
        return None;
    }
    Some(
        fds.iter()
            .enumerate()
            .filter(|(_, p)| ready(p))
            .map(|(i, _)| i)
            .collect(),
    )
}

fn accept_loop(listeners: Vec<(TcpListener, PortMapping)>, shared: Arc<Shared>) {
    let fds: Vec<_> = listeners.iter().map(|(l, _)| l.as_fd()).collect();
    while let Some(ready) = wait_ready(&fds, &shared, PollTimeout::NONE) {
        for i in ready {
            let (listener, mapping) = &listeners[i];
            loop {
                match listener.accept() {
                    Ok((client, _)) => start_connection(client, mapping.container_port, &shared),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Out of fds, most likely: the pending connection waits in the queue.
                        warn!("port {mapping}: cannot accept a connection: {e}");
                        thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
    }
}

/// Removes a connection from [`Live`] when its thread ends, however it ends.
struct ConnectionGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.lock().tcp.remove(&self.id);
        self.shared.changed.notify_all();
    }
}

fn start_connection(client: TcpStream, port: u16, shared: &Arc<Shared>) {
    let mut live = shared.lock();
    if live.tcp.len() >= MAX_TCP_CONNECTIONS {
        warn!("port {port}: {MAX_TCP_CONNECTIONS} connections open, closing a new one");
        return;
    }
    let handle = match client.try_clone() {
        Ok(h) => h,
        Err(e) => {
            warn!("port {port}: cannot take a connection: {e}");
            return;
        }
    };
    let id = live.next_id;
    live.next_id += 1;
    live.tcp.insert(id, vec![handle]);
    drop(live);
    let guard = ConnectionGuard {
        shared: Arc::clone(shared),
        id,
    };
    // On a failed spawn the closure, guard included, is dropped: the client is closed.
    if let Err(e) = thread::Builder::new()
        .name("eskrun-fwd-conn".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            relay_connection(client, port, &guard);
            // Only now, with every socket closed, may stop() consider it gone.
            drop(guard);
        })
    {
        warn!("port {port}: cannot take a connection: {e}");
    }
}

fn relay_connection(client: TcpStream, port: u16, guard: &ConnectionGuard) {
    let inner = match connect_inner(port) {
        Ok(inner) => inner,
        Err(e) => {
            // Dropping the client closes it: no server in the container yet, or any more.
            debug!("port {port}: no connection inside the container: {e}");

            return;
        }
    };
    {
        let mut live = guard.shared.lock();
        if guard.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match inner.try_clone() {
            Ok(handle) => live.tcp.entry(guard.id).or_default().push(handle),
            Err(_) => return,
        }
    }
    // Interactive protocols (a notebook's websocket) must not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = inner.set_nodelay(true);
    // Best effort: a kernel without cubic keeps the namespace's default. (The client's side
    // may cross a real network: it keeps the host's choice.)
    let _ = setsockopt(&inner, TcpCongestion, &OsString::from(INNER_CONGESTION));
    let back = client.try_clone().and_then(|client_back| {
        let inner_back = inner.try_clone()?;
        thread::Builder::new()
            .name("eskrun-fwd-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || relay(&inner_back, &client_back))
    });
    let back = match back {
        Ok(back) => back,
        Err(e) => {
            warn!("port {port}: cannot forward a connection: {e}");
            return;
        }
    };
    relay(&client, &inner);
    let _ = back.join();
}

fn connect_inner(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        // A server listening on ::1 only (some "localhost" binds) is still reachable.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)
        }
        result => result,
    }
}

/// Moves one direction until EOF, which is passed on as a half close; an error ends both.
fn relay(from: &TcpStream, to: &TcpStream) {
    match splice_all(from, to) {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(e) => {
            debug!("forwarded connection ended: {e}");

            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

fn splice_all(from: &TcpStream, to: &TcpStream) -> nix::Result<()> {
    let (pipe_read, pipe_write) = pipe2(OFlag::O_CLOEXEC)?;
    // Best effort: the user's pipe buffer quota may refuse a larger pipe.
    let _ = fcntl(
        pipe_write.as_raw_fd(),
        FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
    );
    loop {
        let n = retry(|| {
            splice(
                from,
                None,
                &pipe_write,
                None,
                PIPE_SIZE,
                SpliceFFlags::SPLICE_F_MOVE,
            )
        })?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            match retry(|| {
                splice(
                    &pipe_read,
                    None,
                    to,
                    None,
                    left,
                    SpliceFFlags::SPLICE_F_MOVE,
                )
            })? {
                0 => return Err(Errno::EPIPE),
                sent => left -= sent,
            }
        }
    }
}

fn retry(mut f: impl FnMut() -> nix::Result<usize>) -> nix::Result<usize> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// One UDP client address talking to the container.
struct Session {
    /// Connected to the container's port, inside its network namespace.
    inner: UdpSocket,
    /// Milliseconds since [`Shared::epoch`] of the last datagram either way.
    last: AtomicU64,
}

fn udp_loop(sockets: Vec<(UdpSocket, PortMapping)>, shared: Arc<Shared>) {
    let sockets: Vec<(Arc<UdpSocket>, PortMapping)> =
        sockets.into_iter().map(|(s, m)| (Arc::new(s), m)).collect();
    let fds: Vec<_> = sockets.iter().map(|(s, _)| s.as_fd()).collect();
    let mut buf = vec![0u8; 65536];
    while let Some(ready) = wait_ready(&fds, &shared, PollTimeout::NONE) {
        for i in ready {
            let (socket, mapping) = &sockets[i];
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((n, client)) => {
                        if let Some(session) = udp_session(i, socket, mapping, client, &shared) {
                            // Lost datagrams are UDP's own semantics; the client retries.
                            let _ = session.inner.send(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!("port {mapping}: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// The session of `client` on host socket `index`, started if new; touched under the lock so
/// that an idle session cannot end between this lookup and its use.
fn udp_session(
    index: usize,
    host: &Arc<UdpSocket>,
    mapping: &PortMapping,
    client: SocketAddr,
    shared: &Arc<Shared>,
) -> Option<Arc<Session>> {
    let mut live = shared.lock();
    if let Some(session) = live.udp.get(&(index, client)) {
        session.last.store(shared.now_ms(), Ordering::Relaxed);
        return Some(Arc::clone(session));
    }
    if live.udp.len() >= MAX_UDP_SESSIONS {
        debug!("port {mapping}: {MAX_UDP_SESSIONS} UDP clients active, dropping a datagram from {client}");
        return None;
    }
    // This thread is in the container's network namespace, so the socket is too.
    let inner = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| {
            s.connect((Ipv4Addr::LOCALHOST, mapping.container_port))
                .map(|()| s)
        })
        .map_err(|e| debug!("port {mapping}: no UDP socket inside the container: {e}"))
        .ok()?;
    let session = Arc::new(Session {
        inner,
        last: AtomicU64::new(shared.now_ms()),
    });
    let (host, thread_session, thread_shared) =
        (Arc::clone(host), Arc::clone(&session), Arc::clone(shared));
    thread::Builder::new()
        .name("eskrun-fwd-udp".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            udp_replies(
                host,
                client,
                (index, client),
                thread_session,
                &thread_shared,
            );
            // Counted down after udp_replies dropped its sockets.
            thread_shared.lock().udp_threads -= 1;
            thread_shared.changed.notify_all();
        })
        .map_err(|e| debug!("port {mapping}: cannot start a UDP session: {e}"))
        .ok()?;
    live.udp_threads += 1;
    live.udp.insert((index, client), Arc::clone(&session));
    Some(session)
}

/// Relays the container's replies to `client` until the session is idle or stopping.
fn udp_replies(
    host: Arc<UdpSocket>,
    client: SocketAddr,
    key: (usize, SocketAddr),
    session: Arc<Session>,
    shared: &Shared,
) {
    let idle_ms = UDP_IDLE.as_millis() as u64;
    let mut buf = vec![0u8; 65536];
    loop {
        let quiet = shared
            .now_ms()
            .saturating_sub(session.last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            let mut live = shared.lock();
            // Re-checked under the lock: the forwarding loop touches sessions under it.
            let quiet = shared
                .now_ms()
                .saturating_sub(session.last.load(Ordering::Relaxed));
            if quiet >= idle_ms {
                live.udp.remove(&key);
                break;
            }
            continue;
        }
        let timeout = PollTimeout::try_from(Duration::from_millis(idle_ms - quiet))
            .unwrap_or(PollTimeout::MAX);
        let Some(ready) = wait_ready(&[session.inner.as_fd()], shared, timeout) else {
            shared.lock().udp.remove(&key);
            break;
        };
        if !ready.is_empty() {
            // ECONNREFUSED (nothing listens in the container yet) and the like: keep waiting.
            if let Ok(n) = session.inner.recv(&mut buf) {
                session.last.store(shared.now_ms(), Ordering::Relaxed);
                let _ = host.send_to(&buf[..n], client);
            }
        }
    }
}
