//! The container's root: the cached layers stacked read-only by one overlay mount under the
//! container's own upper directory, mounted in eskrun's private mount namespace (so it goes
//! away with eskrun, whatever happens to it). Nothing is copied, whatever the image size.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};

/// Mounts `layers` (lowest first) at `target` with `upper`/`work` as the writable part.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    empty: &Path,
    target: &Path,
) -> Result<()> {
    // An image without layers still needs one lower directory.
    let lowers: Vec<&Path> = if layers.is_empty() {
        vec![empty]
    } else {
        layers.iter().rev().map(PathBuf::as_path).collect()
    };
    for dir in &lowers {
        if dir
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b':' | b','))
        {
            bail!(
                "layer directory {} has a ':' or ',' in its path, which overlayfs cannot take",
                dir.display()
            );
        }
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},userxattr",
        upper.display(),
        work.display()
    );
    // mount(2) options must fit in one page; many layers are given one by one instead.
    let mounted = if data.len() < PAGE_LIMIT {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
    } else {
        mount_layer_by_layer(&lowers, upper, work, target)
    };
    mounted.with_context(|| {
        format!(
            "mounting the image's {} layers as an overlay on {} (overlayfs in a user namespace needs Linux 5.11 or later, more than about 50 layers Linux 6.8)",
            lowers.len(),
            target.display()
        )
    })
}

/// The new mount API (fsopen/fsconfig, Linux 6.8 for `lowerdir+`): one option per layer,
/// without mount(2)'s one-page limit.
fn mount_layer_by_layer(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> nix::Result<()> {
    use nix::libc;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    const CLOEXEC: libc::c_uint = 1;
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| nix::errno::Errno::EINVAL);
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(r)
        }
    };
    let name = cstr(b"overlay")?;
    // SAFETY: plain syscalls with NUL-terminated strings that outlive them; returned fds are
    // owned right away.
    unsafe {
        let fs =
            OwnedFd::from_raw_fd(
                check(libc::syscall(libc::SYS_fsopen, name.as_ptr(), CLOEXEC))? as i32,
            );
        let set = |key: &str, value: &Path| -> nix::Result<()> {
            let (k, v) = (cstr(key.as_bytes())?, cstr(value.as_os_str().as_bytes())?);
            check(libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            ))
            .map(drop)
        };
        for lower in lowers {
            set("lowerdir+", lower)?;
        }
        set("upperdir", upper)?;
        set("workdir", work)?;
        let flag = cstr(b"userxattr")?;
        check(libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            0 as libc::c_uint,
            flag.as_ptr(),
            std::ptr::null::<u8>(),
            0,
        ))?;
        check(libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        ))?;
        let mnt = OwnedFd::from_raw_fd(check(libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            CLOEXEC,
            0 as libc::c_uint,
        ))? as i32);
        let (empty, to) = (cstr(b"")?, cstr(target.as_os_str().as_bytes())?);
        check(libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ))?;
    }
    Ok(())
}

const PAGE_LIMIT: usize = 4096;

/// Creates the working directory inside the mounted root if missing, as Docker does. A
/// symlink on the way is left to the runtime to resolve inside the container.
pub fn ensure_dir(rootfs: &Path, dir: &str) -> Result<()> {
    let mut path = rootfs.to_path_buf();
    for comp in Path::new(dir).components() {
        match comp {
            Component::Normal(c) => path.push(c),
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                bail!("invalid working directory {dir:?}")
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.is_symlink() => return Ok(()),
            Ok(_) => bail!(
                "the working directory {dir} cannot be created: {} is a file in the image",
                path.strip_prefix(rootfs).unwrap_or(&path).display()
            ),
            Err(_) => fs_err::create_dir(&path).context("creating the working directory")?,
        }
    }
    Ok(())
}
