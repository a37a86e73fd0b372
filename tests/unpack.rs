//! The layer unpacker against real tar streams: the unpacked tree checked file by file, the
//! hostile entries refused, lower-layer hard links completed, and the layers stacked by a real
//! overlay mount (`unshare --user --map-root-user --mount`, `userxattr`).
//!
//! Root or not: run as root, `as_an_unprivileged_user` runs the rootless checks again as the
//! user `eskrun-test` (created with useradd if missing) through setpriv, and
//! `as_root_devices_are_created_and_owners_kept` checks devices and chown. Run as a normal
//! user, the rootless checks run directly and the root-only test reports that it has nothing
//! to check. `big_layer_child` and `rootless_child` are run by other tests in processes of
//! their own.

mod common;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::layers::{gzip, sha256, zstd, Layer, Meta, MTIME};
use eskrun::unpack::{
    complete_links, remove_layer_dir, unpack_layer, Compression, PendingLink, UnpackError,
    UnpackOptions, Unpacked,
};
use tar::EntryType;

const LAYER: &str = "sha256:abcd0123";
const ROOTLESS: UnpackOptions = UnpackOptions { as_root: false };

/// A fresh layer directory (`tree/` inside a unique temporary directory).
struct Tree {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tree");
        fs::create_dir(&path).unwrap();
        Self { _tmp: tmp, path }
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    fn meta(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.at(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        self.meta(rel).permissions().mode() & 0o7777
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.at(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn link(&self, rel: &str) -> String {
        fs::read_link(self.at(rel))
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.at(rel)).is_ok()
    }

    fn assert_whiteout(&self, rel: &str) {
        let meta = self.meta(rel);
        assert!(meta.file_type().is_char_device(), "{rel} is not a whiteout");
        assert_eq!(meta.rdev(), 0, "{rel} is not 0:0");
    }

    fn assert_opaque(&self, rel: &str) {
        assert!(self.meta(rel).is_dir(), "{rel} is not a directory");
        let value = xattr::get(self.at(rel), "user.overlay.opaque").unwrap();
        assert_eq!(value.as_deref(), Some(&b"y"[..]), "{rel} is not opaque");
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        remove_layer_dir(self._tmp.path()).unwrap();
    }
}

fn unpack_into(
    tree: &Tree,
    bytes: &[u8],
    compression: Compression,
    opts: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    unpack_layer(bytes, compression, &tree.path, LAYER, opts)
}

fn unpack(tar: &[u8]) -> (Tree, Unpacked) {
    let tree = Tree::new();
    let unpacked = unpack_into(&tree, tar, Compression::None, &ROOTLESS).unwrap();
    (tree, unpacked)
}

/// What the stacked test layers show through overlayfs (and what the merged walk of their
/// trees must give): whiteouts hide, opaque directories hide the lower contents.
const STACKED: [&str; 10] = [
    ".",
    "./a",
    "./a/added",
    "./a/keep",
    "./o",
    "./o/new",
    "./s",
    "./s/hidden",
    "./s/shared",
    "./s/sym",
];
#[test]
fn a_plain_tree_is_unpacked_file_by_file() {
    let long = format!("deep/{}/file.txt", "x".repeat(150));
    let pax_long = format!("pax/{}/f", "y".repeat(120));
    let tar = Layer::new()
        .dir_with("./", Meta::mode(0o751).mtime(1_000_000_000))
        .dir("./etc", 0o755)
        .dir_with("etc/ssl", Meta::mode(0o700).mtime(1_500_000_000))
        .file_with(
            "etc/hostname",
            Meta::mode(0o644).mtime(1_234_567_890),
            b"box\n",
        )
        .file("usr/bin/su", 0o4755, b"#!su")
        .file("usr/bin/wall", 0o2755, b"wall")
        .dir("tmp", 0o1777)
        .dir("ro", 0o555)
        .file("ro/inside", 0o444, b"read only")
        .symlink("etc/rel", "hostname")
        .symlink("etc/abs", "/etc/hostname")
        .symlink_with(
            "dangling",
            "../nowhere/at/all",
            Meta::mode(0o777).mtime(1_111_111_111),
        )
        .hardlink("usr/bin/su-link", "usr/bin/su")
        .hardlink("./usr/bin/su-link2", "./usr/bin/su")
        .file("ünïcödé/ファイル", 0o600, "héllo".as_bytes())
        .file(&long, 0o644, b"long")
        .file_pax_path(&pax_long, b"pax")
        .file("empty", 0o640, b"")
        .tar();
    let (tree, unpacked) = unpack(&tar);

    assert_eq!(unpacked.diff_id, sha256(&tar));
    assert!(unpacked.pending_links.is_empty());
    assert!(unpacked.owners.is_empty(), "{:?}", unpacked.owners);
    assert_eq!((unpacked.skipped_devices, unpacked.skipped_xattrs), (0, 0));

    assert_eq!(tree.mode(""), 0o751);
    assert_eq!(tree.meta("").mtime(), 1_000_000_000);
    assert!(tree.meta("etc").is_dir());
    assert_eq!(tree.mode("etc"), 0o755);
    assert_eq!(
        tree.meta("etc").mtime(),
        MTIME as i64,
        "children changed the dir's mtime"
    );
    assert_eq!(tree.mode("etc/ssl"), 0o700);
    assert_eq!(tree.meta("etc/ssl").mtime(), 1_500_000_000);
    assert!(tree.meta("etc/hostname").is_file());
    assert_eq!(tree.read("etc/hostname"), "box\n");
    assert_eq!(tree.mode("etc/hostname"), 0o644);
    assert_eq!(tree.meta("etc/hostname").mtime(), 1_234_567_890);
    assert_eq!(tree.mode("usr/bin/su"), 0o4755);
    assert_eq!(tree.mode("usr/bin/wall"), 0o2755);
    assert_eq!(tree.mode("usr"), 0o755, "implicit parent");
    assert_eq!(tree.mode("tmp"), 0o1777);
    assert_eq!(tree.mode("ro"), 0o555);
    assert_eq!(tree.read("ro/inside"), "read only");
    assert_eq!(tree.mode("ro/inside"), 0o444);

    assert!(tree.meta("etc/rel").file_type().is_symlink());
    assert_eq!(tree.link("etc/rel"), "hostname");
    assert_eq!(tree.link("etc/abs"), "/etc/hostname");
    assert_eq!(tree.link("dangling"), "../nowhere/at/all");
    assert_eq!(tree.meta("dangling").mtime(), 1_111_111_111);

    let su = tree.meta("usr/bin/su");
    assert_eq!(su.nlink(), 3);
    assert_eq!(tree.meta("usr/bin/su-link").ino(), su.ino());
    assert_eq!(tree.meta("usr/bin/su-link2").ino(), su.ino());

    assert_eq!(tree.read("ünïcödé/ファイル"), "héllo");
    assert_eq!(tree.mode("ünïcödé/ファイル"), 0o600);
    assert_eq!(tree.read(&long), "long");
    assert_eq!(tree.read(&pax_long), "pax");
    assert!(!tree.exists("pax-stub"));
    assert_eq!(tree.read("empty"), "");
    assert_eq!(tree.mode("empty"), 0o640);
}

/// Counts what the unpacker reads, to prove it reads its input to the end.
struct Counting<'a> {
    bytes: &'a [u8],
    read: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.bytes[self.read..].len().min(buf.len()).min(1000);
        buf[..n].copy_from_slice(&self.bytes[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}

#[test]
fn gzip_zstd_and_plain_layers_give_the_same_tree_and_diff_id() {
    let mut tar = Layer::new()
        .dir("bin", 0o755)
        .file("bin/tool", 0o755, &vec![7u8; 300_000])
        .file("readme", 0o644, b"hello")
        .tar();
    // Record padding after the end marker, as GNU tar writes it: part of the diff_id.
    tar.extend(vec![0u8; 10 * 1024]);
    let split = tar.len() / 3;
    let multi_member_gzip = [gzip(&tar[..split]), gzip(&tar[split..])].concat();
    let multi_frame_zstd = [zstd(&tar[..split]), zstd(&tar[split..])].concat();
    for (what, bytes, compression) in [
        ("plain", tar.clone(), Compression::None),
        ("gzip", gzip(&tar), Compression::Gzip),
        ("gzip, two members", multi_member_gzip, Compression::Gzip),
        ("zstd", zstd(&tar), Compression::Zstd),
        ("zstd, two frames", multi_frame_zstd, Compression::Zstd),
    ] {
        let tree = Tree::new();
        let mut input = Counting {
            bytes: &bytes,
            read: 0,
        };
        let unpacked = unpack_layer(&mut input, compression, &tree.path, LAYER, &ROOTLESS)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(input.read, bytes.len(), "{what}: input not read to its end");
        assert_eq!(unpacked.diff_id, sha256(&tar), "{what}");
        assert_eq!(
            fs::read(tree.at("bin/tool")).unwrap(),
            vec![7u8; 300_000],
            "{what}"
        );
        assert_eq!(tree.read("readme"), "hello", "{what}");
        assert_eq!(tree.mode("bin/tool"), 0o755, "{what}");
    }
}

#[test]
fn broken_streams_are_errors_naming_the_layer() {
    let tar = Layer::new().file("big", 0o644, &vec![1u8; 100_000]).tar();
    let gz = gzip(&tar);
    for (what, bytes, compression) in [
        (
            "truncated gzip",
            gz[..gz.len() / 2].to_vec(),
            Compression::Gzip,
        ),
        ("not gzip", tar.clone(), Compression::Gzip),
        ("not zstd", gz.clone(), Compression::Zstd),
        ("truncated tar", tar[..50_000].to_vec(), Compression::None),
    ] {
        let tree = Tree::new();
        let error = unpack_into(&tree, &bytes, compression, &ROOTLESS).unwrap_err();
        assert!(
            matches!(error, UnpackError::Stream { .. }),
            "{what}: {error}"
        );
        assert!(
            error.to_string().starts_with(&format!("layer {LAYER}: ")),
            "{what}: {error}"
        );
    }
}

#[test]
fn whiteouts_become_0_0_devices_and_opaque_markers_xattrs() {
    let tar = Layer::new()
        .dir("a", 0o755)
        .whiteout("a/gone")
        .whiteout("top")
        .opaque("a/opq")
        .opaque("new/sub")
        .file("a/.wh..wh.plnk", 0o644, b"")
        .dir("later", 0o755)
        .file("later/file", 0o644, b"x")
        .whiteout("later")
        .tar();
    let (tree, unpacked) = unpack(&tar);
    assert_eq!(unpacked.diff_id, sha256(&tar));
    tree.assert_whiteout("a/gone");
    tree.assert_whiteout("top");
    tree.assert_whiteout("later");
    tree.assert_opaque("a/opq");
    tree.assert_opaque("new/sub");
    let mut names: Vec<String> = fs::read_dir(tree.at("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["gone", "opq"],
        ".wh. entries must not appear as files"
    );
    assert!(xattr::get(tree.at("a"), "user.overlay.opaque")
        .unwrap()
        .is_none());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = Layer::new()
        .file("f2d", 0o644, b"file")
        .dir("f2d", 0o750)
        .file("f2d/child", 0o644, b"c")
        .dir("d2s", 0o755)
        .file("d2s/inner", 0o644, b"i")
        .symlink("d2s", "f2d")
        .symlink("s2f", "/etc/passwd")
        .file("s2f", 0o600, b"now a file")
        .file("target", 0o644, b"t")
        .file("f2h", 0o644, b"old")
        .hardlink("f2h", "target")
        .file("orig", 0o644, b"orig")
        .hardlink("h2f", "orig")
        .file("h2f", 0o644, b"new")
        .file("same", 0o644, b"one")
        .file("same", 0o600, b"two")
        .dir("d2d", 0o700)
        .file("d2d/kept", 0o644, b"k")
        .dir("d2d", 0o755)
        .tar();
    let (tree, _) = unpack(&tar);
    assert!(tree.meta("f2d").is_dir());
    assert_eq!(tree.mode("f2d"), 0o750);
    assert_eq!(tree.read("f2d/child"), "c");
    assert!(tree.meta("d2s").file_type().is_symlink());
    assert_eq!(tree.link("d2s"), "f2d");
    assert!(!tree.exists("f2d/inner"));
    assert!(tree.meta("s2f").is_file());
    assert_eq!(tree.read("s2f"), "now a file");
    assert_eq!(tree.mode("s2f"), 0o600);
    assert_eq!(tree.read("f2h"), "t");
    assert_eq!(tree.meta("f2h").nlink(), 2);
    assert_eq!(
        tree.read("orig"),
        "orig",
        "a file entry over a hard link must not write into it"
    );
    assert_eq!(tree.read("h2f"), "new");
    assert_eq!(tree.meta("orig").nlink(), 1);
    assert_eq!(tree.read("same"), "two");
    assert_eq!(tree.mode("same"), 0o600);
    assert_eq!(
        tree.mode("d2d"),
        0o755,
        "a dir entry for an existing dir updates it"
    );
    assert_eq!(tree.read("d2d/kept"), "k");
}

/// A directory outside the layer with one file in it: must come out of every case untouched.
struct Outside {
    tmp: tempfile::TempDir,
}

impl Outside {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("sentinel"), b"untouched").unwrap();
        Self { tmp }
    }

    fn path(&self) -> &str {
        self.tmp.path().to_str().unwrap()
    }

    fn assert_untouched(&self, what: &str) {
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["sentinel"], "{what}: something was written outside");
        let sentinel = self.tmp.path().join("sentinel");
        assert_eq!(fs::read(&sentinel).unwrap(), b"untouched", "{what}");
        assert!(fs::symlink_metadata(&sentinel).unwrap().is_file(), "{what}");
        assert_eq!(
            fs::symlink_metadata(&sentinel).unwrap().nlink(),
            1,
            "{what}"
        );
        assert!(
            xattr::list(self.tmp.path()).unwrap().next().is_none(),
            "{what}"
        );
    }
}

#[test]
fn hostile_entries_are_refused_naming_layer_and_entry() {
    let outside = Outside::new();
    let out = outside.path();
    let sentinel = format!("{out}/sentinel");
    let regular = EntryType::Regular;
    let link = EntryType::Link;
    let cases: Vec<(&str, Vec<u8>, String)> =
        vec![
        (
            "..",
            Layer::new().raw(regular, b"../escaped", b"", b"x").tar(),
            r#"entry "../escaped" escapes the layer (..)"#.into(),
        ),
        (
            "nested ..",
            Layer::new().raw(regular, b"./a/../../escaped", b"", b"x").tar(),
            r#"entry "./a/../../escaped" escapes the layer (..)"#.into(),
        ),
        (
            "absolute",
            Layer::new().raw(regular, sentinel.as_bytes(), b"", b"x").tar(),
            format!("entry {sentinel:?} is an absolute path"),
        ),
        (
            "absolute symlink parent",
            Layer::new().symlink("link", out).file("link/sentinel", 0o644, b"x").tar(),
            r#"entry "link/sentinel" goes through the symlink "link""#.into(),
        ),
        (
            "relative symlink parent",
            Layer::new()
                .dir("a", 0o755)
                .symlink("a/up", "../..")
                .file("a/up/escaped", 0o644, b"x")
                .tar(),
            r#"entry "a/up/escaped" goes through the symlink "a/up""#.into(),
        ),
        (
            "hard link to an absolute path",
            Layer::new().raw(link, b"hl", sentinel.as_bytes(), b"").tar(),
            format!(r#"entry "hl" is a hard link to the absolute path {sentinel:?}"#),
        ),
        (
            "hard link with ..",
            Layer::new().raw(link, b"hl", b"../outside/sentinel", b"").tar(),
            r#"entry "hl" is a hard link to "../outside/sentinel", which escapes the layer (..)"#
                .into(),
        ),
        (
            "hard link through a symlink",
            Layer::new().symlink("link", out).hardlink("hl", "link/sentinel").tar(),
            r#"entry "hl" is a hard link to "link/sentinel" through the symlink "link""#.into(),
        ),
        (
            "whiteout of ..",
            Layer::new().dir("a", 0o755).raw(regular, b"a/.wh...", b"", b"").tar(),
            r#"entry "a/.wh..." is a whiteout of a path outside the layer (..)"#.into(),
        ),
        (
            "whiteout below ..",
            Layer::new().raw(regular, b"../.wh.sentinel", b"", b"").tar(),
            r#"entry "../.wh.sentinel" escapes the layer (..)"#.into(),
        ),
        (
            "whiteout through a symlink",
            Layer::new().symlink("link", out).whiteout("link/sentinel").tar(),
            r#"entry "link/.wh.sentinel" goes through the symlink "link""#.into(),
        ),
        (
            "opaque marker through a symlink",
            Layer::new().symlink("link", out).opaque("link").tar(),
            r#"entry "link/.wh..wh..opq" goes through the symlink "link""#.into(),
        ),
    ];
    for (what, tar, expected) in cases {
        let tree = Tree::new();
        let error = unpack_into(&tree, &tar, Compression::None, &ROOTLESS)
            .map(|_| ())
            .expect_err(what);
        assert!(
            matches!(error, UnpackError::Hostile { .. }),
            "{what}: {error}"
        );
        assert_eq!(
            error.to_string(),
            format!("layer {LAYER}: {expected}; refusing to unpack this image"),
            "{what}"
        );
        outside.assert_untouched(what);
    }
}

#[test]
fn an_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let outside = Outside::new();
    let sentinel = format!("{}/sentinel", outside.path());
    let tar = Layer::new()
        .symlink("esc", &sentinel)
        .file("esc", 0o644, b"inside")
        .symlink("esc2", &sentinel)
        .dir("esc2", 0o755)
        .symlink("esc3", &sentinel)
        .hardlink("esc3", "esc")
        .symlink("esc4", &sentinel)
        .whiteout("esc4")
        .symlink("sym", &sentinel)
        .hardlink("hl", "sym")
        .dir_with("esc5", Meta::mode(0o700).mtime(5))
        .symlink("esc5", outside.path())
        .tar();
    let before = fs::metadata(outside.path()).unwrap();
    let (tree, _) = unpack(&tar);
    assert_eq!(tree.read("esc"), "inside");
    assert!(tree.meta("esc2").is_dir());
    assert_eq!(tree.meta("esc3").ino(), tree.meta("esc").ino());
    tree.assert_whiteout("esc4");
    assert_eq!(
        tree.link("hl"),
        sentinel,
        "a hard link to a symlink is that symlink"
    );
    assert_eq!(tree.link("esc5"), outside.path());
    let after = fs::metadata(outside.path()).unwrap();
    assert_eq!(
        (after.mode(), after.mtime(), after.mtime_nsec()),
        (before.mode(), before.mtime(), before.mtime_nsec()),
        "a replaced directory's deferred mode and mtime went through a symlink"
    );
    outside.assert_untouched("replacing symlinks");
}

#[test]
fn devices_and_fifos_are_skipped_and_counted_rootless() {
    let tar = Layer::new()
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda", EntryType::Block, 8, 0)
        .device("run/fifo", EntryType::Fifo, 0, 0)
        .file("dev/keep", 0o644, b"")
        .tar();
    let (tree, unpacked) = unpack(&tar);
    assert_eq!(unpacked.skipped_devices, 3);
    assert!(!tree.exists("dev/null"));
    assert!(!tree.exists("dev/sda"));
    assert!(!tree.exists("run/fifo"));
    assert!(tree.meta("dev/keep").is_file());
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn as_root_devices_are_created_and_owners_kept() {
    if !running_as_root() {
        eprintln!("skipped: needs real root (mknod of devices, chown)");
        return;
    }
    let tar = Layer::new()
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/sda", EntryType::Block, 8, 0)
        .device("run/fifo", EntryType::Fifo, 0, 0)
        .file_with("home/user/su", Meta::mode(0o4755).owner(1000, 1001), b"x")
        .dir_with("home/user", Meta::mode(0o750).owner(1000, 1001))
        .symlink_with("home/user/link", "su", Meta::mode(0o777).owner(1002, 1003))
        .tar();
    assert!(UnpackOptions::for_current_process().as_root);
    let tree = Tree::new();
    let opts = UnpackOptions { as_root: true };
    let unpacked = unpack_into(&tree, &tar, Compression::None, &opts).unwrap();
    assert_eq!(unpacked.skipped_devices, 0);
    assert!(unpacked.owners.is_empty());
    let null = tree.meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o660);
    assert!(tree.meta("dev/sda").file_type().is_block_device());
    assert_eq!(tree.meta("dev/sda").rdev(), nix::sys::stat::makedev(8, 0));
    assert!(tree.meta("run/fifo").file_type().is_fifo());
    let su = tree.meta("home/user/su");
    assert_eq!((su.uid(), su.gid()), (1000, 1001));
    assert_eq!(
        tree.mode("home/user/su"),
        0o4755,
        "setuid survives the chown"
    );
    let home = tree.meta("home/user");
    assert_eq!((home.uid(), home.gid()), (1000, 1001));
    let link = tree.meta("home/user/link");
    assert_eq!((link.uid(), link.gid()), (1002, 1003));
}

#[test]
fn rootless_the_image_owners_are_recorded_and_files_are_ours() {
    let tar = Layer::new()
        .dir_with("srv", Meta::mode(0o755).owner(33, 33))
        .file_with("srv/data", Meta::mode(0o4750).owner(1000, 1000), b"d")
        .file_with("srv/root", Meta::mode(0o644), b"r")
        .file_with("was-owned", Meta::mode(0o644).owner(5, 5), b"1")
        .file_with("was-owned", Meta::mode(0o644), b"2")
        .dir_with("gone", Meta::mode(0o755).owner(7, 7))
        .file_with("gone/child", Meta::mode(0o644).owner(8, 8), b"c")
        .whiteout("gone")
        .symlink_with("link", "srv", Meta::mode(0o777).owner(0, 50))
        .tar();
    let (tree, unpacked) = unpack(&tar);
    assert_eq!(
        unpacked.owners,
        [
            ("link".to_owned(), 0, 50),
            ("srv".to_owned(), 33, 33),
            ("srv/data".to_owned(), 1000, 1000),
        ]
    );
    let me = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    for rel in ["srv", "srv/data", "link"] {
        let meta = tree.meta(rel);
        assert_eq!((meta.uid(), meta.gid()), me, "{rel}");
    }
    assert_eq!(tree.mode("srv/data"), 0o4750);
}

#[test]
fn pax_xattrs_and_times_are_applied_but_overlay_xattrs_refused() {
    let tar = Layer::new()
        .file_pax(
            "f",
            &[
                ("SCHILY.xattr.user.comment", b"hello"),
                ("SCHILY.xattr.user.overlay.opaque", b"y"),
                ("SCHILY.xattr.user.overlay.redirect", b"/etc"),
                ("mtime", b"1600000000.5"),
            ],
            b"content",
        )
        .tar();
    let (tree, unpacked) = unpack(&tar);
    assert_eq!(tree.read("f"), "content");
    assert_eq!(
        xattr::get(tree.at("f"), "user.comment").unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert!(xattr::get(tree.at("f"), "user.overlay.opaque")
        .unwrap()
        .is_none());
    assert!(xattr::get(tree.at("f"), "user.overlay.redirect")
        .unwrap()
        .is_none());
    assert_eq!(unpacked.skipped_xattrs, 2);
    let meta = tree.meta("f");
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_600_000_000, 500_000_000)
    );
}

/// Three layers (bottom first) whose stack exercises whiteouts and opaque directories.
fn three_layers() -> [Vec<u8>; 3] {
    let bottom = Layer::new()
        .dir("a", 0o755)
        .file("a/keep", 0o644, b"keep")
        .file("a/gone", 0o644, b"gone")
        .dir("o", 0o755)
        .file("o/old", 0o644, b"old")
        .file("top", 0o644, b"top")
        .dir("s", 0o755)
        .file_with(
            "s/shared",
            Meta::mode(0o640).mtime(1_400_000_000),
            b"bottom",
        )
        .file("s/hidden", 0o644, b"hidden")
        .symlink("s/sym", "shared")
        .tar();
    let middle = Layer::new()
        .dir("a", 0o755)
        .whiteout("a/gone")
        .dir("o", 0o755)
        .opaque("o")
        .file("o/new", 0o644, b"new")
        .whiteout("top")
        .file("s/shared", 0o600, b"middle")
        .tar();
    let upper = Layer::new()
        .dir("a", 0o755)
        .file("a/added", 0o644, b"added")
        .tar();
    [bottom, middle, upper]
}

/// `find | sort` of the overlay stack of `lowers` (topmost first), mounted in a new user and
/// mount namespace as the current user, with `userxattr` as eskrun mounts it.
fn merged_listing(lowers: &[&Path]) -> Vec<String> {
    let mountpoint = tempfile::tempdir().unwrap();
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t overlay overlay -o "lowerdir=$1,userxattr" "$2" && cd "$2" && find . | sort"#)
        .args(["sh", &lowerdir, mountpoint.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "overlay mount failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn unpack_stack() -> Vec<Tree> {
    three_layers().iter().map(|tar| unpack(tar).0).collect()
}

#[test]
fn stacked_layers_honour_whiteouts_and_opaque_dirs_in_a_real_overlay() {
    let trees = unpack_stack();
    let listing = merged_listing(&[&trees[2].path, &trees[1].path, &trees[0].path]);
    assert_eq!(listing, STACKED);
}

#[test]
fn hard_links_to_lower_files_are_completed_by_copy() {
    let trees = unpack_stack();
    let lowers = [&*trees[2].path, &*trees[1].path, &*trees[0].path];
    let tar = Layer::new()
        .dir_with("links", Meta::mode(0o755).mtime(1_300_000_000))
        .hardlink("links/keep", "a/keep")
        .hardlink("links/shared", "s/shared")
        .hardlink("links/new", "o/new")
        .hardlink("links/sym", "s/sym")
        .hardlink("links/replaced", "a/keep")
        .file("links/replaced", 0o644, b"mine")
        .tar();
    let (tree, unpacked) = unpack(&tar);
    assert_eq!(
        unpacked.pending_links,
        [
            PendingLink {
                path: "links/keep".into(),
                target: "a/keep".into()
            },
            PendingLink {
                path: "links/new".into(),
                target: "o/new".into()
            },
            PendingLink {
                path: "links/shared".into(),
                target: "s/shared".into()
            },
            PendingLink {
                path: "links/sym".into(),
                target: "s/sym".into()
            },
        ]
    );
    complete_links(&tree.path, &unpacked.pending_links, &lowers).unwrap();
    assert_eq!(tree.read("links/keep"), "keep");
    assert_eq!(
        tree.read("links/shared"),
        "middle",
        "the topmost lower wins"
    );
    assert_eq!(tree.mode("links/shared"), 0o600);
    assert_eq!(tree.meta("links/shared").mtime(), MTIME as i64);
    assert_eq!(tree.meta("links/keep").nlink(), 1);
    assert_eq!(tree.read("links/replaced"), "mine");
    assert_eq!(
        tree.meta("links").mtime(),
        1_300_000_000,
        "the dir keeps its mtime"
    );
    assert_eq!(tree.mode("links"), 0o755);

    // Only the bottom layer below: its own version of the file.
    let shared = [unpacked.pending_links[2].clone()];
    complete_links(&tree.path, &shared, &[&trees[0].path]).unwrap();
    assert_eq!(tree.read("links/shared"), "bottom");
    assert_eq!(tree.mode("links/shared"), 0o640);
    assert_eq!(tree.meta("links/shared").mtime(), 1_400_000_000);
}

#[test]
fn hard_links_to_deleted_or_hidden_lower_files_are_errors() {
    let trees = unpack_stack();
    let lowers = [&*trees[2].path, &*trees[1].path, &*trees[0].path];
    let tree = Tree::new();
    for (target, reason) in [
        ("a/gone", "a lower layer deletes the target"),
        ("top", "a lower layer deletes the target"),
        ("o/old", "the target is in none of the lower layers"),
        ("nowhere", "the target is in none of the lower layers"),
        ("a", "the target is a directory"),
    ] {
        let pending = [PendingLink {
            path: "link".into(),
            target: target.into(),
        }];
        let error = complete_links(&tree.path, &pending, &lowers).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "layer directory {}: hard link \"link\" -> {target:?}: {reason}",
                tree.path.display()
            )
        );
    }
    assert!(!tree.exists("link"));
}

#[test]
fn as_an_unprivileged_user() {
    if !running_as_root() {
        rootless_checks(tempfile::tempdir().unwrap().path());
        return;
    }
    let (uid, gid) = common::users::ensure_ids("eskrun-test");
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).unwrap();
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rootless_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ESKRUN_UNPACK_CHILD_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "as uid {uid}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    remove_layer_dir(dir.path()).unwrap();
}

#[test]
#[ignore = "run by as_an_unprivileged_user, as that user"]
fn rootless_child() {
    let dir = PathBuf::from(std::env::var_os("ESKRUN_UNPACK_CHILD_DIR").unwrap());
    rootless_checks(&dir);
}

/// What must work without any privilege: whiteouts, opaque dirs, read-only dirs, owners
/// recorded, devices skipped, the overlay stack, link completion into a read-only directory.
fn rootless_checks(dir: &Path) {
    assert!(!running_as_root());
    assert!(!UnpackOptions::for_current_process().as_root);
    let mut trees = Vec::new();
    for (index, tar) in three_layers().iter().enumerate() {
        let path = dir.join(format!("layer{index}"));
        fs::create_dir(&path).unwrap();
        unpack_layer(&tar[..], Compression::None, &path, LAYER, &ROOTLESS).unwrap();
        trees.push(path);
    }
    let lowers = [&*trees[2], &*trees[1], &*trees[0]];
    assert_eq!(merged_listing(&lowers), STACKED);

    let tar = Layer::new()
        .dir_with("ro", Meta::mode(0o555).owner(1000, 1000))
        .file_with("ro/file", Meta::mode(0o4755).owner(1000, 1000), b"x")
        .hardlink("ro/link", "a/keep")
        .device("dev/null", EntryType::Char, 1, 3)
        .dir("locked", 0o000)
        .file("locked/secret", 0o600, b"s")
        .tar();
    let top = dir.join("top");
    fs::create_dir(&top).unwrap();
    let unpacked = unpack_layer(&tar[..], Compression::None, &top, LAYER, &ROOTLESS).unwrap();
    assert_eq!(unpacked.skipped_devices, 1);
    assert_eq!(
        unpacked.owners,
        [
            ("ro".to_owned(), 1000, 1000),
            ("ro/file".to_owned(), 1000, 1000)
        ]
    );
    complete_links(&top, &unpacked.pending_links, &lowers).unwrap();
    let mode = |rel: &str| {
        fs::symlink_metadata(top.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(mode("ro/file"), 0o4755);
    assert_eq!(mode("locked"), 0o000);
    assert_eq!(fs::read_to_string(top.join("ro/link")).unwrap(), "keep");
    assert!(
        fs::remove_dir_all(&top).is_err(),
        "0000 and 0555 dirs resist a plain removal"
    );
    for tree in trees.iter().chain([&top]) {
        remove_layer_dir(tree).unwrap();
        assert!(!tree.exists(), "{}", tree.display());
    }
}

/// The size of the layer that must not raise the unpacker's memory: far above the bound.
const BIG_LAYER: u64 = 128 << 20;

#[test]
fn memory_stays_flat_whatever_the_layer_size() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "big_layer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let peak_kib: u64 = stdout
        .lines()
        .find_map(|line| line.split("peak_kib=").nth(1))
        .expect("the child reports its peak memory")
        .parse()
        .unwrap();
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB for a {BIG_LAYER}-byte layer"
    );
}

#[test]
#[ignore = "run by memory_stays_flat_whatever_the_layer_size in a process of its own"]
fn big_layer_child() {
    let mut header = tar::Header::new_gnu();
    header.set_path("big").unwrap();
    header.set_size(BIG_LAYER);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_cksum();
    // Generated as it is read, compressed as it is read: nothing big is ever in memory.
    let tar =
        io::Cursor::new(header.as_bytes().to_vec()).chain(io::repeat(0).take(BIG_LAYER + 1024));
    let compressed = zstd::stream::read::Encoder::new(tar, 1).unwrap();
    let tree = Tree::new();
    unpack_layer(compressed, Compression::Zstd, &tree.path, LAYER, &ROOTLESS).unwrap();
    assert_eq!(tree.meta("big").len(), BIG_LAYER);
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let peak = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB");
    println!("peak_kib={peak}");
}
