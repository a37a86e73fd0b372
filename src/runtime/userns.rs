//! eskrun's own namespaces, entered while the process is still single-threaded.
//!
//! Rootless, eskrun unshares user+mount+cgroup namespaces and maps the invoking host user to the
//! container process's user, so files it writes in a bind mount belong to the host user. With
//! an /etc/subuid range the other container ids go to the range (`newuidmap`, run by a helper
//! forked before the unshare: a setuid binary cannot gain its privilege from inside). Then `/`
//! is made private and cgroup2 is mounted on /sys/fs/cgroup, which makes libcontainer choose
//! its v2 manager and leave the container in eskrun's cgroup when it may not create one.
//! As real root only a private mount namespace is needed: ids and cgroups are the host's.

use std::io::{Read, Write};
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getgid, getuid, ForkResult, Pid};

/// One line of a uid_map/gid_map: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How eskrun's namespace maps ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Real root: no user namespace, ids are the host's.
    Root,
    Rootless {
        uids: Vec<IdRange>,
        gids: Vec<IdRange>,
    },
}

impl Identity {
    pub fn is_rootless(&self) -> bool {
        matches!(self, Identity::Rootless { .. })
    }

    /// Whether setgroups(2) is allowed: denied when one gid is mapped without newgidmap.
    pub fn can_setgroups(&self) -> bool {
        match self {
            Identity::Root => true,
            Identity::Rootless { uids, gids } => uids.len() > 1 || gids.len() > 1,
        }
    }

    /// Container gids that exist, as `(first, count)`; `None` means all of them.
    pub fn mapped_gids(&self) -> Option<Vec<(u32, u32)>> {
        match self {
            Identity::Root => None,
            Identity::Rootless { gids, .. } => {
                Some(gids.iter().map(|r| (r.inside, r.count)).collect())
            }
        }
    }

    /// With a subordinate range mapped, a short name for the mapping: files chowned in it are
    /// right only for it.
    pub fn mapping_key(&self) -> Option<String> {
        match self {
            Identity::Rootless { uids, gids } if uids.len() > 1 && gids.len() > 1 => {
                let both = format!("{}|{}", map_text(uids), map_text(gids));
                Some(crate::digest::sha256_digest(both.as_bytes())[7..23].to_owned())
            }
            _ => None,
        }
    }

    /// Whether container ids `uid` and `gid` exist in the mapping.
    pub fn maps(&self, uid: u32, gid: u32) -> bool {
        let covers = |ranges: &[IdRange], id: u32| {
            ranges
                .iter()
                .any(|r| id >= r.inside && id - r.inside < r.count)
        };
        match self {
            Identity::Root => true,
            Identity::Rootless { uids, gids } => covers(uids, uid) && covers(gids, gid),
        }
    }
}

/// `--userns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsernsMode {
    /// The host user becomes the container process's user.
    #[default]
    Auto,
    /// The host user keeps its own uid/gid inside (podman's meaning).
    KeepId,
}

/// Decides the maps for a container process running as `uid:gid`.
pub fn plan(uid: u32, gid: u32, mode: UsernsMode) -> Result<Identity> {
    let (host_uid, host_gid) = (getuid().as_raw(), getgid().as_raw());
    if host_uid == 0 && is_initial_userns() {
        return Ok(Identity::Root);
    }
    let name = nix::unistd::User::from_uid(getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    let sub_uids = subordinate("/etc/subuid", name.as_deref(), host_uid);
    let sub_gids = subordinate("/etc/subgid", name.as_deref(), host_uid);
    let have_tools = which("newuidmap") && which("newgidmap");
    let (uid_at, gid_at) = match mode {
        UsernsMode::Auto => (uid, gid),
        UsernsMode::KeepId => (host_uid, host_gid),
    };
    match (sub_uids, sub_gids, have_tools) {
        (Some(su), Some(sg), true) => Ok(Identity::Rootless {
            uids: around(uid_at, host_uid, su),
            gids: around(gid_at, host_gid, sg),
        }),
        _ => {
            if mode == UsernsMode::KeepId && (uid != host_uid || gid != host_gid) {
                bail!(
                    "--userns=keep-id needs a subordinate id range (/etc/subuid and /etc/subgid for this user, and newuidmap) to give the container's user {uid}:{gid} an id; without one, run it as yourself with --user {host_uid}:{host_gid}"
                );
            }
            note_once(
                "eskrun: no /etc/subuid range for this user: only the container's user is mapped, so files the image gives to other users show as owned by it and it cannot switch users (ask for a range: usermod --add-subuids/--add-subgids)"
            );
            Ok(Identity::Rootless {
                uids: vec![IdRange {
                    inside: uid_at,
                    outside: host_uid,
                    count: 1,
                }],
                gids: vec![IdRange {
                    inside: gid_at,
                    outside: host_gid,
                    count: 1,
                }],
            })
        }
    }
}

/// Maps `at` to the host id and fills the other ids from the subordinate range `(start, count)`.
/// Prints `line` once per state directory, not on every run.
fn note_once(line: &str) {
    let marker = crate::dirs::state_dir().join("noted-no-subuid");
    if !marker.exists() {
        eprintln!("{line}");
        let _ = fs_err::create_dir_all(crate::dirs::state_dir())
            .and_then(|()| fs_err::write(&marker, line));
    }
}

fn around(at: u32, host: u32, (start, count): (u32, u32)) -> Vec<IdRange> {
    let mut v = Vec::new();
    let below = at.min(count);
    if below > 0 {
        v.push(IdRange {
            inside: 0,
            outside: start,
            count: below,
        });
    }
    v.push(IdRange {
        inside: at,
        outside: host,
        count: 1,
    });
    if count > below {
        v.push(IdRange {
            inside: at + 1,
            outside: start + below,
            count: count - below,
        });
    }
    v
}

fn subordinate(file: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    let uid = uid.to_string();
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() == 3 && (Some(f[0]) == name || f[0] == uid) {
            Some((f[1].parse().ok()?, f[2].parse().ok()?))
        } else {
            None
        }
    })
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn is_initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// Rootless, enters a namespace where root is the host user and the other ids are its
/// subordinate range (if it has one): there eskrun may remove files owned by any container id,
/// in writable layers and layers given their image owners. Real root needs nothing. Must be
/// called while the process is single-threaded.
pub fn enter_to_remove() -> Result<()> {
    match plan(0, 0, UsernsMode::Auto)? {
        Identity::Root => Ok(()),
        identity => enter(&identity),
    }
}

/// Enters eskrun's namespaces. Must be called while the process is single-threaded.
pub fn enter(identity: &Identity) -> Result<()> {
    match identity {
        Identity::Root => {
            unshare(CloneFlags::CLONE_NEWNS).context("creating a mount namespace")?;
            make_private()
        }
        Identity::Rootless { uids, gids } => {
            let helper = if uids.len() > 1 || gids.len() > 1 {
                Some(MapHelper::fork(uids, gids)?)
            } else {
                None
            };
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
                .context("creating a user namespace (are unprivileged user namespaces enabled? see sysctl kernel.unprivileged_userns_clone and user.max_user_namespaces)")?;
            match helper {
                Some(h) => h.finish()?,
                None => {
                    fs_err::write("/proc/self/setgroups", "deny")?;
                    fs_err::write("/proc/self/uid_map", map_text(uids))?;
                    fs_err::write("/proc/self/gid_map", map_text(gids))?;
                }
            }
            verify("/proc/self/uid_map", uids)?;
            verify("/proc/self/gid_map", gids)?;
            make_private()?;
            mount_cgroup2()
        }
    }
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

/// newuidmap's exit status is not always telling: the map itself is the truth.
fn verify(file: &str, want: &[IdRange]) -> Result<()> {
    let text = fs_err::read_to_string(file)?;
    let got: Vec<IdRange> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| IdRange {
                inside: f[0],
                outside: f[1],
                count: f[2],
            })
        })
        .collect();
    if got != want {
        bail!(
            "{file} is {:?} instead of {:?}: check this user's /etc/subuid and /etc/subgid ranges",
            text.trim(),
            map_text(want).trim()
        );
    }
    Ok(())
}

fn make_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / a private mount tree")
}

fn mount_cgroup2() -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let cg = |_: ()| {
        mount(
            Some("cgroup2"),
            "/sys/fs/cgroup",
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
    };
    match cg(()) {
        Err(nix::errno::Errno::EBUSY) => {
            // A pure cgroup-v2 host: cgroup2 is already there; a tmpfs first gives a fresh spot.
            mount(
                Some("tmpfs"),
                "/sys/fs/cgroup",
                Some("tmpfs"),
                flags,
                None::<&str>,
            )
            .context("mounting a tmpfs on /sys/fs/cgroup")?;
            cg(()).context("mounting cgroup2 on /sys/fs/cgroup")
        }
        r => r.context("mounting cgroup2 on /sys/fs/cgroup"),
    }
}

/// A child forked before the unshare that runs newuidmap/newgidmap on its parent once told to.
struct MapHelper {
    pid: Pid,
    go: std::fs::File,
    result: std::fs::File,
}

impl MapHelper {
    fn fork(uids: &[IdRange], gids: &[IdRange]) -> Result<Self> {
        let (go_r, go_w) = nix::unistd::pipe()?;
        let (res_r, res_w) = nix::unistd::pipe()?;
        let parent = nix::unistd::getpid().to_string();
        let args = |r: &[IdRange]| -> Vec<String> {
            let mut a = vec![parent.clone()];
            for x in r {
                a.extend([
                    x.inside.to_string(),
                    x.outside.to_string(),
                    x.count.to_string(),
                ]);
            }
            a
        };
        let (uid_args, gid_args) = (args(uids), args(gids));
        // SAFETY: eskrun is single-threaded here, so the child may allocate and spawn.
        match unsafe { fork() }.context("forking the id-map helper")? {
            ForkResult::Child => {
                drop(go_w);
                drop(res_r);
                let mut go = std::fs::File::from(go_r);
                let mut res = std::fs::File::from(res_w);
                let mut b = [0u8; 1];
                let msg = if go.read(&mut b).unwrap_or(0) == 1 {
                    run_tools(&[("newuidmap", &uid_args), ("newgidmap", &gid_args)])
                } else {
                    Err("eskrun went away".into())
                };
                let _ = res.write_all(msg.err().unwrap_or_default().as_bytes());
                // SAFETY: leave without running the parent's destructors or atexit handlers.
                unsafe { nix::libc::_exit(0) }
            }
            ForkResult::Parent { child } => Ok(MapHelper {
                pid: child,
                go: std::fs::File::from(go_w),
                result: std::fs::File::from(res_r),
            }),
        }
    }

    fn finish(mut self) -> Result<()> {
        self.go.write_all(b"g")?;
        let mut msg = String::new();
        self.result.read_to_string(&mut msg)?;
        loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if !msg.is_empty() {
            bail!("{msg}");
        }
        Ok(())
    }
}

/// Runs the tools side by side (each is a setuid program that takes a millisecond or two to
/// start, on the path of every container start) and reports the first failure.
fn run_tools(tools: &[(&str, &[String])]) -> std::result::Result<(), String> {
    let children: Vec<_> = tools
        .iter()
        .map(|(tool, args)| {
            let child = Command::new(tool)
                .args(*args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn();
            (tool, args, child)
        })
        .collect();
    let mut result = Ok(());
    for (tool, args, child) in children {
        let outcome = match child.and_then(|c| c.wait_with_output()) {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{tool} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("running {tool}: {e}")),
        };
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_around_the_user() {
        let r = |i, o, c| IdRange {
            inside: i,
            outside: o,
            count: c,
        };
        assert_eq!(
            around(0, 1000, (100000, 65536)),
            [r(0, 1000, 1), r(1, 100000, 65536)]
        );
        assert_eq!(
            around(1000, 1001, (100000, 65536)),
            [r(0, 100000, 1000), r(1000, 1001, 1), r(1001, 101000, 64536)]
        );
        assert_eq!(
            around(70000, 5, (100000, 65536)),
            [r(0, 100000, 65536), r(70000, 5, 1)]
        );
    }
}
