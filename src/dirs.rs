//! Where eskrun keeps things. Each location can be overridden by an environment variable so
//! tests, CI jobs and HPC sites can put the cache on shared storage and the rest on local disk.

use std::path::PathBuf;

/// The rootfs cache: `$ESKRUN_CACHE`, else `$XDG_CACHE_HOME/eskrun`, else `~/.cache/eskrun`.
/// May live on a network filesystem shared by many jobs.
pub fn cache_dir() -> PathBuf {
    from_env("ESKRUN_CACHE").unwrap_or_else(|| xdg("XDG_CACHE_HOME", ".cache").join("eskrun"))
}

/// eskrun's own configuration (`config.toml`, `certs.d/`): `$ESKRUN_CONFIG`, else
/// `$XDG_CONFIG_HOME/eskrun`, else `~/.config/eskrun`.
pub fn config_dir() -> PathBuf {
    from_env("ESKRUN_CONFIG").unwrap_or_else(|| xdg("XDG_CONFIG_HOME", ".config").join("eskrun"))
}

/// Containers' writable layers and state: `$ESKRUN_STATE`, else `$XDG_DATA_HOME/eskrun`,
/// else `~/.local/share/eskrun`. Kept apart from the cache because overlay upper directories
/// must be on local disk even when the cache is on NFS.
pub fn state_dir() -> PathBuf {
    from_env("ESKRUN_STATE").unwrap_or_else(|| xdg("XDG_DATA_HOME", ".local/share").join("eskrun"))
}

/// The user's home directory: `$HOME`, else the passwd entry. `su`/`setpriv` may leave a
/// stale `$HOME`, so an empty one falls back to the passwd entry too.
pub fn home_dir() -> PathBuf {
    if let Some(home) = from_env("HOME") {
        return home;
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    from_env(var).unwrap_or_else(|| home_dir().join(fallback))
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
