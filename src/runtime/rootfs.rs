//! The container's root: the cached layers stacked read-only by one overlay mount under the
//! container's own upper directory, mounted in eskrun's private mount namespace (so it goes
//! away with eskrun, whatever happens to it). Nothing is copied, whatever the image size.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

/// A tmpfs for the container's short-lived files (the bundle's config.json, the /etc files,
/// the console socket) and the mount point of its root, mounted over one fixed directory in
/// eskrun's private mount namespace. Nothing of it is on disk, and nothing needs unmounting
/// or removing: it goes with the namespace when eskrun exits. Each eskrun has its own, so
/// containers running side by side share the directory without seeing each other's files.
/// (On a slow disk, creating and removing these files and unmounting the root took a few
/// milliseconds of every start.)
pub fn scratch() -> Result<PathBuf> {
    let dir = crate::dirs::state_dir().join("mnt");
    fs_err::create_dir_all(&dir)?;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=4m"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    fs_err::create_dir(dir.join("rootfs"))?;
    fs_err::create_dir(dir.join(super::LIBCONTAINER))?;
    Ok(dir)
}

/// Docker's "init layer": the mount points of the container's mounts that the image lacks,
/// made on the scratch tmpfs and stacked read-only above the image. libcontainer would
/// otherwise create them in the writable layer (copying /etc up for /etc/hosts), and every
/// start and removal would pay for those directories on disk. A directory on the way that
/// the image has keeps its mode, owner and times; a mount point behind a symlink or file
/// in the image is left to libcontainer, which resolves it inside the container.
///
/// The files eskrun provides (`provided`: /etc/hosts, /etc/hostname and /etc/resolv.conf,
/// bind mounts of these scratch files in `mounts`) are put in the layer themselves where
/// the image lets them be plain files: three bind mounts fewer for libcontainer to make
/// (~0.6 ms of every start here). The container sees the same files; a write copies one up
/// into its writable layer, and with `--read-only` they are read-only, as Docker has them.
/// Returns the layer and the provided files it holds, whose bind mounts are not needed.
pub fn init_layer(
    scratch: &Path,
    layers: &[PathBuf],
    mounts: &[Mount],
    provided: &[PathBuf],
) -> Result<(PathBuf, Vec<PathBuf>)> {
    let mut init = InitLayer {
        dir: scratch.join("init"),
        layers,
        seen: crate::spec::LayerLookups::default(),
        made: HashSet::new(),
        mirrored: Vec::new(),
    };
    fs_err::create_dir(&init.dir)?;
    let mut done: Vec<&Path> = Vec::new();
    let mut placed = Vec::new();
    for m in mounts {
        let dst = m.destination();
        // Inside an earlier mount, not in the root.
        if done.iter().any(|d| dst.starts_with(d)) {
            continue;
        }
        done.push(dst);
        let bound = m
            .source()
            .as_deref()
            .filter(|_| m.typ().as_deref() == Some("bind"));
        let point = match bound {
            Some(src) if provided.iter().any(|p| p == src) => Point::Content(src),
            Some(src) if !src.is_dir() => Point::EmptyFile,
            _ => Point::Dir,
        };
        if init.add_mount_point(dst, point)? {
            placed.extend(bound.map(Path::to_path_buf));
        }
    }
    for (dir, meta) in &init.mirrored {
        use std::os::unix::fs::MetadataExt;
        let time = |s, ns| nix::sys::time::TimeSpec::new(s, ns);
        let _ = nix::sys::stat::utimensat(
            None,
            dir,
            &time(meta.atime(), meta.atime_nsec()),
            &time(meta.mtime(), meta.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok((init.dir, placed))
}

/// What the init layer holds at a mount's destination.
enum Point<'a> {
    Dir,
    EmptyFile,
    /// A file eskrun provides, linked in with its content (over the image's, if it has one).
    Content(&'a Path),
}

/// The init layer being made. `made` and `seen` spare asking the filesystem twice about the
/// same path (`etc` is on the way to three provided files): ~15 system calls on the cache's
/// long paths fewer a start.
struct InitLayer<'a> {
    dir: PathBuf,
    layers: &'a [PathBuf],
    /// What the image's layers have, as looked up so far.
    seen: crate::spec::LayerLookups,
    /// What is in `dir` so far: only [`init_layer`] makes anything there.
    made: HashSet<PathBuf>,
    /// Directories that take the image's times, set once their entries are made.
    mirrored: Vec<(PathBuf, std::fs::Metadata)>,
}

impl InitLayer<'_> {
    /// Makes `dst`'s mount point, and the directories on its way. Returns whether it placed
    /// a [`Point::Content`] file.
    fn add_mount_point(&mut self, dst: &Path, point: Point) -> Result<bool> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let mut rel = PathBuf::new();
        let mut steps = Vec::new();
        for comp in dst.components() {
            if let Component::Normal(c) = comp {
                rel.push(c);
                let in_image =
                    crate::spec::image_entry(self.layers, &rel.to_string_lossy(), &mut self.seen)?
                        .map(|(_, m)| m);
                steps.push((rel.clone(), in_image));
            }
        }
        let Some(((_, leaf), parents)) = steps.split_last() else {
            return Ok(false);
        };
        // Behind a symlink or a file of the image; or a mount point the image has.
        if parents
            .iter()
            .any(|(_, m)| m.as_ref().is_some_and(|m| !m.is_dir()))
            || (leaf.is_some() && !matches!(point, Point::Content(_)))
        {
            return Ok(false);
        }
        let new_dir = |at: &Path| {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(at)
                .with_context(|| format!("creating {}", at.display()))
        };
        for (rel, in_image) in parents {
            let at = self.dir.join(rel);
            if !self.made.insert(at.clone()) {
                continue;
            }
            match in_image {
                Some(meta) => {
                    fs_err::create_dir(&at)?;
                    // As the image has it; the ids exist unless the mapping lacks them.
                    let _ = std::os::unix::fs::lchown(&at, Some(meta.uid()), Some(meta.gid()));
                    fs_err::set_permissions(
                        &at,
                        std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                    )?;
                    self.mirrored.push((at, meta.clone()));
                }
                None => new_dir(&at)?,
            }
        }
        let at = self.dir.join(&rel);
        let new = self.made.insert(at.clone());
        match point {
            Point::Content(src) => {
                // The same tmpfs: a link, not a copy.
                fs_err::hard_link(src, &at)?;
                return Ok(true);
            }
            Point::EmptyFile => drop(fs_err::File::create(&at)?),
            Point::Dir if new => new_dir(&at)?,
            Point::Dir => {}
        }
        Ok(false)
    }
}

/// Mounts `layers` (lowest first) at `target` with `upper`/`work` as the writable part.
/// `volatile`: the writable part is thrown away afterwards, so overlayfs may skip every sync
/// of it (Linux 5.10; where it is refused, the mount is made without).
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    volatile: bool,
    target: &Path,
) -> Result<()> {
    let lowers: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
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
    let mount_with = |flags: &[&str]| {
        let data = format!(
            "lowerdir={lowerdir},upperdir={},workdir={},{}",
            upper.display(),
            work.display(),
            flags.join(",")
        );
        // mount(2) options must fit in one page; many layers are given one by one instead.
        if data.len() < PAGE_LIMIT {
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(data.as_str()),
            )
        } else {
            mount_layer_by_layer(&lowers, upper, work, flags, target)
        }
    };
    let mounted = match mount_with(if volatile {
        &["userxattr", "volatile"]
    } else {
        &["userxattr"]
    }) {
        Err(nix::errno::Errno::EINVAL) if volatile => mount_with(&["userxattr"]),
        result => result,
    };
    mounted.with_context(|| {
        format!(
            "mounting the image's layers ({} directories) as an overlay on {} (overlayfs in a user namespace needs Linux 5.11 or later, more than about 50 layers Linux 6.8)",
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
    flags: &[&str],
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
        for flag in flags {
            let flag = cstr(flag.as_bytes())?;
            check(libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                0 as libc::c_uint,
                flag.as_ptr(),
                std::ptr::null::<u8>(),
                0,
            ))?;
        }
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

/// Where overlayfs cannot be mounted (kernels before 5.11 in a user namespace): the layers
/// are copied into `target`, lowest first, applying whiteouts and opaque directories. Slower
/// and bigger than an overlay, but it runs. Ownership is kept as real root.
pub fn copy_layers(layers: &[PathBuf], target: &Path) -> Result<()> {
    for layer in layers {
        copy_tree(layer, target)
            .with_context(|| format!("copying layer {} into the container", layer.display()))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    for entry in fs_err::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = fs_err::symlink_metadata(&src)?;
        let ft = meta.file_type();
        let existing = std::fs::symlink_metadata(&dst).ok();
        let whiteout = ft.is_char_device() && meta.rdev() == 0;
        if existing
            .as_ref()
            .is_some_and(|e| whiteout || !(ft.is_dir() && e.is_dir()))
        {
            remove_any(&dst)?;
        }
        if whiteout {
            continue;
        }
        if ft.is_dir() {
            if existing.as_ref().is_some_and(|e| e.is_dir()) && crate::spec::is_opaque(&src) {
                // Opaque: nothing of the lower layers shows through.
                remove_any(&dst)?;
            }
            if !dst.exists() {
                fs_err::create_dir(&dst)?;
            }
            copy_tree(&src, &dst)?;
            fs_err::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs_err::read_link(&src)?, &dst)
                .with_context(|| format!("creating {}", dst.display()))?;
        } else if ft.is_file() {
            fs_err::copy(&src, &dst)?;
        } else {
            // Device nodes and FIFOs: only real root could have unpacked them; skip.
            continue;
        }
        if nix::unistd::geteuid().is_root() {
            let _ = std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()));
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    match fs_err::symlink_metadata(path)? {
        m if m.is_dir() => fs_err::remove_dir_all(path)?,
        _ => fs_err::remove_file(path)?,
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_layer_holds_missing_mount_points_and_provided_files() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let (image, scratch) = (d.path().join("image"), d.path().join("scratch"));
        for dir in ["image/proc", "image/etc", "image/var", "scratch"] {
            fs_err::create_dir_all(d.path().join(dir)).unwrap();
        }
        fs_err::write(image.join("etc/hosts"), "image's").unwrap();
        fs_err::set_permissions(image.join("etc"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("/somewhere", image.join("var/run")).unwrap();
        let source = d.path().join("resolv.conf");
        fs_err::write(&source, "").unwrap();
        // Files eskrun provides: put in the layer unless behind a symlink of the image.
        let (hosts, other) = (scratch.join("hosts"), scratch.join("other"));
        fs_err::write(&hosts, "ours").unwrap();
        fs_err::write(&other, "").unwrap();
        let mount = |dst: &str, typ: &str, src: &Path| {
            oci_spec::runtime::MountBuilder::default()
                .destination(dst)
                .typ(typ)
                .source(src)
                .build()
                .unwrap()
        };
        let mounts = [
            mount("/proc", "proc", Path::new("proc")),
            mount("/dev", "tmpfs", Path::new("tmpfs")),
            mount("/dev/pts", "devpts", Path::new("devpts")),
            mount("/etc/hosts", "bind", &hosts),
            mount("/etc/resolv.conf", "bind", &source),
            mount("/var/run/x", "bind", d.path()),
            mount("/var/run/y", "bind", &other),
            mount("/opt/src", "bind", d.path()),
        ];
        let (init, placed) = init_layer(
            &scratch,
            std::slice::from_ref(&image),
            &mounts,
            &[hosts.clone(), other],
        )
        .unwrap();
        assert_eq!(placed, [hosts]);
        assert_eq!(
            fs_err::read_to_string(init.join("etc/hosts")).unwrap(),
            "ours"
        );
        let mut found = Vec::new();
        for entry in walk(&init) {
            let meta = fs_err::symlink_metadata(&entry).unwrap();
            let rel = entry.strip_prefix(&init).unwrap().display().to_string();
            found.push(format!(
                "{rel} {}",
                if meta.is_dir() { "dir" } else { "file" }
            ));
        }
        found.sort();
        // /proc exists, /dev/pts is inside /dev's tmpfs, /var/run is a symlink; the provided
        // /etc/hosts takes the place of the image's.
        assert_eq!(
            found,
            [
                "dev dir",
                "etc dir",
                "etc/hosts file",
                "etc/resolv.conf file",
                "opt dir",
                "opt/src dir"
            ]
        );
        let (etc, image_etc) = (
            fs_err::metadata(init.join("etc")).unwrap(),
            fs_err::metadata(image.join("etc")).unwrap(),
        );
        assert_eq!(etc.mode(), image_etc.mode());
        assert_eq!(
            (etc.mtime(), etc.mtime_nsec()),
            (image_etc.mtime(), image_etc.mtime_nsec())
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut all = Vec::new();
        for entry in fs_err::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                all.extend(walk(&path));
            }
            all.push(path);
        }
        all
    }

    #[test]
    fn copied_layers_honour_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let (low, high, out) = (
            d.path().join("low"),
            d.path().join("high"),
            d.path().join("out"),
        );
        for dir in ["low/keep", "low/opaque", "low/gone", "high/opaque", "out"] {
            fs_err::create_dir_all(d.path().join(dir)).unwrap();
        }
        fs_err::write(low.join("keep/a"), "low").unwrap();
        fs_err::write(low.join("opaque/hidden"), "low").unwrap();
        fs_err::write(low.join("gone/x"), "low").unwrap();
        fs_err::write(low.join("file"), "low").unwrap();
        fs_err::write(high.join("file"), "high").unwrap();
        fs_err::write(high.join("opaque/new"), "high").unwrap();
        std::os::unix::fs::symlink("file", high.join("link")).unwrap();
        let wh = |p: PathBuf| {
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap()
        };
        wh(high.join("gone"));
        let set = |p: &Path| {
            let (p, n) = (
                std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap(),
                c"user.overlay.opaque",
            );
            // SAFETY: valid strings and value.
            assert_eq!(
                unsafe { nix::libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) },
                0
            );
        };
        set(&high.join("opaque"));
        copy_layers(&[low, high], &out).unwrap();
        assert_eq!(fs_err::read_to_string(out.join("keep/a")).unwrap(), "low");
        assert_eq!(fs_err::read_to_string(out.join("file")).unwrap(), "high");
        assert_eq!(fs_err::read_to_string(out.join("link")).unwrap(), "high");
        assert!(!out.join("gone").exists());
        assert!(!out.join("opaque/hidden").exists());
        assert!(out.join("opaque/new").exists());
    }
}
