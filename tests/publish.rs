//! Publishing ports (`-p`, `-P`, `eskrun up`) with servers running in real containers, reached
//! from the host, as root and as an unprivileged user: the host network for same-port
//! mappings, eskrun's forwarder (`--network private`) for the rest. Needs root (to create the
//! users), busybox-static (httpd, nc), util-linux (setpriv), a C compiler (a static UDP echo
//! server), docker-registry (for `up`), and pasta (package passt) for the outbound check as
//! root.

mod common;
#[path = "common/rootless.rs"]
mod rootless;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::eskrun::HANG;
use rootless::{Who, World};
use serde_json::json;

/// Root, and an unprivileged user.
const WHO: [Who; 2] = [Who::Root, Who::Subids];
const PAGE: &str = "hello from httpd\n";

/// A port free on every address right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        // The same number free for UDP too, so one helper serves both protocols.
        if UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
}

fn busybox_image(w: &World) -> std::path::PathBuf {
    w.image_config(json!({"Cmd": ["sh"]}))
}

/// A container command that runs `server` until eskrun relays SIGTERM (a server as the
/// namespace's pid 1 would ignore it).
fn serving(server: &str) -> String {
    format!("trap 'exit 0' TERM; {server} & wait")
}

/// busybox httpd serving [`PAGE`] on `port`.
fn httpd(port: u16) -> String {
    httpd_page(port, PAGE.trim_end())
}

/// busybox httpd serving the line `page` on `port`.
fn httpd_page(port: u16, page: &str) -> String {
    serving(&format!(
        "mkdir -p /tmp/www && echo '{page}' > /tmp/www/index.html && httpd -f -p {port} -h /tmp/www"
    ))
}

/// eskrun running in the background; killed (with its container) if the test fails.
struct Running {
    child: Child,
    who: Who,
}

impl Running {
    fn spawn(who: Who, cmd: Command) -> Running {
        Running::spawn_with_stdin(who, cmd, Stdio::null())
    }

    fn spawn_with_stdin(who: Who, mut cmd: Command, stdin: Stdio) -> Running {
        let child = cmd
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running { child, who }
    }

    /// Fails the test if eskrun ended (with what it said).
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut err = String::new();
            self.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("{:?}: eskrun ended ({status}): {err}", self.who);
        }
    }

    /// Stops the container through eskrun (SIGTERM is relayed) and returns eskrun's exit code
    /// and stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        nix::sys::signal::kill(pid(&self.child), nix::sys::signal::Signal::SIGTERM).unwrap();
        self.finish()
    }

    fn finish(&mut self) -> (Option<i32>, String) {
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut err).unwrap();
        }
        let st = self.child.wait().unwrap();
        eprintln!("STATUS {st:?}");
        (st.code(), err)
    }
}

impl Drop for Running {
    /// On a failed test: the container's init first (a container outlives a killed eskrun
    /// until the next eskrun of its state directory, which this test's world never runs).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in children(self.child.id()) {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid(child: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(child.id() as i32)
}

/// GET / from `addr`: the body on a 200, `None` when the connection fails or is closed
/// without an answer (no server listening yet in the container).
fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(HANG)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    assert!(
        head.lines().next().unwrap_or("").contains(" 200 "),
        "{reply}"
    );
    Some(body.to_string())
}

/// Polls `try_once` until it gives an answer, failing if eskrun ends first.
fn wait_for<T>(run: &mut Running, mut try_once: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = try_once() {
            return v;
        }
        run.check_alive();
        assert!(start.elapsed() < HANG, "{:?}: no answer", run.who);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// One echo round trip, or `None` if no server answers (yet).
fn echo_once(addr: SocketAddr) -> Option<()> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(HANG)).unwrap();
    s.write_all(b"ping\n").ok()?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).ok()?;
    assert_eq!(&buf, b"ping\n");
    Some(())
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[test]
fn same_port_shares_the_host_network() {
    for who in WHO {
        let w = World::new(who);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("{port}:{port}");
        let mut run = Running::spawn(
            who,
            w.run(
                &img,
                &["--rm", "-p", &publish, "img", "sh", "-c", &httpd(port)],
            ),
        );
        let body = wait_for(&mut run, || get(local(port)));
        assert_eq!(body, PAGE, "{who:?}");
        // The container's own socket, not a forwarder: it is on every host address.
        let other = SocketAddr::from(([127, 0, 0, 2], port));
        assert_eq!(get(other).as_deref(), Some(PAGE), "{who:?}");
        let (code, err) = run.stop();
        assert_eq!((code, err.as_str()), (Some(0), ""), "{who:?}");
        assert!(port_is_free(port));
    }
}

#[test]
fn remapped_port_switches_to_private_with_one_line() {
    for who in WHO {
        let w = World::new(who);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("{port}:8080");
        let mut run = Running::spawn(
            who,
            w.run(
                &img,
                &["--rm", "-p", &publish, "img", "sh", "-c", &httpd(8080)],
            ),
        );
        assert_eq!(wait_for(&mut run, || get(local(port))), PAGE, "{who:?}");
        // Published on every address, as `docker run -p` does.
        let other = SocketAddr::from(([127, 0, 0, 2], port));
        assert_eq!(get(other).as_deref(), Some(PAGE), "{who:?}");
        let (code, err) = run.stop();
        assert_eq!(code, Some(0), "{who:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{who:?}: {err}");
        assert!(
            lines[0].starts_with(&format!("eskrun: the host's network cannot publish 0.0.0.0:{port}->8080/tcp, so this container gets its own (--network private, ports forwarded by eskrun")),
            "{who:?}: {err}"
        );
        assert!(port_is_free(port));

        // Asked for explicitly, the host network refuses a remap before anything runs.
        let out = w
            .run(
                &img,
                &[
                    "--rm",
                    "--network",
                    "host",
                    "-p",
                    &publish,
                    "img",
                    "echo",
                    "started",
                ],
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(125), &b""[..]),
            "{who:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "eskrun: --network host cannot publish 0.0.0.0:{port}->8080/tcp: "
            )) && err.contains("-p 8080:8080"),
            "{err}"
        );
    }
}

#[test]
fn loopback_only_binding() {
    for who in WHO {
        let w = World::new(who);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:{port}");
        let mut run = Running::spawn(
            who,
            w.run(
                &img,
                &["--rm", "-p", &publish, "img", "sh", "-c", &httpd(port)],
            ),
        );
        assert_eq!(wait_for(&mut run, || get(local(port))), PAGE, "{who:?}");
        // Same port, but the host network cannot restrict where the server listens: the
        // forwarder listens on 127.0.0.1 alone.
        let refused = TcpStream::connect(("127.0.0.2", port)).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{who:?}");
        let (code, err) = run.stop();
        assert_eq!(code, Some(0), "{who:?}: {err}");
        assert!(
            err.contains(&format!("cannot publish 127.0.0.1:{port}->{port}/tcp")),
            "{err}"
        );
    }
}

/// Adds a layer holding `/bin/echod tcp|udp PORT`, a static echo server (busybox has none for
/// UDP, and its `nc -ll -e cat` loses some of many simultaneous connections).
fn add_echo_server(w: &mut World) {
    let dir = w.path("layers/echod");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let source = w.path("echod.c");
    std::fs::write(
        &source,
        r#"#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static char buf[65536];
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int tcp = strcmp(argv[1], "tcp") == 0, one = 1;
    int s = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    if (!tcp) {
        for (;;) {
            struct sockaddr_in peer;
            socklen_t len = sizeof peer;
            ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
            if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&peer, len);
        }
    }
    signal(SIGCHLD, SIG_IGN);
    listen(s, 128);
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) { perror("echod: accept"); continue; }
        pid_t child = fork();
        if (child < 0) perror("echod: fork");
        if (child == 0) {
            ssize_t n;
            while ((n = read(c, buf, sizeof buf)) > 0)
                for (ssize_t off = 0, w; off < n; off += w)
                    if ((w = write(c, buf + off, n - off)) <= 0) { perror("echod: write"); return 1; }
            if (n < 0) perror("echod: read");
            return 0;
        }
        close(c);
    }
}
"#,
    )
    .unwrap();
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.join("bin/echod"))
        .arg(&source)
        .status()
        .expect("cc");
    assert!(status.success());
    if let Some(a) = &w.account {
        for p in [dir.clone(), dir.join("bin"), dir.join("bin/echod")] {
            std::os::unix::fs::chown(p, Some(a.uid), Some(a.gid)).unwrap();
        }
    }
    w.layers.push(dir);
}

#[test]
fn udp_echo_through_the_forwarder() {
    for who in WHO {
        let mut w = World::new(who);
        add_echo_server(&mut w);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:5353/udp");
        let mut run = Running::spawn(
            who,
            w.run(
                &img,
                &[
                    "--rm",
                    "-p",
                    &publish,
                    "img",
                    "sh",
                    "-c",
                    &serving("echod udp 5353"),
                ],
            ),
        );
        let clients: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.connect(local(port)).unwrap();
                c
            })
            .collect();
        // Datagrams sent before the server binds are lost: retry the first one.
        wait_for(&mut run, || {
            clients[0]
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            clients[0].send(b"hello").unwrap();
            let mut buf = [0u8; 16];
            let n = clients[0].recv(&mut buf).ok()?;
            assert_eq!(&buf[..n], b"hello");
            Some(())
        });
        // Each client gets its own replies, in both orders of interleaving.
        for i in 0..20 {
            for (k, c) in clients.iter().enumerate() {
                c.set_read_timeout(Some(HANG)).unwrap();
                let msg = format!("client {k} datagram {i} {}", "x".repeat(i * 100));
                c.send(msg.as_bytes()).unwrap();
                let mut buf = vec![0u8; 4096];
                let n = c.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], msg.as_bytes(), "{who:?}");
            }
        }
        let (code, err) = run.stop();
        assert_eq!(code, Some(0), "{who:?}: {err}");
        assert!(UdpSocket::bind(("127.0.0.1", port)).is_ok());
    }
}

/// A deterministic MiB for connection `i`.
fn payload(i: usize) -> Vec<u8> {
    common::layers::noise(i as u32 + 1, 1 << 20)
}

#[test]
fn fifty_concurrent_connections_of_a_mebibyte() {
    for who in WHO {
        let mut w = World::new(who);
        add_echo_server(&mut w);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:7000");
        let mut run = Running::spawn(
            who,
            w.run(
                &img,
                &[
                    "--rm",
                    "-p",
                    &publish,
                    "img",
                    "sh",
                    "-c",
                    &serving("echod tcp 7000"),
                ],
            ),
        );
        wait_for(&mut run, || echo_once(local(port)));
        let threads: Vec<_> = (0..50)
            .map(|i| {
                std::thread::spawn(move || {
                    let data = payload(i);
                    let mut s = TcpStream::connect(local(port)).unwrap();
                    s.set_read_timeout(Some(HANG)).unwrap();
                    let mut writer = s.try_clone().unwrap();
                    let sent = data.clone();
                    // Writing and reading at once: the server echoes as it reads, so a writer alone
                    // would stall once the buffers on the way back are full.
                    let w = std::thread::spawn(move || {
                        writer.write_all(&sent).unwrap();
                        writer.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::with_capacity(data.len());
                    s.read_to_end(&mut back).unwrap();
                    w.join().unwrap();
                    assert!(
                        back == data,
                        "{who:?} connection {i}: {} bytes back",
                        back.len()
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (code, err) = run.stop();
        assert_eq!(code, Some(0), "{who:?}: {err}");
    }
}

#[test]
fn busy_port_fails_before_the_container_starts() {
    for who in WHO {
        let w = World::new(who);
        let img = busybox_image(&w);
        let port = free_port();
        // Held by a process of the same user, so that eskrun may see who it is.
        let mut holder = match &w.account {
            None => Command::new("busybox"),
            Some(a) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", a.uid))
                    .arg(format!("--regid={}", a.gid))
                    .args(["--clear-groups", "busybox"]);
                c
            }
        };
        holder.args(["nc", "-l", "-p", &port.to_string()]);
        // Killed when dropped, whatever happens.
        let holder = Running::spawn_with_stdin(who, holder, Stdio::piped());
        while port_is_free(port) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (network, publish) in [
            ("host", format!("{port}:{port}")),
            ("private", format!("{port}:8080")),
        ] {
            let marker = w.user_dir("marker");
            let volume = format!("{}:/marker", marker.display());
            let out = w
                .run(
                    &img,
                    &[
                        "--rm",
                        "--network",
                        network,
                        "-v",
                        &volume,
                        "-p",
                        &publish,
                        "img",
                        "touch",
                        "/marker/started",
                    ],
                )
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(125), "{who:?} {network}: {err}");
            assert_eq!(err.lines().count(), 1, "{who:?} {network}: {err}");
            assert!(
                err.starts_with(&format!(
                    "eskrun: port {port}/tcp on 0.0.0.0 is already in use by process {} (busybox)",
                    holder.child.id()
                )),
                "{who:?} {network}: {err}"
            );
            assert!(!marker.join("started").exists(), "{who:?} {network}");
            assert_eq!(
                std::fs::read_dir(w.path("state/containers")).map_or(0, |d| d.count()),
                0,
                "{who:?} {network}: nothing is left"
            );
        }
        drop(holder);
    }
}

#[test]
fn container_exit_closes_open_connections() {
    for who in WHO {
        let mut w = World::new(who);
        add_echo_server(&mut w);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("{port}:7000");
        let cmd = w.run(
            &img,
            &[
                "--rm",
                "-i",
                "-p",
                &publish,
                "img",
                "sh",
                "-c",
                "read start; echod tcp 7000 & read stop; exit 3",
            ],
        );
        let mut run = Running::spawn_with_stdin(who, cmd, Stdio::piped());
        // Before the server listens: a closed connection, not a hang.
        let mut early = wait_for(&mut run, || TcpStream::connect(local(port)).ok());
        early.set_read_timeout(Some(HANG)).unwrap();
        match early.read(&mut [0u8; 1]) {
            Ok(n) => assert_eq!(n, 0, "{who:?}"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{who:?}: {e}"),
        }
        let mut stdin = run.child.stdin.take().unwrap();
        stdin.write_all(b"start\n").unwrap();
        wait_for(&mut run, || echo_once(local(port)));
        let mut open: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut s = TcpStream::connect(local(port)).unwrap();
                s.set_read_timeout(Some(HANG)).unwrap();
                s.write_all(b"x").unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                s
            })
            .collect();
        stdin.write_all(b"stop\n").unwrap();
        let (code, err) = run.finish();
        assert_eq!(code, Some(3), "{who:?}: {err}");
        for s in &mut open {
            // Closed (end of stream or reset), not left hanging.
            match s.read(&mut [0u8; 1]) {
                Ok(n) => assert_eq!(n, 0, "{who:?}"),
                Err(e) => assert_ne!(e.kind(), ErrorKind::WouldBlock, "{who:?}: {e}"),
            }
        }
        assert!(port_is_free(port), "{who:?}");
    }
}

/// Processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// "pasta" or "slirp4netns" when `pid` runs one of them (by its argv[0]: pasta runs as
/// `passt.avx2` on many machines).
fn outbound_helper(pid: u32) -> Option<&'static str> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = std::path::Path::new(std::ffi::OsStr::from_bytes(argv0)).file_name()?;
    ["pasta", "slirp4netns"].into_iter().find(|h| name == *h)
}

/// Gone or a zombie.
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

#[test]
fn killed_eskrun_leaves_no_listener_or_helper() {
    for who in WHO {
        let mut w = World::new(who);
        add_echo_server(&mut w);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("{port}:7000");
        let mut run = Running::spawn(
            who,
            w.run(
                &img,
                &[
                    "--rm",
                    "-p",
                    &publish,
                    "img",
                    "sh",
                    "-c",
                    &serving("echod tcp 7000"),
                ],
            ),
        );
        wait_for(&mut run, || echo_once(local(port)));
        let mut open = TcpStream::connect(local(port)).unwrap();
        open.set_read_timeout(Some(HANG)).unwrap();
        open.write_all(b"x").unwrap();
        open.read_exact(&mut [0u8; 1]).unwrap();
        // The container's init, and pasta or slirp4netns where one could start: nothing else.
        let kids = children(run.child.id());
        let (helpers, init): (Vec<u32>, Vec<u32>) =
            kids.iter().partition(|p| outbound_helper(**p).is_some());
        assert_eq!(init.len(), 1, "{who:?}: {kids:?}");
        // /dev/net/tun is for root alone on this kind of host.
        let expected: &[&str] = if who == Who::Root { &["pasta"] } else { &[] };
        let names: Vec<_> = helpers.iter().filter_map(|p| outbound_helper(*p)).collect();
        assert_eq!(names, expected, "{who:?}");

        run.child.kill().unwrap();
        run.child.wait().unwrap();
        // The listener and the forwarded connection were eskrun's own sockets.
        assert!(port_is_free(port), "{who:?}: the listener outlived eskrun");
        match open.read(&mut [0u8; 1]) {
            Ok(n) => assert_eq!(n, 0, "{who:?}"),
            Err(e) => assert_ne!(e.kind(), ErrorKind::WouldBlock, "{who:?}: {e}"),
        }
        for helper in helpers {
            let start = std::time::Instant::now();
            while !ended(helper) {
                assert!(
                    start.elapsed() < HANG,
                    "{who:?}: the outbound helper outlived eskrun"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The container itself is cleaned up by the next eskrun, as after any killed run.
        let out = w.run(&img, &["--rm", "img", "true"]).output().unwrap();
        assert!(out.status.success(), "{who:?}: {out:?}");
        assert!(ended(init[0]), "{who:?}: the container still runs");
        assert!(port_is_free(port));
    }
}

#[test]
fn a_killed_eskruns_server_does_not_keep_its_port() {
    for who in WHO {
        let w = World::new(who);
        let img = busybox_image(&w);
        let port = free_port();
        let publish = format!("{port}:{port}");
        let mut run = Running::spawn(
            who,
            w.run(&img, &["-p", &publish, "img", "sh", "-c", &httpd(port)]),
        );
        wait_for(&mut run, || get(local(port)));
        // The container, on the host network, outlives eskrun and holds the port...
        run.child.kill().unwrap();
        run.child.wait().unwrap();
        assert!(!port_is_free(port), "{who:?}");
        // ...until the next eskrun cleans it up, before checking the port.
        let second = httpd_page(port, "second");
        let mut run = Running::spawn(
            who,
            w.run(&img, &["--rm", "-p", &publish, "img", "sh", "-c", &second]),
        );
        wait_for(&mut run, || get(local(port)).filter(|p| p == "second\n"));
        let (code, err) = run.stop();
        assert_eq!((code, err.as_str()), (Some(0), ""), "{who:?}");
    }
}

#[test]
fn publish_all_exposes_the_image_ports() {
    for who in WHO {
        let w = World::new(who);
        let port = free_port();
        let img = w.image_config(json!({
            "Cmd": ["sh", "-c", httpd(port)],
            "ExposedPorts": {format!("{port}/tcp"): {}},
        }));
        let mut run = Running::spawn(who, w.run(&img, &["--rm", "-P", "img"]));
        assert_eq!(wait_for(&mut run, || get(local(port))), PAGE, "{who:?}");
        let (code, err) = run.stop();
        assert_eq!((code, err.as_str()), (Some(0), ""), "{who:?}");

        // Exposed but busy: an error naming the port before anything runs.
        let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        let out = w.run(&img, &["--rm", "-P", "img"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.contains(&format!("port {port}/tcp on 0.0.0.0 is already in use")),
            "{err}"
        );
        drop(busy);
    }
}

/// A busybox image in a real registry, for `eskrun up`.
fn push_image(registry: &common::registry::TestRegistry, config: serde_json::Value) -> String {
    use common::layers::Layer;
    let mut base = Layer::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .file(
            "bin/busybox",
            0o755,
            &std::fs::read("/bin/busybox").unwrap(),
        )
        .file("etc/passwd", 0o644, rootless::PASSWD.as_bytes())
        .file("etc/group", 0o644, rootless::GROUP.as_bytes());
    for applet in ["sh", "mkdir", "httpd"] {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let spec = common::registry::ImageSpec::with_layers(
        common::registry::Format::Oci,
        vec![common::registry::Layer::gzip(&base.tar())],
    )
    .config(config);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(registry.push_image("test/httpd", "1", &spec));
    format!("{}/test/httpd:1", registry.host)
}

#[test]
fn up_publishes_the_exposed_ports() {
    let registry = common::registry::TestRegistry::start(common::registry::Mode::Plain);
    let port = free_port();
    let image = push_image(
        &registry,
        json!({
            "Cmd": ["sh", "-c", httpd(port)],
            "ExposedPorts": {format!("{port}/tcp"): {}},
        }),
    );
    for who in WHO {
        let w = World::new(who);
        let project = w.user_dir("project");
        std::fs::write(project.join("eskrun.toml"), format!("image = {image:?}\n")).unwrap();
        std::fs::set_permissions(
            project.join("eskrun.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let dir = project.to_str().unwrap();

        let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        let out = w
            .eskrun(&["up", "--mount", dir])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{who:?}: {err}");
        assert!(
            err.lines().last().unwrap_or("").starts_with(&format!(
                "eskrun: port {port}/tcp on 0.0.0.0 is already in use"
            )),
            "{who:?}: {err}"
        );
        drop(busy);

        let mut run = Running::spawn(who, w.eskrun(&["up", "--mount", dir]));
        assert_eq!(wait_for(&mut run, || get(local(port))), PAGE, "{who:?}");
        let (code, err) = run.stop();
        assert_eq!(code, Some(0), "{who:?}: {err}");
        let out = w.eskrun(&["down", "project"]).output().unwrap();
        assert!(out.status.success(), "{who:?}: {out:?}");
    }
}

/// This host's first global IPv4 address, reachable from the network of pasta or slirp4netns.
fn host_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(addr.split('/').next()?.to_string())
}

#[test]
fn outbound_through_pasta_or_one_notice() {
    let Some(host) = host_address() else {
        panic!("this test needs a global IPv4 address on the host");
    };
    let pasta = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .any(|d| d.join("pasta").is_file());
    assert!(pasta, "this test needs pasta: install passt");
    for who in WHO {
        let w = World::new(who);
        let img = busybox_image(&w);
        let server = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        // /dev/net/tun is for root alone on this kind of host.
        if who == Who::Root {
            // The connection stays open until the test stops the container.
            let client = serving(&format!("(echo out; sleep 600) | nc {host} {port}"));
            let run = Running::spawn(
                who,
                w.run(
                    &img,
                    &["--rm", "--network", "private", "img", "sh", "-c", &client],
                ),
            );
            let (conn, _) = server.accept().unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line).unwrap();
            assert_eq!(line, "out\n");
            let helpers: Vec<_> = children(run.child.id())
                .into_iter()
                .filter_map(outbound_helper)
                .collect();
            assert_eq!(helpers, ["pasta"]);
            let (code, err) = run.stop();
            assert_eq!((code, err.as_str()), (Some(0), ""), "{who:?}");
        } else {
            let script = format!("(echo out | nc {host} {port}) 2>/dev/null || echo unreachable");
            let mut run = Running::spawn(
                who,
                w.run(
                    &img,
                    &["--rm", "--network", "private", "img", "sh", "-c", &script],
                ),
            );
            let (code, err) = run.finish();
            assert_eq!(code, Some(0), "{who:?}: {err}");
            server.set_nonblocking(true).unwrap();
            assert!(server.accept().is_err(), "{who:?}: the container got out");
            assert_eq!(err.lines().count(), 1, "{who:?}: {err}");
            assert!(
                err.starts_with("eskrun: this container has no outbound network (pasta and slirp4netns cannot open /dev/net/tun (")
                    && err.trim_end().ends_with("): use --network host for that"),
                "{who:?}: {err}"
            );
        }
    }
}
