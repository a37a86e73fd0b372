//! Port publishing through eskrun's forwarder, against real servers (busybox, or this test
//! binary's own helper modes) in real network namespaces, and outbound connections through
//! pasta or slirp4netns. Runs as root, as CI does; one test runs the rootless shape as an
//! unprivileged user inside its own user namespace.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::time::Duration;

use common::netns::{free_port, Proc};
use common::users::ensure_ids;
use eskrun::network::{
    bring_loopback_up, check_free, create_netns, Forwarder, NetworkError, PortMapping, Protocol,
};

/// Only a guard against hangs: a test fails instead of blocking forever.
const HANG_GUARD: Duration = Duration::from_secs(60);
const HELPER_ENV: &str = "ESKRUN_NETTEST_HELPER";

fn mapping(
    host_ip: Option<IpAddr>,
    host_port: u16,
    container_port: u16,
    protocol: Protocol,
) -> PortMapping {
    PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    }
}

fn localhost() -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// busybox httpd on 127.0.0.1:`port` in a new network namespace, serving `index.html` = `body`.
fn httpd_in_netns(dir: &std::path::Path, port: u16, body: &str) -> Proc {
    std::fs::write(dir.join("index.html"), body).unwrap();
    let mut server = Proc::in_netns(
        "ip link set lo up && exec busybox httpd -f -p 127.0.0.1:$1 -h $2",
        &[&port.to_string(), dir.to_str().unwrap()],
    );
    server.wait_listening(port, "tcp");
    server
}

fn http_get(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A fresh directory under the temp dir, removed when dropped (also when a test panics).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "eskrun-net-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn published_addr(forwarder: &Forwarder) -> SocketAddr {
    let m = forwarder.published()[0];
    SocketAddr::new(
        m.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        m.host_port,
    )
}

/// Asserts that `stream` is closed by the other side: EOF or a reset, never a hang.
fn assert_closed(mut stream: TcpStream) {
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected a closed connection, got {n} bytes"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "expected a closed connection, got {e}"
        ),
    }
}

#[test]
fn same_port_forwards_http() {
    let dir = TempDir::new("same");
    let port = free_port();
    let server = httpd_in_netns(&dir, port, "same port");
    let forwarder = Forwarder::bind(&[mapping(None, port, port, Protocol::Tcp)]).unwrap();
    assert_eq!(forwarder.published()[0].host_port, port);
    let running = forwarder.serve(server.netns()).unwrap();
    let response = http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("same port"), "{response}");
    running.stop();
}

#[test]
fn remapped_port_forwards_http_and_is_reachable_on_all_addresses() {
    let dir = TempDir::new("remap");
    let server = httpd_in_netns(&dir, 8080, "remapped");
    let forwarder = Forwarder::bind(&[mapping(None, 0, 8080, Protocol::Tcp)]).unwrap();
    let published = forwarder.published()[0];
    assert_ne!(published.host_port, 8080);
    let running = forwarder.serve(server.netns()).unwrap();
    let response = http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, published.host_port)));
    assert!(response.ends_with("remapped"), "{response}");
    if let Some(ip) = non_loopback_ipv4() {
        let response = http_get(SocketAddr::from((ip, published.host_port)));
        assert!(response.ends_with("remapped"), "{response}");
    }
    drop(running);
}

/// One of the host's own non-loopback IPv4 addresses, if it has any.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .next()
}

#[test]
fn loopback_only_binding_is_not_reachable_elsewhere() {
    let dir = TempDir::new("lo-only");
    let server = httpd_in_netns(&dir, 8080, "loopback only");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 8080, Protocol::Tcp)]).unwrap();
    let port = forwarder.published()[0].host_port;
    let running = forwarder.serve(server.netns()).unwrap();
    let response = http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    assert!(response.ends_with("loopback only"), "{response}");
    match non_loopback_ipv4() {
        Some(ip) => {
            let err = TcpStream::connect((ip, port)).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::ConnectionRefused,
                "{ip}:{port}: {err}"
            );
        }
        None => {
            // No other address to try: check what the kernel says is bound.
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            let bound = format!("0100007F:{port:04X}");
            assert!(table
                .lines()
                .any(|l| l.contains(&bound) && l.contains(" 0A ")));
        }
    }
    running.stop();
}

/// Helper modes of this test binary, run as a child process (see `helper`).
fn run_helper(mode: &str) {
    match mode.split_once(':') {
        Some(("udp-echo", port)) => {
            let socket = UdpSocket::bind(("127.0.0.1", port.parse().unwrap())).unwrap();
            let mut buf = [0u8; 65536];
            loop {
                let (n, from) = socket.recv_from(&mut buf).unwrap();
                socket.send_to(&buf[..n], from).unwrap();
            }
        }
        Some(("tcp-echo", port)) => {
            let listener = TcpListener::bind(("127.0.0.1", port.parse().unwrap())).unwrap();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    std::io::copy(&mut reader, &mut stream).unwrap();
                    stream.shutdown(Shutdown::Write).unwrap();
                });
            }
        }
        _ if mode == "forward-then-sleep" => {
            let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 9, Protocol::Tcp)]).unwrap();
            println!("port {}", forwarder.published()[0].host_port);
            let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
            let _running = forwarder.serve(netns.into()).unwrap();
            std::thread::sleep(Duration::from_secs(600));
        }
        Some(("outbound", addr)) => outbound_check(addr.parse().unwrap()),
        _ if mode == "rootless" => rootless_check(),
        _ => panic!("unknown helper mode {mode}"),
    }
}

/// Entry point of the helper modes: runs only when started by another test with
/// `ESKRUN_NETTEST_HELPER` set (`--ignored --exact helper`).
#[test]
#[ignore = "helper process for the other tests"]
fn helper() {
    run_helper(&std::env::var(HELPER_ENV).expect("ESKRUN_NETTEST_HELPER is set"));
}

fn helper_command(mode: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            "helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, mode);
    command
}

/// A helper mode of this binary running in a new network namespace with `lo` up.
fn helper_in_netns(mode: &str) -> Proc {
    let helper = helper_command(mode);
    let mut command = Command::new("unshare");
    command
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
        ])
        .arg(helper.get_program())
        .args(helper.get_args())
        .env(HELPER_ENV, mode);
    Proc::wrapped_in_netns(command)
}

#[test]
fn udp_echo_through_sessions() {
    let mut server = helper_in_netns("udp-echo:7000");
    server.wait_listening(7000, "udp");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 7000, Protocol::Udp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(server.netns()).unwrap();
    // Two clients: two sessions, each answered at its own address.
    let clients: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for round in 0..3 {
        for (i, client) in clients.iter().enumerate() {
            client.set_read_timeout(Some(HANG_GUARD)).unwrap();
            let message = format!("client {i} round {round}");
            client.send_to(message.as_bytes(), addr).unwrap();
            let mut buf = [0u8; 100];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], message.as_bytes());
        }
    }
    running.stop();
    // Stopped: the host port is free again.
    UdpSocket::bind(addr).unwrap();
}

/// 1 MiB of a pattern that differs per connection.
fn pattern(seed: usize) -> Vec<u8> {
    common::layers::noise(seed as u32, 1 << 20)
}

#[test]
fn fifty_concurrent_connections_carry_one_mib_each() {
    // Not busybox nc: its accept queue of 2 resets connections under 50 simultaneous SYNs.
    let mut server = helper_in_netns("tcp-echo:9000");
    server.wait_listening(9000, "tcp");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 9000, Protocol::Tcp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(server.netns()).unwrap();
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(i);
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let sent = data.clone();
                let write = std::thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut echoed = Vec::new();
                stream.read_to_end(&mut echoed).unwrap();
                write.join().unwrap();
                assert_eq!(echoed.len(), data.len(), "connection {i}");
                assert!(echoed == data, "connection {i}: bytes differ");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    running.stop();
}

#[test]
fn busy_port_names_the_holder() {
    let port = free_port();
    let mut command = Command::new("busybox");
    command.args(["nc", "-l", "-p", &port.to_string()]);
    let mut holder = Proc::spawn(command);
    holder.wait_listening(port, "tcp");
    let wanted = [mapping(None, port, 8888, Protocol::Tcp)];
    let expected = format!(
        "port {port}/tcp on 0.0.0.0 is already in use by process {} (busybox): stop it or publish another port (-p {}:8888)",
        holder.pid(),
        port + 1
    );
    let err = Forwarder::bind(&wanted).err().expect("the port is busy");
    assert!(matches!(err, NetworkError::PortInUse { .. }));
    assert_eq!(err.to_string(), expected);
    // --network host: the same check, the same line.
    assert_eq!(check_free(&wanted).unwrap_err().to_string(), expected);
    holder.kill();
    check_free(&wanted).unwrap();

    // UDP, held by this very process, on a loopback-only mapping.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let err = check_free(&[mapping(localhost(), port, 53, Protocol::Udp)]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "port {port}/udp on 127.0.0.1 is already in use by process {} (",
            std::process::id()
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("(-p 127.0.0.1:{}:53/udp)", port + 1)),
        "{message}"
    );
}

#[test]
fn duplicate_mapping_is_refused() {
    let port = free_port();
    let twice = [
        mapping(None, port, 80, Protocol::Tcp),
        mapping(None, port, 81, Protocol::Tcp),
    ];
    let err = Forwarder::bind(&twice).err().expect("published twice");
    assert_eq!(
        err.to_string(),
        format!("port {port}/tcp on 0.0.0.0 is published twice")
    );
}

#[test]
fn server_exit_closes_open_connections() {
    // Single -l: nc execs cat in its own process for the one connection.
    let mut server = Proc::in_netns(
        "ip link set lo up && exec busybox nc -l -p 9000 -e cat",
        &[],
    );
    server.wait_listening(9000, "tcp");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 9000, Protocol::Tcp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(server.netns()).unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    server.kill();
    assert_closed(stream);
    running.stop();
}

#[test]
fn client_before_server_listens_gets_a_closed_connection() {
    let dir = TempDir::new("early");
    std::fs::write(dir.join("index.html"), "late server").unwrap();
    let mut server = Proc::in_netns(
        "ip link set lo up && read go && exec busybox httpd -f -p 127.0.0.1:8080 -h $1",
        &[dir.to_str().unwrap()],
    );
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 8080, Protocol::Tcp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(server.netns()).unwrap();
    assert_closed(TcpStream::connect(addr).unwrap());
    server.go();
    server.wait_listening(8080, "tcp");
    let response = http_get(addr);
    assert!(response.ends_with("late server"), "{response}");
    running.stop();
}

#[test]
fn stop_closes_connections_and_frees_the_port() {
    let mut server = Proc::in_netns(
        "ip link set lo up && exec busybox nc -ll -p 9000 -e cat",
        &[],
    );
    server.wait_listening(9000, "tcp");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 9000, Protocol::Tcp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(server.netns()).unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream.write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    stream.read_exact(&mut buf).unwrap();
    running.stop();
    assert_closed(stream);
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    TcpListener::bind(addr).expect("the port is free after stop");
}

fn thread_netns() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").unwrap()
}

#[test]
fn loopback_comes_up_in_a_fresh_netns() {
    let netns_proc = Proc::in_netns("exec sleep 600", &[]);
    let netns = netns_proc.netns();
    let path = format!("--net=/proc/{}/ns/net", netns_proc.pid());
    let lo = || {
        let out = Command::new("nsenter")
            .args([path.as_str(), "ip", "-o", "addr", "show", "dev", "lo"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!lo().contains("127.0.0.1"), "{}", lo());
    let home = thread_netns();
    bring_loopback_up(netns.as_fd()).unwrap();
    assert_eq!(thread_netns(), home, "the calling thread stays at home");
    let after = lo();
    assert!(after.contains("127.0.0.1"), "{after}");
    let flags = Command::new("nsenter")
        .args([path.as_str(), "ip", "-o", "link", "show", "dev", "lo"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&flags.stdout).contains(",UP"));
}

/// Rootless shape: an unprivileged user in its own user namespace (as eskrun runs) owns the
/// container's network namespace, brings its loopback up and forwards into it.
#[test]
fn unprivileged_user_namespace_forwards_into_its_netns() {
    let (uid, gid) = ensure_ids("eskrun-nettest");
    let as_user = || {
        let mut command = Command::new("setpriv");
        command.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ]);
        command
    };
    let helper = helper_command("rootless");
    let mut exe = std::path::PathBuf::from(helper.get_program());
    let copy_dir = TempDir::new("bin");
    // The test binary may sit where the user cannot reach it (a target dir under /root).
    if !as_user()
        .arg("test")
        .arg("-x")
        .arg(&exe)
        .status()
        .unwrap()
        .success()
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&*copy_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = copy_dir.join("network-test");
        std::fs::copy(&exe, &copy).unwrap();
        exe = copy;
    }
    let out = as_user()
        .args(["unshare", "--user", "--map-root-user", "--"])
        .arg(&exe)
        .args(helper.get_args())
        .env(HELPER_ENV, "rootless")
        .current_dir("/")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("rootless forward ok"), "{stdout}\n{stderr}");
}

/// The unprivileged side of the test above, run as root of a user namespace it created.
fn rootless_check() {
    // Really unprivileged: root here is some ordinary host user.
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(
        !uid_map.split_whitespace().eq(["0", "0", "4294967295"]),
        "{uid_map}"
    );
    let dir = TempDir::new("rootless");
    std::fs::write(dir.join("index.html"), "rootless").unwrap();
    // lo is down: the server waits for us to bring it up.
    let mut server = Proc::in_netns(
        "read go && exec busybox httpd -f -p 127.0.0.1:8080 -h $1",
        &[dir.to_str().unwrap()],
    );
    bring_loopback_up(server.netns().as_fd()).unwrap();
    server.go();
    server.wait_listening(8080, "tcp");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 8080, Protocol::Tcp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(server.netns()).unwrap();
    let response = http_get(addr);
    assert!(response.ends_with("rootless"), "{response}");
    let unprivileged_start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    if unprivileged_start > 80 {
        let err = check_free(&[mapping(localhost(), 80, 80, Protocol::Tcp)]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot listen on 127.0.0.1:80/tcp: Permission denied")
                && err.to_string().ends_with(
                    "; ports below 1024 need privileges: publish a host port above 1023"
                ),
            "{err}"
        );
    }
    running.stop();
    let created = create_netns().unwrap();
    assert!(lo_addresses(&created).contains("127.0.0.1"));
    println!("rootless forward ok");
}

#[test]
fn killed_forwarder_leaves_no_listener() {
    let mut child = helper_command("forward-then-sleep")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let port: u16 = std::io::BufRead::lines(stdout)
        .map(Result::unwrap)
        // libtest prints "test helper ... " on the same line.
        .find_map(|line| {
            line.split("port ")
                .nth(1)
                .map(|p| p.trim().parse().unwrap())
        })
        .expect("the helper prints its port");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(TcpListener::bind(addr).is_err(), "the helper listens");
    // Port 9 has no server: the forwarder answers with a closed connection.
    assert_closed(TcpStream::connect(addr).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    TcpListener::bind(addr).expect("nothing listens after the forwarder was killed");
}

#[test]
fn listeners_are_not_inherited_by_children() {
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 80, Protocol::Tcp)]).unwrap();
    let port = forwarder.published()[0].host_port;
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let bound = format!("0100007F:{port:04X}");
    let inode = table
        .lines()
        .find(|l| l.contains(&bound))
        .and_then(|l| l.split_whitespace().nth(9))
        .expect("the listener is in /proc/net/tcp");
    let socket = format!("socket:[{inode}]");
    let ours = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|link| link.as_os_str() == socket.as_str());
    assert!(ours, "this process holds {socket}");
    let out = Command::new("sh")
        .args(["-c", "for fd in /proc/$$/fd/*; do readlink $fd; done"])
        .output()
        .unwrap();
    let links = String::from_utf8(out.stdout).unwrap();
    // The listing worked (a readlink of the fd the glob used may fail: not checked).
    assert!(links.contains("pipe:"), "{links}");
    assert!(!links.contains(&socket), "{links}");
    drop(forwarder);
}

#[test]
fn address_not_on_this_host_is_one_line() {
    // TEST-NET-2: documentation addresses, never configured on a real host.
    let ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)));
    let err = Forwarder::bind(&[mapping(ip, 0, 80, Protocol::Tcp)])
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "cannot listen on 198.51.100.1:0/tcp: Cannot assign requested address (os error 99); \
         no interface of this host has that address"
    );
}

/// `ip addr show dev lo` inside the namespace `netns` (an fd of this process).
fn lo_addresses(netns: &std::os::fd::OwnedFd) -> String {
    let path = format!(
        "--net=/proc/{}/fd/{}",
        std::process::id(),
        netns.as_raw_fd()
    );
    let out = Command::new("nsenter")
        .args([path.as_str(), "ip", "-o", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn created_netns_has_loopback_up_and_takes_forwarded_connections() {
    let home = thread_netns();
    let netns = create_netns().unwrap();
    assert_eq!(thread_netns(), home, "the calling thread stays at home");
    assert!(lo_addresses(&netns).contains("127.0.0.1"));
    let dir = TempDir::new("created");
    std::fs::write(dir.join("index.html"), "joined").unwrap();
    // What the container does: join the namespace by path, then serve.
    let mut command = Command::new("nsenter");
    command
        .arg(format!(
            "--net=/proc/{}/fd/{}",
            std::process::id(),
            netns.as_raw_fd()
        ))
        .args(["busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h"])
        .arg(&*dir);
    let mut server = Proc::wrapped_in_netns(command);
    server.wait_listening(8080, "tcp");
    let forwarder = Forwarder::bind(&[mapping(localhost(), 0, 8080, Protocol::Tcp)]).unwrap();
    let addr = published_addr(&forwarder);
    let running = forwarder.serve(netns).unwrap();
    let response = http_get(addr);
    assert!(response.ends_with("joined"), "{response}");
    running.stop();
}

/// `name` as found on this process's PATH.
fn installed(name: &str, package: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("this test needs {name}: install {package}"))
}

/// Outbound connections of a new namespace go through pasta when it is installed, else through
/// slirp4netns, else nowhere, with the reason. Each case runs in a helper process (as root)
/// whose PATH holds only the tools of that case.
#[test]
fn outbound_through_pasta_else_slirp4netns() {
    let host = non_loopback_ipv4().expect("this test needs a global IPv4 address on the host");
    let pasta = installed("pasta", "passt");
    let slirp = installed("slirp4netns", "slirp4netns");
    let cases = [
        (vec![&pasta, &slirp], "outbound through pasta"),
        (vec![&slirp], "outbound through slirp4netns"),
        (
            vec![],
            "no outbound: neither pasta nor slirp4netns is installed",
        ),
    ];
    for (tools, expected) in cases {
        let bin = TempDir::new("outbound-path");
        for tool in &tools {
            std::os::unix::fs::symlink(tool, bin.join(tool.file_name().unwrap())).unwrap();
        }
        // On the host's own address, not a loopback one: the namespace reaches the host as
        // another machine would.
        let server = TcpListener::bind((host, 0)).unwrap();
        let addr = server.local_addr().unwrap();
        let reachable = !tools.is_empty();
        let served = reachable.then(|| {
            std::thread::spawn(move || {
                let (conn, _) = server.accept().unwrap();
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(&conn);
                std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
                (&conn).write_all(b"in\n").unwrap();
                line
            })
        });
        let out = helper_command(&format!("outbound:{addr}"))
            .env("PATH", &*bin)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains(expected), "{stdout}\n{stderr}");
        if let Some(served) = served {
            assert_eq!(served.join().unwrap(), "out\n");
        }
    }
}

/// The helper side of the test above: an outbound helper for a new namespace; a connection
/// from the namespace to `addr` that gets an answer; the helper process gone with its
/// `Outbound`.
fn outbound_check(addr: SocketAddr) {
    let netns = create_netns().unwrap();
    let outbound = match eskrun::network::outbound::start(netns.as_fd(), true) {
        Ok(outbound) => outbound,
        Err(why) => return println!("no outbound: {why}"),
    };
    let children = std::fs::read_to_string("/proc/thread-self/children").unwrap();
    let helper_pid = children
        .split_whitespace()
        .next()
        .expect("a helper process");
    let argv0 = std::fs::read(format!("/proc/{helper_pid}/cmdline")).unwrap();
    let argv0 = String::from_utf8_lossy(argv0.split(|b| *b == 0).next().unwrap());
    assert!(
        argv0.ends_with(&format!("/{}", outbound.helper())),
        "{argv0}"
    );

    std::thread::scope(|scope| {
        scope.spawn(|| {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // slirp4netns' layout whichever helper runs: default route via 10.0.2.2 on tap0.
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(
                routes.lines().any(|l| l
                    .split_whitespace()
                    .take(3)
                    .eq(["tap0", "00000000", "0202000A"])),
                "{routes}"
            );
            let mut conn = TcpStream::connect_timeout(&addr, HANG_GUARD).unwrap();
            conn.set_read_timeout(Some(HANG_GUARD)).unwrap();
            conn.write_all(b"out\n").unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            assert_eq!(answer, "in\n");
        });
    });
    let helper = outbound.helper();
    drop(outbound);
    assert!(
        !std::path::Path::new(&format!("/proc/{helper_pid}")).exists(),
        "the helper outlived its Outbound"
    );
    println!("outbound through {helper}");
}
