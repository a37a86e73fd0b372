//! `eskrun run` with real containers through libcontainer, as root and as unprivileged users
//! (with and without subordinate ids). Needs root (to create the users), busybox-static,
//! uidmap (newuidmap/newgidmap), util-linux (setpriv, script).

mod common;
#[path = "common/rootless.rs"]
mod rootless;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};

use common::eskrun::names;
use rootless::{Who, World, ALL};
use serde_json::json;

fn output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cmd`, run with the user's umask set to `umask`.
fn with_umask(mut cmd: Command, umask: u32) -> Command {
    // SAFETY: umask(2) only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            nix::libc::umask(umask);
            Ok(())
        })
    };
    cmd
}

fn sh_image(w: &World) -> std::path::PathBuf {
    w.image_config(json!({"Cmd": ["sh"]}))
}

/// Reads the child's stdout until a line equal to `want` arrives.
fn wait_for_line(child: &mut Child, want: &str) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "eskrun ended before printing {want:?}"
        );
        if line.trim_end() == want {
            return out;
        }
    }
}

/// Starts `eskrun run ARGS img sh -c "echo ready; exec sleep 1000"` and waits until the
/// container says it is ready. Returns eskrun, its stdout (kept open) and the container's init.
fn start_sleeper(
    w: &World,
    img: &std::path::Path,
    args: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>, i32) {
    let mut full = args.to_vec();
    full.extend(["img", "sh", "-c", "echo ready; exec sleep 1000"]);
    let mut child = w.run(img, &full).stdout(Stdio::piped()).spawn().unwrap();
    let out = wait_for_line(&mut child, "ready");
    let init = children(child.id());
    assert_eq!(init.len(), 1, "{:?}: eskrun's children {init:?}", w.who);
    (child, out, init[0])
}

fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn exit_codes_and_image_layers() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "img",
                "sh",
                "-c",
                "cat /etc/added; test -e /etc/removed || echo gone; exit 3",
            ],
        ));
        assert_eq!((code, out.as_str()), (3, "upper\ngone\n"), "{who:?}: {err}");
        let (code, _, err) = output(w.run(&img, &["--rm", "img", "true"]));
        assert_eq!(code, 0, "{who:?}: {err}");
    }
}

#[test]
fn killed_by_signal_gives_128_plus_n() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let (mut child, _out, init) = start_sleeper(&w, &img, &["--rm"]);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(137), "{who:?}");
    }
}

#[test]
fn signals_reach_the_container() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let script =
            "trap 'exit 7' TERM; trap 'exit 8' INT; echo ready; while :; do sleep 0.1; done";
        for (sig, code) in [
            (nix::sys::signal::Signal::SIGTERM, 7),
            (nix::sys::signal::Signal::SIGINT, 8),
        ] {
            let mut child = w
                .run(&img, &["--rm", "img", "sh", "-c", script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let _out = wait_for_line(&mut child, "ready");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
            assert_eq!(child.wait().unwrap().code(), Some(code), "{who:?} {sig}");
        }
    }
}

#[test]
fn image_config_rules() {
    for who in ALL {
        let w = World::new(who);
        let img = w.image_config(json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo $FOO $HOME $HOSTNAME; pwd; id -u; id -g"],
            "Env": ["FOO=bar"],
            "WorkingDir": "/work/dir",
            "User": "esdev",
        }));
        let (code, out, err) = output(w.run(&img, &["--rm", "--hostname", "box", "img"]));
        assert_eq!(
            (code, out.as_str()),
            (0, "bar /home/esdev box\n/work/dir\n1000\n1000\n"),
            "{who:?}: {err}"
        );

        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "-e",
                "FOO=baz",
                "-w",
                "/tmp",
                "-u",
                "0:0",
                "--hostname",
                "box",
                "img",
            ],
        ));
        assert_eq!(
            (code, out.as_str()),
            (0, "baz /root box\n/tmp\n0\n0\n"),
            "{who:?}: {err}"
        );

        let (code, out, err) =
            output(w.run(&img, &["--rm", "--entrypoint", "/bin/echo", "img", "hi"]));
        assert_eq!((code, out.as_str()), (0, "hi\n"), "{who:?}: {err}");

        let (code, out, err) = output(w.run(&img, &["--rm", "img", "echo $PATH"]));
        assert_eq!(
            (code, out.as_str()),
            (
                0,
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            ),
            "{who:?}: {err}"
        );
    }
}

#[test]
fn bind_mount_files_belong_to_the_host_user() {
    for who in ALL {
        let w = World::new(who);
        let img = w.image_config(json!({"Cmd": ["sh"], "User": "esdev"}));
        let src = w.user_dir("src");
        std::fs::write(src.join("in"), "from host").unwrap();
        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "-v",
                "./src:/opt/src",
                "img",
                "sh",
                "-c",
                "cat /opt/src/in; echo written > /opt/src/out; mkdir /opt/src/d",
            ],
        ));
        assert_eq!((code, out.as_str()), (0, "from host"), "{who:?}: {err}");
        for f in ["out", "d"] {
            let meta = std::fs::metadata(src.join(f)).unwrap();
            assert_eq!(meta.uid(), w.host_uid(1000), "{who:?}: owner of {f}");
        }
        let (code, _, err) = output(w.run(
            &img,
            &[
                "--rm",
                "--mount",
                "type=bind,src=src,dst=/ro,readonly",
                "img",
                "sh",
                "-c",
                "touch /ro/x",
            ],
        ));
        assert_ne!(code, 0, "{who:?}: a read-only mount was writable: {err}");
    }
}

#[test]
fn rm_leaves_nothing_and_named_containers_stay() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let name = format!("keep-{}", std::process::id());
        let (code, _, err) = output(w.run(&img, &["--rm", "img", "sh", "-c", "echo x > /file"]));
        assert_eq!(code, 0, "{who:?}: {err}");
        let containers = w.path("state/containers");
        assert_eq!(
            std::fs::read_dir(&containers).unwrap().count(),
            0,
            "{who:?}"
        );
        let (code, _, err) = output(w.run(
            &img,
            &["--name", &name, "img", "sh", "-c", "echo x > /file"],
        ));
        assert_eq!(code, 0, "{who:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(containers.join(&name).join("upper/file")).unwrap(),
            "x\n"
        );
        let (code, _, err) = output(w.run(&img, &["--name", &name, "img", "true"]));
        assert_eq!(code, 125, "{who:?}");
        assert!(err.contains("already exists"), "{err}");
    }
}

#[test]
fn the_writable_layer_holds_only_what_the_container_writes() {
    // The test image has no /proc, /dev, /sys, /etc/hosts, /etc/hostname or /etc/resolv.conf:
    // their mount points must not be made in the writable layer (a copy of /etc there costs
    // every start disk work and would hide the image's /etc from a kept container), and /etc
    // must still look as the image has it.
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let name = format!("clean-{}", std::process::id());
        let etc = std::fs::metadata(w.layers[1].join("etc")).unwrap();
        let script =
            "stat -c '%a %Y' /etc; cat /etc/hostname; ls -d /dev/null /proc/self /sys/kernel";
        let (code, out, err) = output(w.run(
            &img,
            &[
                "--name",
                &name,
                "--hostname",
                "h1",
                "img",
                "sh",
                "-c",
                script,
            ],
        ));
        assert_eq!(code, 0, "{who:?}: {err}");
        assert_eq!(
            out,
            format!(
                "{:o} {}\nh1\n/dev/null\n/proc/self\n/sys/kernel\n",
                etc.mode() & 0o7777,
                etc.mtime()
            ),
            "{who:?}"
        );
        let dir = w.path("state/containers").join(&name);
        let upper: Vec<_> = std::fs::read_dir(dir.join("upper"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            upper.is_empty(),
            "{who:?}: the writable layer holds {upper:?}"
        );
        // A kept writable layer is mounted again by the next `up`: overlayfs refuses a work
        // directory left by a `volatile` mount, which only `--rm` containers may use.
        assert!(!dir.join("work/work/incompat").exists(), "{who:?}");
        let (mut child, _out, init) = start_sleeper(&w, &img, &["--rm", "--name", "gone"]);
        let volatile = w
            .path("state/containers/gone/work/work/incompat/volatile")
            .exists();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(137), "{who:?}");
        assert!(
            volatile,
            "{who:?}: a --rm container's overlay is not volatile"
        );
    }
}

#[test]
fn the_etc_files_are_the_containers_own() {
    // /etc/hostname, /etc/hosts and /etc/resolv.conf as Docker provides them: readable by
    // any container user whatever the user's umask, writable into the container's own
    // writable layer (never the image's, never the next container's), read-only with
    // --read-only.
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let run = |args: &[&str], script: &str| {
            let mut full = args.to_vec();
            full.extend(["img", "sh", "-c", script]);
            output(with_umask(w.run(&img, &full), 0o077))
        };
        let (code, out, err) = run(
            &[
                "--rm",
                "--hostname",
                "h1",
                "--network",
                "none",
                "-u",
                "1000:1000",
            ],
            "cat /etc/hostname; grep -c h1 /etc/hosts; cat /etc/resolv.conf",
        );
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap();
        assert_eq!(
            (code, out.as_str()),
            (0, format!("h1\n1\n{resolv}").as_str()),
            "{who:?}: {err}"
        );
        let name = format!("etc-{}", std::process::id());
        let (code, out, err) = run(
            &["--name", &name],
            "echo '10.1.2.3 extra' >> /etc/hosts && grep -c extra /etc/hosts",
        );
        assert_eq!((code, out.as_str()), (0, "1\n"), "{who:?}: {err}");
        let kept = w
            .path("state/containers")
            .join(&name)
            .join("upper/etc/hosts");
        assert!(
            std::fs::read_to_string(&kept).unwrap().contains("extra"),
            "{who:?}"
        );
        let (code, out, err) = run(&["--rm"], "grep -c extra /etc/hosts; true");
        assert_eq!((code, out.as_str()), (0, "0\n"), "{who:?}: {err}");
        let (code, _, err) = run(&["--rm", "--read-only"], "echo x >> /etc/hosts");
        assert_ne!(code, 0, "{who:?}: /etc/hosts is writable with --read-only");
        assert!(err.contains("Read-only file system"), "{who:?}: {err}");
    }
}

#[test]
fn an_untouched_writable_layer_serves_the_next_container() {
    // A --rm container that wrote nothing gives its directory back as a spare, so a loop of
    // runs makes and frees no inodes of its own on the state disk. One that wrote a file or
    // changed `/` is removed: the next container sees none of it.
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let spare_uppers = || -> Vec<u64> {
            std::fs::read_dir(w.path("state/spare")).map_or(Vec::new(), |entries| {
                entries
                    .map(|e| e.unwrap().path().join("upper").metadata().unwrap().ino())
                    .collect()
            })
        };
        let run = |script: &str, umask: u32| {
            let cmd = w.run(&img, &["--rm", "img", "sh", "-c", script]);
            let (code, out, err) = output(with_umask(cmd, umask));
            assert_eq!(code, 0, "{who:?}: {script}: {err}");
            // Not the fallback that copies the layers (a work directory overlayfs refuses).
            assert!(!err.contains("copying"), "{who:?}: {script}: {err}");
            out
        };
        run("true", 0o022);
        let first = spare_uppers();
        assert_eq!(first.len(), 1, "{who:?}");
        run("true", 0o022);
        assert_eq!(spare_uppers(), first, "{who:?}: the spare was not reused");
        let spares = names(&w.path("state/spare"));
        assert_eq!(
            names(&w.path("state/spare").join(&spares[0])),
            ["container.json", "init", "lock", "upper", "work"],
            "{who:?}"
        );
        // What overlayfs made in `work/` waits in the trash: removed while later containers
        // run, as far as they last, never more than a few left.
        let trash = w.path("state/trash");
        for i in 0..20 {
            std::fs::create_dir_all(trash.join(format!("old{i}/work/incompat"))).unwrap();
        }
        w.user_dir("state/trash");
        run("true", 0o022);
        let left = names(&trash).len();
        assert!((1..=9).contains(&left), "{who:?}: {left} left in the trash");
        run("sleep 1", 0o022);
        assert_eq!(
            names(&trash).len(),
            1,
            "{who:?}: its own work directory only"
        );
        assert_eq!(
            names(&trash.join(&names(&trash)[0])),
            ["incompat"],
            "{who:?}: not overlayfs's work directory"
        );
        run("chmod 700 /", 0o022);
        assert_eq!(spare_uppers(), Vec::<u64>::new(), "{who:?}");
        run("echo x > /junk", 0o022);
        assert_eq!(spare_uppers(), Vec::<u64>::new(), "{who:?}");
        // A user's umask does not reach the container's `/`.
        let out = run("stat -c %a /; test -e /junk && echo leaked; true", 0o077);
        assert_eq!(out, "755\n", "{who:?}");
        assert_eq!(spare_uppers().len(), 1, "{who:?}");
        assert_eq!(
            std::fs::read_dir(w.path("state/containers"))
                .unwrap()
                .count(),
            0,
            "{who:?}"
        );
    }
}

/// `eskrun ps` as rows of words.
fn ps(w: &World) -> Vec<Vec<String>> {
    let (code, out, err) = output(w.eskrun(&["ps"]));
    assert_eq!(code, 0, "{:?}: {err}", w.who);
    out.lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn ps_lists_containers_and_rm_removes_stopped_ones() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        for name in ["kept", "old"] {
            let (code, _, err) = output(w.run(&img, &["--name", name, "img", "true"]));
            assert_eq!(code, 0, "{who:?}: {err}");
        }
        // A container kept by an earlier eskrun, which did not record the image.
        let record = w.path("state/containers/old/container.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("image").unwrap();
        std::fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();
        let (mut live, _out, live_init) = start_sleeper(&w, &img, &["--name", "live"]);
        assert_eq!(
            ps(&w),
            [
                vec!["NAME", "STATUS", "IMAGE"],
                vec!["kept", "stopped", "img"],
                vec!["live", "running", "img"],
                vec!["old", "stopped", "-"],
            ],
            "{who:?}"
        );

        // The running one is refused by name, the others go.
        let (code, out, err) = output(w.eskrun(&["rm", "kept", "live", "nosuch"]));
        assert_eq!((code, out.as_str()), (125, "kept\n"), "{who:?}: {err}");
        assert_eq!(
            err.trim_end(),
            "eskrun: the container \"live\" is running: end the eskrun that runs it first; \
             there is no container named \"nosuch\"",
            "{who:?}"
        );
        assert!(!w.path("state/containers/kept").exists(), "{who:?}");
        assert!(w.path("state/containers/live/upper").is_dir(), "{who:?}");

        // Once it has ended it is stopped, and goes too.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(live_init),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(live.wait().unwrap().code(), Some(137), "{who:?}");
        // One whose eskrun was killed holds no lock: stopped, though its init still runs
        // until `rm` (like any eskrun) cleans it up.
        let (mut orphan, _out, orphan_init) = start_sleeper(&w, &img, &["--name", "orphan"]);
        orphan.kill().unwrap();
        orphan.wait().unwrap();
        assert_eq!(
            ps(&w)[1..],
            [
                vec!["live", "stopped", "img"],
                vec!["old", "stopped", "-"],
                vec!["orphan", "stopped", "img"],
            ],
            "{who:?}"
        );
        let (code, out, err) = output(w.eskrun(&["rm", "live", "old", "orphan"]));
        assert_eq!(
            (code, out.as_str()),
            (0, "live\nold\norphan\n"),
            "{who:?}: {err}"
        );
        let gone = std::fs::read_to_string(format!("/proc/{}/stat", orphan_init))
            .map_or(true, |s| s.contains(") Z "));
        assert!(gone, "{who:?}: the orphan's init still runs");
        assert_eq!(ps(&w), [vec!["NAME", "STATUS", "IMAGE"]], "{who:?}");
        assert_eq!(
            std::fs::read_dir(w.path("state/containers"))
                .unwrap()
                .count(),
            0,
            "{who:?}"
        );
    }
}

#[test]
fn stdout_to_dev_null_file_and_pipe() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let script = "echo out || exit 9; echo err >&2 || exit 10";
        let status = w
            .run(&img, &["--rm", "img", "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "{who:?}: writing to /dev/null failed"
        );

        let file = w.path("out.txt");
        let f = std::fs::File::create(&file).unwrap();
        let status = w
            .run(&img, &["--rm", "img", "sh", "-c", script])
            .stdout(f)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(0), "{who:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "out\n");

        let (code, out, err) = output(w.run(&img, &["--rm", "img", "sh", "-c", script]));
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "out\n", "err\n"),
            "{who:?}"
        );

        // -i passes stdin through; without it the container reads nothing.
        let mut child = w
            .run(&img, &["--rm", "-i", "img", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped in\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "piped in\n",
            "{who:?}"
        );
    }
}

#[test]
fn two_containers_of_one_image_at_once() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        w.user_dir("shared");
        let meet = |me: &str, other: &str| {
            format!("touch /s/{me}; while [ ! -e /s/{other} ]; do sleep 0.05; done; echo met")
        };
        let a = w
            .run(
                &img,
                &[
                    "--rm",
                    "-v",
                    "./shared:/s",
                    "img",
                    "sh",
                    "-c",
                    &meet("a", "b"),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let b = w
            .run(
                &img,
                &[
                    "--rm",
                    "-v",
                    "./shared:/s",
                    "img",
                    "sh",
                    "-c",
                    &meet("b", "a"),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        for c in [a, b] {
            let out = c.wait_with_output().unwrap();
            assert_eq!(
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).as_ref()
                ),
                (Some(0), "met\n"),
                "{who:?}"
            );
        }
    }
}

/// eskrun with a pseudo-terminal as its controlling terminal, the test holding the master as a
/// terminal emulator does: what it writes there is typed, what eskrun writes is read from it.
struct Terminal {
    who: Who,
    master: std::fs::File,
    child: Child,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Output not yet consumed by [`Terminal::expect`].
    pending: String,
}

/// How long a [`Terminal`] waits for output before it calls eskrun hung.
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(60);

nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, nix::libc::winsize);

fn winsize(rows: u16, cols: u16) -> nix::libc::winsize {
    nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Terminal {
    /// Starts `cmd` in a new session on a new terminal of `rows` x `cols`.
    fn spawn(who: Who, mut cmd: Command, rows: u16, cols: u16) -> Terminal {
        use std::os::unix::process::CommandExt;
        let pty = nix::pty::openpty(Some(&winsize(rows, cols)), None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // Our copies of the slave go: the output ends when eskrun's do.
        drop(cmd);
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no process holds the slave any more.
            while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Terminal {
            who,
            master,
            child,
            output,
            pending: String::new(),
        }
    }

    fn type_in(&mut self, keys: &str) {
        std::io::Write::write_all(&mut self.master, keys.as_bytes()).unwrap();
    }

    /// Waits for `want` in the output; returns the output up to it, which is consumed.
    fn expect(&mut self, want: &str) -> String {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(at) = self.pending.find(want) {
                return self.pending.drain(..at + want.len()).collect();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.pending.push_str(&String::from_utf8_lossy(&bytes)),
                Err(e) => panic!(
                    "{:?}: no {want:?} from eskrun ({e}); it wrote {:?}",
                    self.who, self.pending
                ),
            }
        }
    }

    /// Changes the window size, as a terminal emulator does when its window is resized, and
    /// tells eskrun with SIGWINCH (the kernel also sends it to the terminal's foreground).
    fn resize(&mut self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid winsize for TIOCSWINSZ on our own master.
        unsafe { set_winsize(self.master.as_raw_fd(), &winsize(rows, cols)) }.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGWINCH,
        )
        .unwrap();
    }

    /// Waits until eskrun has ended and closed the terminal: its exit code and the rest of
    /// the output.
    fn finish(mut self) -> (i32, String) {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.pending.push_str(&String::from_utf8_lossy(&bytes)),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!(
                    "{:?}: eskrun did not end ({e}); it wrote {:?}",
                    self.who, self.pending
                ),
            }
        }
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        (code, std::mem::take(&mut self.pending))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A failed test leaves no eskrun behind (a passing one has been waited for).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tty_session_through_a_pseudo_terminal() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let mut t = Terminal::spawn(who, w.run(&img, &["--rm", "-it", "img", "sh"]), 33, 101);
        // What is typed is echoed: the expected output is computed, so the echo never matches.
        t.type_in(
            "test -t 0 && echo is-a-tty$((1)); echo $((6*7)) $TERM; stty size; echo end$((1))\r",
        );
        let seen = t.expect("end1");
        assert!(seen.contains("is-a-tty1"), "{who:?}: {seen:?}");
        assert!(seen.contains("42 xterm"), "{who:?}: {seen:?}");
        assert!(seen.contains("33 101"), "{who:?}: {seen:?}");
        // The window changes mid-session: the container's terminal follows.
        t.resize(40, 120);
        t.type_in("stty size; echo end$((2))\r");
        let seen = t.expect("end2");
        assert!(seen.contains("40 120"), "{who:?}: {seen:?}");
        t.type_in("exit 5\r");
        assert_eq!(t.finish().0, 5, "{who:?}");

        // A command that looks at once sees the size, with or without -i.
        for flags in ["-it", "-t"] {
            let t = Terminal::spawn(
                who,
                w.run(&img, &["--rm", flags, "img", "stty", "size"]),
                33,
                101,
            );
            let (code, out) = t.finish();
            assert_eq!((code, out.trim()), (0, "33 101"), "{who:?} {flags}");
        }
    }
}

#[test]
fn ctrl_c_interrupts_and_ctrl_d_ends_under_tty() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        // An interactive shell: Ctrl-C ends its foreground job, the shell goes on; Ctrl-D at
        // its prompt ends it.
        let sh = ["--rm", "-it", "-e", "PS1=prompt> ", "img", "sh"];
        let mut t = Terminal::spawn(who, w.run(&img, &sh), 24, 80);
        t.type_in("sh -c 'echo sleeping$((1)); exec sleep 100'\r");
        t.expect("sleeping1");
        t.type_in("\x03");
        t.type_in("echo status $?$((0))\r");
        t.expect("status 1300");
        // Only at the prompt: the shell edits its line in raw mode, and a Ctrl-D typed ahead
        // while the terminal is still in its line mode would be lost in the switch.
        t.expect("prompt> ");
        t.type_in("\x04");
        assert_eq!(t.finish().0, 0, "{who:?}");

        // Ctrl-D is the end of input for a program reading the terminal as it is.
        let mut t = Terminal::spawn(
            who,
            w.run(
                &img,
                &["--rm", "-it", "img", "sh", "-c", "echo ready; exec cat"],
            ),
            24,
            80,
        );
        t.expect("ready");
        t.type_in("typed\r");
        // The terminal's echo, then cat's copy.
        t.expect("typed");
        t.expect("typed");
        t.type_in("\x04");
        assert_eq!(t.finish().0, 0, "{who:?}");

        // Without -i eskrun reads no input, yet Ctrl-C reaches the container's foreground.
        // (The container's init ignores SIGINT, as a pid namespace's init does without a
        // handler; the command it waits for is killed, and its status passed on.)
        for flags in ["-it", "-t"] {
            let script = "sh -c 'echo sleeping; exec sleep 100'; exit $?";
            let mut t = Terminal::spawn(
                who,
                w.run(&img, &["--rm", flags, "img", "sh", "-c", script]),
                24,
                80,
            );
            t.expect("sleeping");
            t.type_in("\x03");
            assert_eq!(t.finish().0, 130, "{who:?} {flags}");
        }
    }
}

#[test]
fn a_killed_eskrun_is_cleaned_up_by_the_next_one() {
    // With keep-id the container's root is a subordinate id: only reachable from inside its
    // user namespace.
    let cases = [
        (Who::Root, ""),
        (Who::NoSubids, ""),
        (Who::Subids, ""),
        (Who::Subids, "--userns=keep-id"),
    ];
    for (who, userns) in cases {
        let w = World::new(who);
        let img = sh_image(&w);
        let name = format!("stale-{}", std::process::id());
        let (mut child, _out, init) = start_sleeper(
            &w,
            &img,
            &[
                "--userns",
                userns.trim_start_matches("--userns="),
                "--rm",
                "--name",
                &name,
            ],
        );
        // As real root the container has cgroups of its own (`/eskrun/<id>` under each v1
        // controller or the v2 root), which the clean-up must remove.
        let record = std::fs::read(
            w.path("state/containers")
                .join(&name)
                .join("container.json"),
        );
        let id = serde_json::from_slice::<serde_json::Value>(&record.unwrap()).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let cgroups = || -> Vec<std::path::PathBuf> {
            let mut dirs = vec![std::path::PathBuf::from("/sys/fs/cgroup/eskrun").join(&id)];
            for c in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
                dirs.push(c.unwrap().path().join("eskrun").join(&id));
            }
            dirs.into_iter().filter(|d| d.is_dir()).collect()
        };
        if who == Who::Root {
            assert!(!cgroups().is_empty(), "no cgroup for container {id}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            std::path::Path::new(&format!("/proc/{init}")).exists(),
            "the container should outlive eskrun"
        );
        let (code, _, err) = output(w.run(&img, &["--rm", "img", "true"]));
        assert_eq!(code, 0, "{who:?}: {err}");
        let gone = std::fs::read_to_string(format!("/proc/{init}/stat"))
            .map_or(true, |s| s.contains(") Z "));
        assert!(gone, "{who:?}: the stale container's init still runs");
        assert_eq!(cgroups(), Vec::<std::path::PathBuf>::new(), "{who:?}");
        assert!(!w.path("state/containers").join(&name).exists(), "{who:?}");
        assert_eq!(
            std::fs::read_dir(w.path("state/containers"))
                .unwrap()
                .count(),
            0,
            "{who:?}"
        );
    }
}

#[test]
fn bad_input_gives_one_clear_line() {
    for who in [Who::Root, Who::Subids] {
        let w = World::new(who);
        let img = sh_image(&w);
        let (code, _, err) = output(w.run(
            &img,
            &["--rm", "-v", "/nonexistent-eskrun-src:/x", "img", "true"],
        ));
        assert_eq!(code, 125);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("eskrun: mount source /nonexistent-eskrun-src does not exist"),
            "{err}"
        );
        let (code, _, err) = output(w.run(&img, &["--rm", "-u", "nosuchuser", "img", "true"]));
        assert_eq!(code, 125);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("unable to find user nosuchuser"), "{err}");
        let (code, _, err) = output(w.run(&img, &["img", "/no/such/binary"]));
        assert_eq!((code, err.as_str()), (127, "eskrun: /no/such/binary: executable file not found in the container (nor in its $PATH)\n"));
        let (code, _, err) = output(w.run(&img, &["--rm", "img", "/etc/passwd"]));
        assert_eq!((code, err.lines().count()), (126, 1), "{err}");
        let (code, _, err) = output(w.run(&img, &["--rm", "-w", "/etc/passwd/x", "img", "true"]));
        assert_eq!((code, err.lines().count()), (125, 1), "{err}");
        assert!(err.contains("working directory /etc/passwd/x"), "{err}");
        // Containers that never started leave nothing behind, --rm or not.
        assert_eq!(
            std::fs::read_dir(w.path("state/containers"))
                .unwrap()
                .count(),
            0
        );
    }
}

/// A busybox image pushed to a real registry: busybox and its applets, passwd/group, and a
/// second layer that adds a file and whites one out.
fn push_busybox(registry: &common::registry::TestRegistry, config: serde_json::Value) -> String {
    push_busybox_with(registry, config, Vec::new())
}

/// [`push_busybox`] with `extra` layers on top.
fn push_busybox_with(
    registry: &common::registry::TestRegistry,
    config: serde_json::Value,
    extra: Vec<common::layers::Layer>,
) -> String {
    use common::layers::Layer;
    let mut base = Layer::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("root", 0o700)
        .dir("tmp", 0o1777)
        .file(
            "bin/busybox",
            0o755,
            &std::fs::read("/bin/busybox").unwrap(),
        )
        .file("etc/passwd", 0o644, rootless::PASSWD.as_bytes())
        .file("etc/group", 0o644, rootless::GROUP.as_bytes())
        .file("etc/removed", 0o644, b"lower");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .filter(|a| *a != "busybox")
    {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let top = Layer::new()
        .dir("etc", 0o755)
        .file("etc/added", 0o644, b"upper\n")
        .whiteout("etc/removed");
    let spec = common::registry::ImageSpec::with_layers(
        common::registry::Format::Oci,
        [base, top]
            .into_iter()
            .chain(extra)
            .map(|l| common::registry::Layer::gzip(&l.tar()))
            .collect(),
    )
    .config(config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(registry.push_image("test/busybox", "1", &spec));
    format!("{}/test/busybox:1", registry.host)
}

#[test]
fn pulls_a_missing_image_then_runs_it_from_the_cache() {
    let registry = common::registry::TestRegistry::start(common::registry::Mode::Plain);
    let image = push_busybox(
        &registry,
        json!({"Cmd": ["sh", "-c", "cat /etc/added; test -e /etc/removed || echo gone; id -u"]}),
    );
    for who in ALL {
        let w = World::new(who);
        for _ in 0..2 {
            let (code, out, err) = output(w.eskrun(&["run", "--rm", image.as_str()]));
            assert_eq!(
                (code, out.as_str()),
                (0, "upper\ngone\n0\n"),
                "{who:?}: {err}"
            );
        }
        let missing = format!("{}/test/nothing:1", registry.host);
        let (code, out, err) = output(w.eskrun(&["run", "--rm", missing.as_str()]));
        assert_ne!(code, 0, "{who:?}");
        assert_eq!(out, "");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("eskrun:")).count(),
            1,
            "{who:?}: {err}"
        );
        assert!(err.contains("test/nothing"), "{who:?}: {err}");
    }
}

#[test]
fn prune_and_rmi_keep_the_layers_of_existing_containers() {
    let registry = common::registry::TestRegistry::start(common::registry::Mode::Plain);
    let image = push_busybox(&registry, json!({"Cmd": ["true"]}));
    let w = World::new(Who::Root);
    let layers = |w: &World| -> usize {
        let dir = w.path("state/cache/v1/layers/sha256");
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    };
    let (code, _, err) = output(w.eskrun(&["run", "--name", "kept", image.as_str()]));
    assert_eq!(code, 0, "{err}");
    assert!(layers(&w) > 0);
    let before = layers(&w);
    // The image goes, but the kept container still stacks its layers.
    let (code, out, err) = output(w.eskrun(&["rmi", image.as_str()]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 layers"), "{out}");
    assert_eq!(layers(&w), before);
    let (code, out, err) = output(w.eskrun(&["prune"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 layers"), "{out}");
    assert_eq!(layers(&w), before);
    // Once the container is removed, nothing holds them.
    let (code, _, err) = output(w.eskrun(&["down", "kept"]));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = output(w.eskrun(&["prune"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{before} layers")), "{out}");
    assert_eq!(layers(&w), 0);
}

#[test]
fn keep_id_keeps_the_host_ids_inside() {
    let w = World::new(Who::Subids);
    let a = w.account.clone().unwrap();
    let img = w.image_config(json!({"Cmd": ["sh"]}));
    let src = w.user_dir("src");
    // The image starts as root (a subordinate id here); the host user is itself inside, so
    // the seed's `chown -R $HOST_USER_ID` leaves the mounted tree the host user's.
    std::fs::write(src.join("f"), "").unwrap();
    std::os::unix::fs::chown(src.join("f"), Some(a.uid), Some(a.gid)).unwrap();
    let script = format!("id -u; chown -R {}:{} /src", a.uid, a.gid);
    let (code, out, err) = output(w.run(
        &img,
        &[
            "--rm",
            "--userns=keep-id",
            "-v",
            "./src:/src",
            "img",
            "sh",
            "-c",
            &script,
        ],
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0\n");
    assert_eq!(std::fs::metadata(src.join("f")).unwrap().uid(), a.uid);
    assert_eq!(std::fs::metadata(&src).unwrap().uid(), a.uid);
    let (code, out, err) = output(w.run(
        &img,
        &[
            "--rm",
            "--userns=keep-id",
            "-u",
            &a.uid.to_string(),
            "-v",
            "./src:/src",
            "img",
            "sh",
            "-c",
            "id -u; touch /src/g",
        ],
    ));
    assert_eq!((code, out), (0, format!("{}\n", a.uid)), "{err}");
    assert_eq!(std::fs::metadata(src.join("g")).unwrap().uid(), a.uid);

    // Without subordinate ids, keep-id cannot give root an id: one line says so.
    let w = World::new(Who::NoSubids);
    let img = w.image_config(json!({"Cmd": ["sh"]}));
    let (code, _, err) = output(w.run(&img, &["--rm", "--userns=keep-id", "img", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("--userns=keep-id needs a subordinate id range"),
        "{err}"
    );
}

#[test]
fn network_read_only_and_tmpfs() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "--network",
                "none",
                "img",
                "sh",
                "-c",
                "ls /sys/class/net; ping -c1 -W2 127.0.0.1 >/dev/null && echo lo-up",
            ],
        ));
        assert_eq!((code, out.as_str()), (0, "lo\nlo-up\n"), "{who:?}: {err}");
        let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
        let (code, out, err) = output(w.run(&img, &["--rm", "img", "ls", "/sys/class/net"]));
        assert_eq!(
            (code, out.lines().count()),
            (0, host_ifaces),
            "{who:?}: {err}"
        );

        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "--read-only",
                "--tmpfs",
                "/scratch",
                "img",
                "sh",
                "-c",
                "touch /x 2>/dev/null && echo rw; touch /scratch/y && echo tmpfs",
            ],
        ));
        assert_eq!((code, out.as_str()), (0, "tmpfs\n"), "{who:?}: {err}");
    }
}

#[test]
fn up_keeps_the_writable_layer_until_down() {
    let registry = common::registry::TestRegistry::start(common::registry::Mode::Plain);
    let image = push_busybox(&registry, json!({"Cmd": ["sh"]}));
    for who in ALL {
        let w = World::new(who);
        let project = w.user_dir("My Project");
        std::fs::write(project.join("eskrun.toml"), format!("image = {image:?}\n")).unwrap();
        std::fs::write(project.join("hello"), "from the project\n").unwrap();
        let dir = project.to_str().unwrap();
        let (code, out, err) = output(w.eskrun(&[
            "up",
            "--mount",
            dir,
            "sh",
            "-c",
            "cat /opt/eskapade/hello; echo kept > /state",
        ]));
        assert_eq!(
            (code, out.as_str()),
            (0, "from the project\n"),
            "{who:?}: {err}"
        );
        let (code, out, err) = output(w.eskrun(&["up", "--mount", dir, "cat", "/state"]));
        assert_eq!((code, out.as_str()), (0, "kept\n"), "{who:?}: {err}");
        assert!(w.path("state/containers/my-project").is_dir());
        assert_eq!(ps(&w)[1], ["my-project", "stopped", &image], "{who:?}");

        let (code, _, err) = output(w.eskrun(&["down", "my-project"]));
        assert_eq!(code, 0, "{who:?}: {err}");
        assert!(!w.path("state/containers/my-project").exists(), "{who:?}");
        let (code, _, err) = output(w.eskrun(&["down", "my-project"]));
        assert_eq!(code, 125);
        assert_eq!(
            err.trim(),
            "eskrun: there is no container named \"my-project\""
        );
    }
}

#[test]
fn many_layers_fit_in_one_overlay_mount() {
    for who in [Who::Root, Who::Subids] {
        let mut w = World::new(who);
        // 60 layers at ~130-byte paths: more than a page of mount options.
        for i in 0..60 {
            w.add_layer(&[(&format!("many/{i}"), "x"), ("many/top", &i.to_string())]);
        }
        let img = sh_image(&w);
        let (code, out, err) = output(w.run(
            &img,
            &["--rm", "img", "sh", "-c", "ls /many | wc -l; cat /many/top"],
        ));
        assert_eq!(
            (code, out.split_whitespace().collect::<Vec<_>>()),
            (0, vec!["61", "59"]),
            "{who:?}: {err}"
        );
    }
}

#[test]
fn private_network_publishes_ports() {
    for who in ALL {
        let w = World::new(who);
        let img = sh_image(&w);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let publish = format!("127.0.0.1:{port}:8080");
        let mut child = w
            .run(
                &img,
                &[
                    "--rm",
                    "--network",
                    "private",
                    "-p",
                    &publish,
                    "img",
                    "sh",
                    "-c",
                    "echo hello | nc -l -p 8080",
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The server may not listen yet: a connection that finds none is closed, so retry.
        let reply = loop {
            let mut s = String::new();
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = std::io::Read::read_to_string(&mut c, &mut s);
            }
            if !s.is_empty() {
                break s;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{who:?}: the container ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(reply, "hello\n", "{who:?}");
        assert_eq!(child.wait().unwrap().code(), Some(0), "{who:?}");
    }
}

#[test]
fn supplementary_groups() {
    for who in [Who::Root, Who::Subids] {
        let w = World::new(who);
        let img = w.image_config(json!({"Cmd": ["sh"], "User": "esdev"}));
        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "--group-add",
                "tty",
                "--group-add",
                "4242",
                "img",
                "id",
                "-G",
            ],
        ));
        assert_eq!((code, out.as_str()), (0, "1000 5 4242\n"), "{who:?}: {err}");
        // None of eskrun's own supplementary groups leak in.
        let (code, out, err) = output(w.run(
            &img,
            &["--rm", "-u", "0", "--userns=keep-id", "img", "id", "-G"],
        ));
        assert_eq!((code, out.as_str()), (0, "0\n"), "{who:?}: {err}");
    }
    let w = World::new(Who::NoSubids);
    let img = w.image_config(json!({"Cmd": ["sh"], "User": "esdev"}));
    let (code, out, err) = output(w.run(&img, &["--rm", "--group-add", "4242", "img", "id", "-G"]));
    assert_eq!((code, out.as_str()), (0, "1000\n"), "{err}");
    assert!(
        err.contains("supplementary groups 4242 are left out"),
        "{err}"
    );
}

#[test]
fn layers_are_copied_where_overlay_cannot_take_them() {
    for who in ALL {
        let mut w = World::new(who);
        // overlayfs cannot take a ':' in a layer path: eskrun copies the layers instead.
        let odd = w.path("layers/odd:name");
        std::fs::rename(&w.layers[1], &odd).unwrap();
        w.layers[1] = odd;
        let img = sh_image(&w);
        let (code, out, err) = output(w.run(
            &img,
            &[
                "--rm",
                "--hostname",
                "hx",
                "img",
                "sh",
                "-c",
                "cat /etc/added; test -e /etc/removed || echo gone; cat /etc/hostname",
            ],
        ));
        // Without the init layer, the /etc files are bind-mounted.
        assert_eq!(
            (code, out.as_str()),
            (0, "upper\ngone\nhx\n"),
            "{who:?}: {err}"
        );
        assert!(
            err.contains("copying the image's layers instead"),
            "{who:?}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(w.path("state/containers"))
                .unwrap()
                .count(),
            0,
            "{who:?}"
        );
    }
}

#[test]
fn resource_limits_as_root_and_a_clear_refusal_rootless() {
    let w = World::new(Who::Root);
    let img = sh_image(&w);
    let limits = ["--memory", "64m", "--cpus", "0.5", "--pids-limit", "50"];
    let mut args = vec!["--rm"];
    args.extend(limits);
    let (mut child, _out, init) = start_sleeper(&w, &img, &args);
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let path = |controller: &str| {
        let line = cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == controller))
            })
            .unwrap();
        format!(
            "/sys/fs/cgroup/{controller}{}",
            line.rsplit(':').next().unwrap()
        )
    };
    let read = |p: String| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert!(path("memory").contains("/eskrun/"), "{cgroups}");
    assert_eq!(
        read(format!("{}/memory.limit_in_bytes", path("memory"))),
        (64 << 20).to_string()
    );
    assert_eq!(read(format!("{}/pids.max", path("pids"))), "50");
    assert_eq!(read(format!("{}/cpu.cfs_quota_us", path("cpu"))), "50000");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));

    let w = World::new(Who::Subids);
    let img = sh_image(&w);
    let (code, _, err) = output(w.run(&img, &["--rm", "--memory", "64m", "img", "true"]));
    assert_eq!((code, err.lines().count()), (125, 1), "{err}");
    assert!(
        err.contains("--memory, --cpus and --pids-limit need a cgroup"),
        "{err}"
    );
}

/// The seed's multi-user case: an image whose files belong to several of its users. With a
/// subordinate range they keep those owners rootless, whoever the container runs as, so an
/// image user can write its own directories and not root's; rmi then removes it all.
#[test]
fn image_files_keep_their_owners_rootless() {
    use common::layers::{Layer, Meta};
    let registry = common::registry::TestRegistry::start(common::registry::Mode::Plain);
    let esdev = Meta::mode(0o750).owner(1000, 1000);
    let image = push_busybox_with(
        &registry,
        json!({"Cmd": ["sh"]}),
        vec![
            Layer::new()
                .dir("home", 0o755)
                .dir_with("home/esdev", esdev)
                .file_with(
                    "home/esdev/own",
                    Meta::mode(0o640).owner(1000, 1000),
                    b"mine",
                )
                .hardlink("home/esdev/link", "home/esdev/own")
                .dir_with("var/www", Meta::mode(0o755).owner(33, 33))
                .file("bin/suid", 0o4755, b"x")
                .dir("opt", 0o755)
                .dir("opt/data", 0o755)
                .file("opt/data/old", 0o644, b""),
            Layer::new().dir("opt", 0o755).opaque("opt/data").file_with(
                "opt/data/new",
                Meta::mode(0o644).owner(1000, 1000),
                b"",
            ),
        ],
    );
    let show = "stat -c '%u:%g %a %n' /etc /etc/passwd /home/esdev /home/esdev/own /var/www /bin/suid /opt/data/new; ls /opt/data; test -e /etc/removed || echo gone; cat /home/esdev/link; echo; stat -c %h /home/esdev/link";
    let want = "0:0 755 /etc\n0:0 644 /etc/passwd\n1000:1000 750 /home/esdev\n1000:1000 640 /home/esdev/own\n33:33 755 /var/www\n0:0 4755 /bin/suid\n1000:1000 644 /opt/data/new\nnew\ngone\nmine\n2\n";
    let write = "touch /home/esdev/new && echo wrote; touch /etc/x 2>/dev/null || echo denied";
    let notice = "giving the image's files their owners";
    for who in [Who::Root, Who::Subids] {
        let w = World::new(who);
        let run = |args: &[&str]| {
            let mut full = vec!["run", "--rm"];
            full.extend_from_slice(args);
            output(w.eskrun(&full))
        };
        for user in [&[][..], &["-u", "1000"], &["--userns=keep-id"]] {
            let args: Vec<&str> = user
                .iter()
                .copied()
                .chain([image.as_str(), "sh", "-c", show])
                .collect();
            let (code, out, err) = run(&args);
            assert_eq!((code, out.as_str()), (0, want), "{who:?} {user:?}: {err}");
            // Once per image and id mapping: a second run stacks the same copies.
            let (code, out, err2) = run(&args);
            assert_eq!((code, out.as_str()), (0, want), "{who:?} {user:?}: {err2}");
            assert!(!err2.contains(notice), "{who:?} {user:?}: {err2}");
            if who == Who::Subids && user.is_empty() {
                assert_eq!(err.matches(notice).count(), 1, "{err}");
            }
        }
        let (code, out, err) = run(&["-u", "1000", image.as_str(), "sh", "-c", write]);
        assert_eq!(
            (code, out.as_str()),
            (0, "wrote\ndenied\n"),
            "{who:?}: {err}"
        );

        let layers = w.path("state/cache/v1/layers/sha256");
        if let Some(a) = &w.account {
            // On the host, the copies belong to the user's subordinate ids, not to the user.
            let owned: Vec<u32> = std::fs::read_dir(&layers)
                .unwrap()
                .filter_map(|l| std::fs::read_dir(l.unwrap().path().join("owned")).ok())
                .flatten()
                .map(|c| std::fs::metadata(c.unwrap().path().join("home/esdev")))
                .filter_map(Result::ok)
                .map(|m| m.uid())
                .collect();
            assert!(!owned.is_empty());
            assert!(owned.iter().any(|uid| *uid != a.uid), "{owned:?}");
        }
        let (code, _, err) = output(w.eskrun(&["rmi", image.as_str()]));
        assert_eq!(code, 0, "{who:?}: {err}");
        assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0, "{who:?}");
    }
}
