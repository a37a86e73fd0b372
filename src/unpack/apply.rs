//! Applying tar entries to a layer directory, one at a time, never through a symlink.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;
use xattr::FileExt;

use super::fsutil::{file_type, lstat_at, open_child_dir, open_dir, walk, Step};
use super::path::{self, NameProblem};
use super::{PendingLink, UnpackError, UnpackOptions, Unpacked};

/// The xattr that makes a directory opaque for an overlay mounted with `userxattr`.
pub(super) const OPAQUE_XATTR: &str = "user.overlay.opaque";

/// The metadata of one entry, with its PAX extensions applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Applies the entries of one layer to its directory, remembering what only the end of the
/// layer can settle.
pub(super) struct Unpacker<'a> {
    dest: &'a Path,
    layer: &'a str,
    as_root: bool,
    root: File,
    /// The directories from the root down to the last entry's parent, kept open because tar
    /// entries come grouped by directory. Never holds the current entry itself, so replacing an
    /// entry never leaves a stale descriptor here.
    cursor: Vec<(OsString, File)>,
    buf: Vec<u8>,
    /// Directory modes and mtimes by path, applied at the end: creating children would change
    /// the mtimes, and rootless we could not fill a read-only directory.
    dirs: BTreeMap<Vec<u8>, (u32, TimeSpec)>,
    owners: BTreeMap<Vec<u8>, (u32, u32)>,
    pending: BTreeMap<Vec<u8>, PendingLink>,
    skipped_devices: u64,
    skipped_xattrs: u64,
}

impl<'a> Unpacker<'a> {
    pub(super) fn new(
        dest: &'a Path,
        layer: &'a str,
        opts: &UnpackOptions,
    ) -> Result<Self, UnpackError> {
        let root = open_dir(dest).map_err(|error| UnpackError::Dest {
            dest: dest.to_owned(),
            error,
        })?;
        Ok(Self {
            dest,
            layer,
            as_root: opts.as_root,
            root,
            cursor: Vec::new(),
            buf: vec![0; 256 * 1024],
            dirs: BTreeMap::new(),
            owners: BTreeMap::new(),
            pending: BTreeMap::new(),
            skipped_devices: 0,
            skipped_xattrs: 0,
        })
    }

    /// Applies every entry of the tar stream, up to its end marker.
    pub(super) fn run(mut self, stream: impl Read) -> Result<Unpacked, UnpackError> {
        let mut archive = tar::Archive::new(stream);
        let entries = archive.entries().map_err(|e| self.stream_error(e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.stream_error(e))?;
            self.apply(entry)?;
        }
        self.finish_dirs()?;
        let owners = self
            .owners
            .into_iter()
            .map(|(path, (uid, gid))| (shown_rel(&path), uid, gid))
            .collect();
        Ok(Unpacked {
            diff_id: String::new(),
            pending_links: self.pending.into_values().collect(),
            owners,
            skipped_devices: self.skipped_devices,
            skipped_xattrs: self.skipped_xattrs,
        })
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let components =
            path::components(&raw).map_err(|problem| self.hostile(&shown, problem.reason()))?;
        let meta = self.meta(&mut entry, &shown)?;
        let Some((name, parents)) = components.split_last() else {
            return self.root_entry(kind, &meta, &shown);
        };
        let rel: Vec<u8> = components
            .iter()
            .map(|c| c.as_bytes())
            .collect::<Vec<_>>()
            .join(&b'/');
        let parent = self.cursor_to(parents, &shown)?;
        // A later entry replaces a hard link still waiting for its target.
        self.pending.remove(&rel);
        if let Some(target) = name.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(parent, parents, target, &shown);
        }
        let at = At {
            parent,
            name,
            rel: &rel,
            shown: &shown,
        };
        match kind {
            EntryType::Directory => self.directory(&at, &meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&at, &mut entry, &meta)?
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&shown, "is a symlink without a target"))?;
                self.symlink(&at, OsStr::from_bytes(&target), &meta)?
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&shown, "is a hard link without a target"))?
                    .into_owned();
                return self.hard_link(&at, &components, &target);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if !self.device(&at, &mut entry, kind, &meta)? {
                    return Ok(());
                }
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %shown, "skipping a tar entry of unsupported type {other:?}");
                return Ok(());
            }
        }
        self.record_owner(rel, &meta);
        Ok(())
    }

    /// `./` itself: only a directory entry makes sense, giving the root's metadata.
    fn root_entry(&mut self, kind: EntryType, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        if !kind.is_dir() {
            return Err(self.hostile(shown, "names the layer's root directory but is not one"));
        }
        if self.as_root {
            fchown(
                self.root.as_raw_fd(),
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.entry_error(shown, "change its owner", e.into()))?;
        }
        let root = self
            .root
            .try_clone()
            .map_err(|e| self.entry_error(shown, "open it", e))?;
        self.set_xattrs(&root, &meta.xattrs);
        self.dirs.insert(Vec::new(), (meta.mode, meta.mtime));
        self.record_owner(Vec::new(), meta);
        Ok(())
    }

    /// Moves the cursor to `parents`, creating missing directories, and returns the
    /// innermost one's descriptor.
    fn cursor_to(&mut self, parents: &[&OsStr], shown: &str) -> Result<RawFd, UnpackError> {
        let common = self
            .cursor
            .iter()
            .zip(parents)
            .take_while(|((open, _), wanted)| open.as_os_str() == **wanted)
            .count();
        self.cursor.truncate(common);
        for (index, component) in parents.iter().enumerate().skip(common) {
            let dir = match open_child_dir(self.current_dir(), component, true) {
                Ok(Some(dir)) => dir,
                Ok(None) => unreachable!("open_child_dir creates missing directories"),
                Err(Step::Symlink) => {
                    let link = path::display(&parents[..=index]);
                    return Err(self.hostile(shown, &format!("goes through the symlink {link:?}")));
                }
                Err(Step::NotDir) => {
                    let parent = path::display(&parents[..=index]);
                    return Err(self.hostile(
                        shown,
                        &format!("has a parent {parent:?} that is not a directory"),
                    ));
                }
                Err(Step::Io(errno)) => {
                    return Err(self.entry_error(
                        shown,
                        "create its parent directory",
                        errno.into(),
                    ))
                }
            };
            self.cursor.push((component.to_os_string(), dir));
        }
        Ok(self.current_dir())
    }

    fn current_dir(&self) -> RawFd {
        self.cursor
            .last()
            .map_or(self.root.as_raw_fd(), |(_, dir)| dir.as_raw_fd())
    }

    fn whiteout(
        &mut self,
        parent: RawFd,
        parents: &[&OsStr],
        target: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        if target == b".wh..opq" {
            let dir = match self.cursor.last() {
                Some((_, dir)) => dir,
                None => &self.root,
            };
            return dir.set_xattr(OPAQUE_XATTR, b"y").map_err(|e| {
                self.entry_error(
                    shown,
                    "mark its directory opaque (xattr user.overlay.opaque)",
                    e,
                )
            });
        }
        match target {
            // overlayfs' and aufs' own bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not image content.
            _ if target.starts_with(b".wh.") => return Ok(()),
            b"" | b"." => return Err(self.hostile(shown, "is a whiteout that names no file")),
            b".." => {
                return Err(self.hostile(shown, "is a whiteout of a path outside the layer (..)"))
            }
            _ => {}
        }
        let name = OsStr::from_bytes(target);
        let mut components = parents.to_vec();
        components.push(name);
        let rel = components
            .iter()
            .map(|c| c.as_bytes())
            .collect::<Vec<_>>()
            .join(&b'/');
        self.pending.remove(&rel);
        let at = At {
            parent,
            name,
            rel: &rel,
            shown,
        };
        self.remove_existing(&at)?;
        mknodat(
            Some(parent),
            name,
            SFlag::S_IFCHR,
            Mode::empty(),
            makedev(0, 0),
        )
        .map_err(|e| {
            self.entry_error(
                shown,
                "create its whiteout (0:0 character device)",
                e.into(),
            )
        })
    }

    fn directory(&mut self, at: &At<'_>, meta: &Meta) -> Result<(), UnpackError> {
        let existing = lstat_at(at.parent, at.name)
            .map_err(|e| self.entry_error(at.shown, "inspect what is there", e.into()))?;
        if existing.is_none_or(|stat| file_type(&stat) != SFlag::S_IFDIR) {
            self.remove_existing(at)?;
            // Owner-only until the end, when its own mode is applied.
            mkdirat(Some(at.parent), at.name, Mode::from_bits_truncate(0o700))
                .map_err(|e| self.entry_error(at.shown, "create the directory", e.into()))?;
        }
        if self.as_root {
            self.chown_at(at, meta)?;
        }
        if !meta.xattrs.is_empty() {
            match open_child_dir(at.parent, at.name, false) {
                Ok(Some(dir)) => self.set_xattrs(&dir, &meta.xattrs),
                _ => self.skipped_xattrs += meta.xattrs.len() as u64,
            }
        }
        self.dirs.insert(at.rel.to_vec(), (meta.mode, meta.mtime));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        at: &At<'_>,
        content: &mut R,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        self.remove_existing(at)?;
        let fd = openat(
            Some(at.parent),
            at.name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.entry_error(at.shown, "create the file", e.into()))?;
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let mut buf = std::mem::take(&mut self.buf);
        let copied = copy(content, &mut file, &mut buf);
        self.buf = buf;
        match copied {
            Ok(()) => {}
            Err(CopyError::Read(error)) => return Err(self.stream_error(error)),
            Err(CopyError::Write(error)) => {
                return Err(self.entry_error(at.shown, "write the file", error))
            }
        }
        // chown clears setuid/setgid: owner first, then mode.
        if self.as_root {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.entry_error(at.shown, "change its owner", e.into()))?;
        }
        fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| self.entry_error(at.shown, "change its mode", e.into()))?;
        self.set_xattrs(&file, &meta.xattrs);
        futimens(fd, &meta.mtime, &meta.mtime)
            .map_err(|e| self.entry_error(at.shown, "set its modification time", e.into()))
    }

    fn symlink(&mut self, at: &At<'_>, target: &OsStr, meta: &Meta) -> Result<(), UnpackError> {
        self.remove_existing(at)?;
        symlinkat(target, Some(at.parent), at.name)
            .map_err(|e| self.entry_error(at.shown, "create the symlink", e.into()))?;
        if self.as_root {
            self.chown_at(at, meta)?;
        }
        // Linux allows user.* xattrs on regular files and directories only.
        self.skipped_xattrs += meta.xattrs.len() as u64;
        self.set_mtime_at(at, meta)
    }

    /// Sets the entry's mtime without following it (it may be a symlink).
    fn set_mtime_at(&self, at: &At<'_>, meta: &Meta) -> Result<(), UnpackError> {
        utimensat(
            Some(at.parent),
            at.name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.entry_error(at.shown, "set its modification time", e.into()))
    }

    /// A hard link to a file of this layer is made at once; to a file not (yet) here, it is
    /// left to [`super::complete_links`].
    fn hard_link(
        &mut self,
        at: &At<'_>,
        components: &[&OsStr],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let shown_target = String::from_utf8_lossy(target);
        let target_components = path::components(target).map_err(|problem| {
            let reason = match problem {
                NameProblem::Absolute => {
                    format!("is a hard link to the absolute path {shown_target:?}")
                }
                NameProblem::DotDot => {
                    format!("is a hard link to {shown_target:?}, which escapes the layer (..)")
                }
            };
            self.hostile(at.shown, &reason)
        })?;
        let Some((target_name, target_parents)) = target_components.split_last() else {
            return Err(self.hostile(at.shown, "is a hard link to the layer's root directory"));
        };
        if target_components == components {
            return Ok(());
        }
        let target_dir = match walk(&self.root, target_parents, false) {
            Ok(dir) => dir,
            Err((index, Step::Symlink)) => {
                let link = path::display(&target_parents[..=index]);
                return Err(self.hostile(
                    at.shown,
                    &format!("is a hard link to {shown_target:?} through the symlink {link:?}"),
                ));
            }
            Err((index, Step::NotDir)) => {
                let parent = path::display(&target_parents[..=index]);
                return Err(self.hostile(
                    at.shown,
                    &format!("is a hard link to {shown_target:?}, below {parent:?} which is not a directory"),
                ));
            }
            Err((_, Step::Io(errno))) => {
                return Err(self.entry_error(at.shown, "find its hard link target", errno.into()))
            }
        };
        let target_stat = match &target_dir {
            Some(dir) => lstat_at(dir.as_raw_fd(), target_name)
                .map_err(|e| self.entry_error(at.shown, "find its hard link target", e.into()))?,
            None => None,
        };
        self.remove_existing(at)?;
        match (target_dir, target_stat) {
            (Some(dir), Some(stat)) => {
                if file_type(&stat) == SFlag::S_IFDIR {
                    return Err(self.hostile(
                        at.shown,
                        &format!("is a hard link to the directory {shown_target:?}"),
                    ));
                }
                linkat(
                    Some(dir.as_raw_fd()),
                    *target_name,
                    Some(at.parent),
                    at.name,
                    AtFlags::empty(),
                )
                .map_err(|e| self.entry_error(at.shown, "create the hard link", e.into()))
            }
            _ => {
                self.pending.insert(
                    at.rel.to_vec(),
                    PendingLink {
                        path: PathBuf::from(OsStr::from_bytes(at.rel)),
                        target: target_components.iter().collect(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Creates a device node or FIFO as root; otherwise counts it. True when created.
    fn device<R: Read>(
        &mut self,
        at: &At<'_>,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        meta: &Meta,
    ) -> Result<bool, UnpackError> {
        self.remove_existing(at)?;
        if !self.as_root {
            self.skipped_devices += 1;
            return Ok(false);
        }
        let header = entry.header();
        let numbers = header
            .device_major()
            .and_then(|major| Ok((major, header.device_minor()?)));
        let (major, minor) = match numbers {
            Ok((Some(major), Some(minor))) => (major, minor),
            Ok(_) => (0, 0),
            Err(error) => return Err(self.entry_error(at.shown, "read its device numbers", error)),
        };
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let dev = if sflag == SFlag::S_IFIFO {
            0
        } else {
            makedev(major.into(), minor.into())
        };
        mknodat(Some(at.parent), at.name, sflag, Mode::empty(), dev)
            .map_err(|e| self.entry_error(at.shown, "create the device node", e.into()))?;
        self.chown_at(at, meta)?;
        // Not a symlink: just created in a directory only we write to.
        fchmodat(
            Some(at.parent),
            at.name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| self.entry_error(at.shown, "change its mode", e.into()))?;
        self.set_mtime_at(at, meta)?;
        Ok(true)
    }

    /// Removes whatever an earlier entry left at `at` (a later entry replaces it).
    fn remove_existing(&mut self, at: &At<'_>) -> Result<(), UnpackError> {
        let existing = lstat_at(at.parent, at.name)
            .map_err(|e| self.entry_error(at.shown, "inspect what is there", e.into()))?;
        let Some(stat) = existing else {
            return Ok(());
        };
        let removed = if file_type(&stat) == SFlag::S_IFDIR {
            // Every parent was opened with O_NOFOLLOW just now, and remove_dir_all does not
            // follow symlinks inside.
            std::fs::remove_dir_all(self.dest.join(OsStr::from_bytes(at.rel)))
        } else {
            unlinkat(Some(at.parent), at.name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
        };
        removed.map_err(|e| {
            self.entry_error(at.shown, "replace what an earlier entry put there", e)
        })?;
        forget_under(&mut self.owners, at.rel);
        forget_under(&mut self.pending, at.rel);
        forget_under(&mut self.dirs, at.rel);
        Ok(())
    }

    fn chown_at(&self, at: &At<'_>, meta: &Meta) -> Result<(), UnpackError> {
        fchownat(
            Some(at.parent),
            at.name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.entry_error(at.shown, "change its owner", e.into()))
    }

    /// Rootless, the files are ours: remember who owns them in the image.
    fn record_owner(&mut self, rel: Vec<u8>, meta: &Meta) {
        if self.as_root {
            return;
        }
        if (meta.uid, meta.gid) == (0, 0) {
            self.owners.remove(&rel);
        } else {
            self.owners.insert(rel, (meta.uid, meta.gid));
        }
    }

    /// Sets what the filesystem and our privileges allow; overlayfs' own xattrs are never
    /// taken from an image (they would steer the overlay mount).
    fn set_xattrs(&mut self, file: &File, xattrs: &[(OsString, Vec<u8>)]) {
        for (name, value) in xattrs {
            let bytes = name.as_bytes();
            let refused =
                bytes.starts_with(b"user.overlay.") || bytes.starts_with(b"trusted.overlay.");
            if refused || file.set_xattr(name, value).is_err() {
                tracing::debug!(layer = self.layer, xattr = ?name, "xattr not set");
                self.skipped_xattrs += 1;
            }
        }
    }

    /// Applies the deferred directory modes and times, children before their parents (a
    /// parent may become unreadable to us rootless).
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (rel, (mode, mtime)) in self.dirs.iter().rev() {
            let components: Vec<&OsStr> = if rel.is_empty() {
                Vec::new()
            } else {
                rel.split(|&b| b == b'/').map(OsStr::from_bytes).collect()
            };
            // Gone or replaced by a later entry: nothing to apply.
            let Ok(Some(dir)) = walk(&self.root, &components, false) else {
                continue;
            };
            let shown = shown_rel(rel);
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(*mode))
                .map_err(|e| self.entry_error(&shown, "change its mode", e.into()))?;
            futimens(dir.as_raw_fd(), mtime, mtime)
                .map_err(|e| self.entry_error(&shown, "set its modification time", e.into()))?;
        }
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, UnpackError> {
        let header_error = |e| self.entry_error(shown, "read its header", e);
        let header = entry.header();
        let mode = header.mode().map_err(header_error)? & 0o7777;
        let id = |value: u64| {
            u32::try_from(value).map_err(|_| self.hostile(shown, "has an owner id beyond 32 bits"))
        };
        let uid = id(header.uid().map_err(header_error)?)?;
        let gid = id(header.gid().map_err(header_error)?)?;
        let seconds = header.mtime().map_err(header_error)?;
        let mut mtime = TimeSpec::new(i64::try_from(seconds).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(header_error)? {
            for extension in extensions {
                let extension = extension.map_err(header_error)?;
                let Ok(key) = extension.key() else { continue };
                if key == "mtime" {
                    mtime = pax_time(extension.value_bytes()).unwrap_or(mtime);
                } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((OsString::from(name), extension.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn hostile(&self, entry: &str, reason: &str) -> UnpackError {
        UnpackError::Hostile {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn entry_error(&self, entry: &str, action: &'static str, error: io::Error) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            action,
            error,
        }
    }

    fn stream_error(&self, error: io::Error) -> UnpackError {
        UnpackError::Stream {
            layer: self.layer.to_owned(),
            error,
        }
    }
}

/// Where one entry goes: its parent directory (open) and its name there.
struct At<'e> {
    parent: RawFd,
    name: &'e OsStr,
    rel: &'e [u8],
    shown: &'e str,
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies an entry's content, telling a broken layer stream from a failing disk.
fn copy(from: &mut impl Read, to: &mut File, buf: &mut [u8]) -> Result<(), CopyError> {
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(CopyError::Read(error)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Drops `rel` and everything below it from a map keyed by relative path.
fn forget_under<V>(map: &mut BTreeMap<Vec<u8>, V>, rel: &[u8]) {
    map.remove(rel);
    let below = |end: u8| [rel, &[end]].concat();
    let keys: Vec<Vec<u8>> = map
        .range(below(b'/')..below(b'/' + 1))
        .map(|(key, _)| key.clone())
        .collect();
    for key in keys {
        map.remove(&key);
    }
}

fn shown_rel(rel: &[u8]) -> String {
    if rel.is_empty() {
        ".".to_owned()
    } else {
        String::from_utf8_lossy(rel).into_owned()
    }
}

/// A PAX time (`seconds[.fraction]`).
fn pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction.chars().take(9).collect();
    let nanos: i64 = format!("{digits:0<9}").parse().ok()?;
    // A negative time with a fraction is rare enough to round to the second.
    Some(TimeSpec::new(seconds, if seconds < 0 { 0 } else { nanos }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000"),
            Some(TimeSpec::new(1_700_000_000, 0))
        );
        assert_eq!(
            pax_time(b"1700000000.25"),
            Some(TimeSpec::new(1_700_000_000, 250_000_000))
        );
        assert_eq!(
            pax_time(b"1.1234567891"),
            Some(TimeSpec::new(1, 123_456_789))
        );
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.x"), None);
    }

    #[test]
    fn forget_under_drops_the_subtree_only() {
        let mut map: BTreeMap<Vec<u8>, ()> = [&b"a"[..], b"a/b", b"a/b/c", b"a0", b"a.b", b"ab"]
            .into_iter()
            .map(|k| (k.to_vec(), ()))
            .collect();
        forget_under(&mut map, b"a");
        let left: Vec<&[u8]> = map.keys().map(|k| k.as_slice()).collect();
        assert_eq!(left, [&b"a.b"[..], b"a0", b"ab"]);
    }
}
