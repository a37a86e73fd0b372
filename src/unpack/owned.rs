//! A layer tree copied with every entry owned as the image says.
//!
//! Rootless, `eskrun pull` cannot chown: a layer's tree belongs to the user who pulled it, and
//! its layer.json lists the entries the image gives to someone other than root. Inside a user
//! namespace that maps a subordinate id range, eskrun may chown to those ids, so the runtime
//! makes such a copy once per id mapping and stacks it instead of the pulled tree (the kernel
//! stores the host ids the mapping gives each container id, so a copy is only right for the
//! mapping it was made in).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmodat, mkdirat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, Gid, Uid};
use xattr::FileExt;

use super::copy::{copy_entry, Source};
use super::fsutil::{file_type, lstat_at, open_child_dir, open_dir, Step};

/// Who owns what in the image: paths as layer.json writes them (`a/b`, the root is `""`);
/// anything not listed is root's.
pub type Owners = HashMap<String, (u32, u32)>;

/// Copies the tree `from` into the empty directory `to`, owning each entry as `owners` says,
/// keeping modes, xattrs, mtimes and hard links.
pub fn copy_owned(from: &Path, to: &Path, owners: &Owners) -> io::Result<()> {
    let mut copier = Copier {
        owners,
        linked: HashMap::new(),
        to_root: open_dir(to)?,
    };
    let (src, dst) = (open_dir(from)?, copier.to_root.try_clone()?);
    copier.dir(&src, &dst, from, Path::new(""))?;
    copier.finish_dir(&dst, OsStr::new("."), "", &src)
}

struct Copier<'a> {
    owners: &'a Owners,
    /// Files with more than one link: (dev, ino) of the source to the first copy's path.
    linked: HashMap<(u64, u64), PathBuf>,
    to_root: File,
}

impl Copier<'_> {
    fn owner(&self, rel: &str) -> (u32, u32) {
        self.owners.get(rel).copied().unwrap_or((0, 0))
    }

    /// Copies the entries of the directory `src` (at `src_path`, `rel` in the tree) into `dst`.
    fn dir(&mut self, src: &File, dst: &File, src_path: &Path, rel: &Path) -> io::Result<()> {
        let named = |e: io::Error, name: &OsStr| {
            io::Error::new(e.kind(), format!("{}: {e}", src_path.join(name).display()))
        };
        for entry in fs_err::read_dir(src_path)? {
            let name = entry?.file_name();
            let child_rel = rel.join(&name);
            // layer.json names entries by their lossy UTF-8 form.
            let shown = String::from_utf8_lossy(child_rel.as_os_str().as_bytes()).into_owned();
            let Some(stat) = lstat_at(src.as_raw_fd(), &name)? else {
                continue;
            };
            if file_type(&stat) == SFlag::S_IFDIR {
                mkdirat(Some(dst.as_raw_fd()), name.as_os_str(), Mode::S_IRWXU)
                    .map_err(|e| named(e.into(), &name))?;
                let (src_child, dst_child) = (
                    child_dir(src, &name).map_err(|e| named(e, &name))?,
                    child_dir(dst, &name).map_err(|e| named(e, &name))?,
                );
                self.dir(&src_child, &dst_child, &src_path.join(&name), &child_rel)?;
                self.finish_dir(dst, &name, &shown, &src_child)
                    .map_err(|e| named(e, &name))?;
                continue;
            }
            let key = (stat.st_dev, stat.st_ino);
            if stat.st_nlink > 1 {
                if let Some(first) = self.linked.get(&key) {
                    linkat(
                        Some(self.to_root.as_raw_fd()),
                        first.as_path(),
                        Some(dst.as_raw_fd()),
                        Path::new(&name),
                        AtFlags::empty(),
                    )
                    .map_err(|e| named(e.into(), &name))?;
                    continue;
                }
                self.linked.insert(key, child_rel.clone());
            }
            let source = Source {
                dir: src.try_clone()?,
                name: name.clone(),
                stat,
            };
            copy_entry(dst.as_raw_fd(), &name, &source, self.owner(&shown))
                .map_err(|e| named(e, &name))?;
        }
        Ok(())
    }

    /// Owner, mode, xattrs and mtime of a copied directory, set once its entries are in (they
    /// change its mtime, and its mode may keep us out): `name` in `parent` (`.` for itself).
    fn finish_dir(&self, parent: &File, name: &OsStr, rel: &str, src: &File) -> io::Result<()> {
        let stat = nix::sys::stat::fstat(src.as_raw_fd())?;
        let (uid, gid) = self.owner(rel);
        let dirfd = Some(parent.as_raw_fd());
        fchownat(
            dirfd,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        // After the chown, which clears set-id bits.
        fchmodat(
            dirfd,
            name,
            Mode::from_bits_truncate(stat.st_mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )?;
        let copy = child_dir(parent, name)?;
        for xattr in src.list_xattr()? {
            if let Some(value) = src.get_xattr(&xattr)? {
                // The user namespace's own (overlay's opaque marker among them) must come
                // along; others are best effort, as when unpacking.
                match copy.set_xattr(&xattr, &value) {
                    Err(e) if xattr.as_bytes().starts_with(b"user.") => return Err(e),
                    _ => {}
                }
            }
        }
        utimensat(
            dirfd,
            name,
            &TimeSpec::new(stat.st_atime, stat.st_atime_nsec),
            &TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
            UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }
}

fn child_dir(parent: &File, name: &OsStr) -> io::Result<File> {
    match open_child_dir(parent.as_raw_fd(), name, false) {
        Ok(Some(dir)) => Ok(dir),
        Ok(None) | Err(Step::Symlink | Step::NotDir) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "changed while being copied",
        )),
        Err(Step::Io(errno)) => Err(errno.into()),
    }
}
