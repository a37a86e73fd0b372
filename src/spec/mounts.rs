//! Docker's mount flags: `-v SRC:DST[:ro]`, `--mount type=bind|tmpfs,...` and `--tmpfs DST[:OPTS]`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One mount requested on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserMount {
    Bind {
        source: PathBuf,
        destination: String,
        readonly: bool,
    },
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
}

/// Parses `-v SRC:DST[:OPTS]`. A relative SRC is taken from `cwd`; a missing one is an error.
/// Named volumes are not supported (SRC must be a path).
pub fn parse_volume(arg: &str, cwd: &Path) -> Result<UserMount> {
    let parts: Vec<&str> = arg.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => bail!("invalid volume {arg:?}: expected SRC:DST[:ro]"),
    };
    if !(src.starts_with('/') || src.starts_with('.')) {
        bail!("invalid volume {arg:?}: named volumes are not supported, give a path (./{src} for one in the current directory)");
    }
    let mut readonly = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => readonly = true,
            "rw" | "z" | "Z" | "rprivate" | "private" => {}
            _ => bail!("invalid volume {arg:?}: unknown option {o:?}"),
        }
    }
    bind(src, dst, readonly, cwd, arg)
}

/// Parses `--mount type=bind,src=..,dst=..[,readonly]` and `--mount type=tmpfs,dst=..`.
pub fn parse_mount(arg: &str, cwd: &Path) -> Result<UserMount> {
    let (mut typ, mut src, mut dst, mut readonly) = ("volume", None, None, false);
    let mut tmpfs_opts = Vec::new();
    for field in arg.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k {
            "type" => typ = v,
            "source" | "src" => src = Some(v),
            "destination" | "dst" | "target" => dst = Some(v),
            "readonly" | "ro" => readonly = matches!(v, "" | "true" | "1"),
            "tmpfs-size" => tmpfs_opts.push(format!("size={v}")),
            "tmpfs-mode" => tmpfs_opts.push(format!("mode={v}")),
            "bind-propagation" | "consistency" => {}
            _ => bail!("invalid mount {arg:?}: unknown field {k:?}"),
        }
    }
    let dst = dst.with_context(|| format!("invalid mount {arg:?}: dst= is missing"))?;
    match typ {
        "bind" => {
            let src = src.with_context(|| format!("invalid mount {arg:?}: src= is missing"))?;
            bind(src, dst, readonly, cwd, arg)
        }
        "tmpfs" => Ok(UserMount::Tmpfs {
            destination: absolute_dst(dst, arg)?,
            options: tmpfs_opts,
        }),
        other => {
            bail!("invalid mount {arg:?}: type {other:?} is not supported (use bind or tmpfs)")
        }
    }
}

/// Parses `--tmpfs DST[:OPTS]`.
pub fn parse_tmpfs(arg: &str) -> Result<UserMount> {
    let (dst, opts) = arg.split_once(':').unwrap_or((arg, ""));
    Ok(UserMount::Tmpfs {
        destination: absolute_dst(dst, arg)?,
        options: opts
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

fn bind(src: &str, dst: &str, readonly: bool, cwd: &Path, arg: &str) -> Result<UserMount> {
    let source = cwd.join(src);
    if !source.exists() {
        bail!(
            "mount source {} does not exist (from {arg:?}); create it first",
            source.display()
        );
    }
    let source = fs_err::canonicalize(&source)?;
    Ok(UserMount::Bind {
        source,
        destination: absolute_dst(dst, arg)?,
        readonly,
    })
}

fn absolute_dst(dst: &str, arg: &str) -> Result<String> {
    if !dst.starts_with('/') || dst.split('/').any(|c| c == "..") {
        bail!("invalid mount {arg:?}: the destination {dst:?} must be an absolute path without ..");
    }
    Ok(dst.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_and_mounts() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        let real = std::fs::canonicalize(d.path().join("src")).unwrap();
        assert_eq!(
            parse_volume("./src:/opt/x:ro", d.path()).unwrap(),
            UserMount::Bind {
                source: real.clone(),
                destination: "/opt/x".into(),
                readonly: true
            }
        );
        let abs = format!("{}:/opt/x", real.display());
        assert!(matches!(
            parse_volume(&abs, d.path()).unwrap(),
            UserMount::Bind {
                readonly: false,
                ..
            }
        ));
        assert_eq!(
            parse_mount("type=bind,src=src,dst=/w,readonly", d.path()).unwrap(),
            UserMount::Bind {
                source: real,
                destination: "/w".into(),
                readonly: true
            }
        );
        let err = parse_volume("/nonexistent-eskrun:/x", d.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mount source /nonexistent-eskrun does not exist"),
            "{err}"
        );
        assert!(parse_volume("./src:rel", d.path()).is_err());
        assert!(parse_volume("named:/x", d.path()).is_err());
        assert!(parse_mount("type=volume,src=a,dst=/x", d.path()).is_err());
        assert_eq!(
            parse_tmpfs("/run:size=1m").unwrap(),
            UserMount::Tmpfs {
                destination: "/run".into(),
                options: vec!["size=1m".into()]
            }
        );
    }
}
