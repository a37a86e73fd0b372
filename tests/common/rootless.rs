//! Test helpers for running eskrun as root and as real unprivileged users: users created with
//! useradd when missing (one with an /etc/subuid range, one without), busybox layer trees in
//! overlay format owned by whoever runs them, and the `eskrun` command line for each.

#![allow(dead_code)]

use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Who runs eskrun in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Root,
    /// An unprivileged user with no subordinate ids: one id mapped.
    NoSubids,
    /// An unprivileged user with /etc/subuid and /etc/subgid ranges.
    Subids,
}

pub const ALL: [Who; 3] = [Who::Root, Who::NoSubids, Who::Subids];

/// A user's ids and home.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Who {
    pub fn account(self) -> Option<Account> {
        match self {
            Who::Root => None,
            Who::NoSubids => Some(ensure_user("eskrun-t-nosub", false)),
            Who::Subids => Some(ensure_user("eskrun-t-sub", true)),
        }
    }
}

fn ensure_user(name: &str, subids: bool) -> Account {
    let u = super::common::users::ensure_user(name, true);
    // Parallel tests must not interleave their edits of /etc/subuid and /etc/subgid.
    let _lock = super::common::users::lock();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let has = text.lines().any(|l| l.split(':').next() == Some(name));
        if subids && !has {
            let next = text
                .lines()
                .filter_map(|l| {
                    let f: Vec<u64> = l
                        .split(':')
                        .skip(1)
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    (f.len() == 2).then(|| f[0] + f[1])
                })
                .max()
                .unwrap_or(100000)
                .max(100000);
            let mut t = text.clone();
            t.push_str(&format!("{name}:{next}:65536\n"));
            std::fs::write(file, t).unwrap();
        } else if !subids && has {
            let t: String = text
                .lines()
                .filter(|l| l.split(':').next() != Some(name))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(file, t).unwrap();
        }
    }
    Account {
        name: name.into(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    }
}

/// A test's world: a directory readable by the test user, a busybox image in it (layers owned
/// by the user, as `eskrun pull` would leave them), eskrun's state and cache inside.
pub struct World {
    pub who: Who,
    pub account: Option<Account>,
    pub dir: tempfile::TempDir,
    pub layers: Vec<PathBuf>,
}

pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nesdev:x:1000:1000:esdev:/home/esdev:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\ntty:x:5:\nesdev:x:1000:\n";

impl World {
    pub fn new(who: Who) -> World {
        let account = who.account();
        let dir = tempfile::Builder::new()
            .prefix("eskrun-run-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let l1 = dir.path().join("layers/1");
        let l2 = dir.path().join("layers/2");
        for d in ["bin", "etc", "root", "home/esdev", "tmp"] {
            std::fs::create_dir_all(l1.join(d)).unwrap();
        }
        std::fs::set_permissions(l1.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::copy("/bin/busybox", l1.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", l1.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(l1.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(l1.join("etc/group"), GROUP).unwrap();
        std::fs::write(l1.join("etc/removed"), "lower").unwrap();
        std::fs::create_dir_all(l2.join("etc")).unwrap();
        std::fs::write(l2.join("etc/added"), "upper\n").unwrap();
        nix::sys::stat::mknod(
            &l2.join("etc/removed"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        if let Some(a) = &account {
            chown_tree(&dir.path().join("layers"), a.uid, a.gid);
            chown_tree(&state, a.uid, a.gid);
            // The esdev home of the image belongs to esdev (1000) as far as the image knows;
            // rootless the user can only hand it its own id.
        } else {
            chown_tree(&l1.join("home/esdev"), 1000, 1000);
        }
        World {
            who,
            account,
            dir,
            layers: vec![l1, l2],
        }
    }

    /// Adds a layer on top holding `files` (path, content), at a deliberately long path.
    pub fn add_layer(&mut self, files: &[(&str, &str)]) {
        let n = self.layers.len();
        let dir = self
            .dir
            .path()
            .join(format!("layers/{n:03}-{}/tree", "x".repeat(64)));
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        if let Some(a) = &self.account {
            chown_tree(dir.parent().unwrap(), a.uid, a.gid);
        }
        self.layers.push(dir);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A directory owned by the test user (for bind mounts); as root, by the image's esdev.
    pub fn user_dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        match &self.account {
            Some(a) => chown_tree(&p, a.uid, a.gid),
            None => chown_tree(&p, 1000, 1000),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Writes an image configuration with the given `config` object and returns its path.
    pub fn image_config(&self, config: serde_json::Value) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("config-{}.json", rand_suffix()));
        let v = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": config,
        });
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// `eskrun run --layer ... --image-config CONFIG ARGS...` as this world's user.
    pub fn run(&self, config: &Path, args: &[&str]) -> Command {
        let mut full: Vec<String> = vec!["run".into()];
        for l in &self.layers {
            full.push("--layer".into());
            full.push(l.display().to_string());
        }
        full.push("--image-config".into());
        full.push(config.display().to_string());
        full.extend(args.iter().map(|s| s.to_string()));
        self.eskrun(&full)
    }

    /// `eskrun ARGS...` as this world's user, with a clean environment.
    pub fn eskrun<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let bin = env!("CARGO_BIN_EXE_eskrun");
        let mut cmd = match &self.account {
            None => Command::new(bin),
            Some(a) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", a.uid))
                    .arg(format!("--regid={}", a.gid))
                    .arg("--init-groups")
                    .arg(bin);
                c.env("HOME", &a.home)
                    .env("USER", &a.name)
                    .env("LOGNAME", &a.name);
                c
            }
        };
        cmd.args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("ESKRUN_LOG")
            .env("ESKRUN_STATE", self.path("state"))
            .env("ESKRUN_CACHE", self.path("state/cache"))
            .current_dir(self.dir.path());
        cmd
    }

    /// The uid that files created by the container's user show on the host.
    pub fn host_uid(&self, container_uid: u32) -> u32 {
        self.account.as_ref().map_or(container_uid, |a| a.uid)
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}
