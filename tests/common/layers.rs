//! Image layers for tests: real tar streams built entry by entry (hostile ones included,
//! written byte by byte where the tar crate would refuse them), and their gzip/zstd forms.
#![allow(dead_code)] // each test binary uses the part it needs

use std::io::Write;

use tar::{EntryType, Header};

/// The mtime given to entries that do not say otherwise.
pub const MTIME: u64 = 1_600_000_000;

/// Metadata of one entry.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl Meta {
    pub fn mode(mode: u32) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    pub fn owner(self, uid: u64, gid: u64) -> Self {
        Self { uid, gid, ..self }
    }

    pub fn mtime(self, mtime: u64) -> Self {
        Self { mtime, ..self }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: MTIME,
        }
    }
}

/// A tar layer under construction: `Layer::new().dir("etc", 0o755).file(...).tar()`.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, meta: Meta, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(meta.mode);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        header.set_mtime(meta.mtime);
        header.set_size(size);
        header
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_with(path, Meta::mode(mode))
    }

    pub fn dir_with(mut self, path: &str, meta: Meta) -> Self {
        let mut header = Self::header(EntryType::Directory, meta, 0);
        self.builder
            .append_data(&mut header, path, &[][..])
            .unwrap();
        self
    }

    pub fn file(self, path: &str, mode: u32, content: &[u8]) -> Self {
        self.file_with(path, Meta::mode(mode), content)
    }

    /// A regular file; names over 100 bytes get a GNU long-name entry.
    pub fn file_with(mut self, path: &str, meta: Meta, content: &[u8]) -> Self {
        let mut header = Self::header(EntryType::Regular, meta, content.len() as u64);
        self.builder
            .append_data(&mut header, path, content)
            .unwrap();
        self
    }

    /// A regular file whose name is given by a PAX `path` record (the header holds a stub).
    pub fn file_pax_path(mut self, path: &str, content: &[u8]) -> Self {
        self.builder
            .append_pax_extensions([("path", path.as_bytes())])
            .unwrap();
        let mut header = Self::header(EntryType::Regular, Meta::default(), content.len() as u64);
        header.set_path("pax-stub").unwrap();
        header.set_cksum();
        self.builder.append(&header, content).unwrap();
        self
    }

    /// A regular file with PAX records (`SCHILY.xattr.NAME`, `mtime`, ...) before it.
    pub fn file_pax(mut self, path: &str, records: &[(&str, &[u8])], content: &[u8]) -> Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self.file_with(path, Meta::default(), content)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.symlink_with(path, target, Meta::mode(0o777))
    }

    pub fn symlink_with(mut self, path: &str, target: &str, meta: Meta) -> Self {
        let mut header = Self::header(EntryType::Symlink, meta, 0);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(EntryType::Link, Meta::default(), 0);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    /// The whiteout of `path` (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let entry = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&entry, 0o644, b"")
    }

    /// The opaque marker of `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    /// A character or block device node, or a FIFO (numbers ignored).
    pub fn device(mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> Self {
        let mut header = Self::header(kind, Meta::mode(0o660), 0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.builder
            .append_data(&mut header, path, &[][..])
            .unwrap();
        self
    }

    /// An entry written as given, byte for byte: for the names the tar crate refuses to write
    /// (`..`, absolute). `name` and `link` must fit in 100 bytes.
    pub fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], content: &[u8]) -> Self {
        let mut header = Self::header(kind, Meta::default(), content.len() as u64);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        self.builder.append(&header, content).unwrap();
        self
    }

    /// The finished tar stream, end marker included.
    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

/// `sha256:<hex>` of some bytes, as a diff_id or a blob digest.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Content that is distinct per seed, incompressible and deterministic (xorshift).
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
