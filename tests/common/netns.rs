//! Test helpers for networking: processes in their own network namespace (real namespaces made
//! by `unshare`), waiting for their sockets, and an unprivileged user to run checks as.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A process group started by a test, killed (all of it) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `command` in its own process group, stdin piped, stdout/stderr inherited.
    pub fn spawn(mut command: Command) -> Proc {
        command.process_group(0).stdin(Stdio::piped());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Proc { child }
    }

    /// `script` under `sh -c` in a new network namespace, whose `lo` stays down unless the
    /// script brings it up. Extra `args` are the script's `$1`...
    pub fn in_netns(script: &str, args: &[&str]) -> Proc {
        let mut command = Command::new("unshare");
        command.args(["--net", "sh", "-c", script, "sh"]).args(args);
        Proc::wrapped_in_netns(command)
    }

    /// Starts `command`, which makes a new network namespace for itself (`unshare --net ...`),
    /// and returns once the process is in it: until then its /proc/PID/ns/net is still ours.
    pub fn wrapped_in_netns(command: Command) -> Proc {
        let mut proc = Proc::spawn(command);
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_link(format!("/proc/{}/ns/net", proc.pid()))
            .ok()
            .as_ref()
            == Some(&ours)
        {
            if let Some(status) = proc.child.try_wait().unwrap() {
                panic!("the process exited ({status}) before entering its network namespace");
            }
            assert!(Instant::now() < deadline, "no new network namespace");
            std::thread::sleep(Duration::from_millis(2));
        }
        proc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's network namespace, as the runtime would pass it.
    pub fn netns(&self) -> OwnedFd {
        File::open(format!("/proc/{}/ns/net", self.pid()))
            .expect("open /proc/PID/ns/net")
            .into()
    }

    /// Sends a line to the process's stdin (scripts wait with `read go`).
    pub fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(b"go\n")
            .expect("write to the child's stdin");
    }

    /// Waits until the process's network namespace has a TCP listener (or a UDP socket) on
    /// `port`, read from /proc/PID/net; panics if the process exits first.
    pub fn wait_listening(&mut self, port: u16, protocol: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if socket_listed(self.pid(), port, protocol) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}) before listening on {port}/{protocol}");
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port}/{protocol}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the whole process group now.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn socket_listed(pid: u32, port: u16, protocol: &str) -> bool {
    let suffix = format!(":{port:04X}");
    ["", "6"].iter().any(|v6| {
        let table =
            std::fs::read_to_string(format!("/proc/{pid}/net/{protocol}{v6}")).unwrap_or_default();
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[1].ends_with(&suffix)
                && (protocol == "udp" || fields[3] == "0A")
        })
    })
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
