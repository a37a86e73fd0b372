//! Unprivileged users for the rootless tests, created once and kept (so a second run of the
//! suite finds them). Test binaries run in parallel: a file lock keeps their `useradd` and
//! `/etc/subuid` edits from interleaving.

use std::process::Command;

/// The passwd entry of `name`, created if missing (with a home directory when `home`).
pub fn ensure_user(name: &str, home: bool) -> nix::unistd::User {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create users and must run as root"
    );
    let _lock = lock();
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let mut useradd = Command::new("useradd");
        if home {
            useradd.arg("--create-home");
        } else {
            useradd.args(["--system", "--no-create-home"]);
        }
        // No automatic subordinate range: tests decide whether a user has one.
        let status = useradd
            .args(["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name])
            .args(["--shell", "/bin/sh"])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name}");
    }
    nix::unistd::User::from_name(name).unwrap().unwrap()
}

/// uid and gid of the system user `name`, created if missing.
pub fn ensure_ids(name: &str) -> (u32, u32) {
    let user = ensure_user(name, false);
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Held while `/etc/passwd`, `/etc/subuid` or `/etc/subgid` are changed.
pub fn lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::File::create("/tmp/eskrun-test-users.lock").unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap()
}
