//! `eskrun pull` and the cache commands end to end: the real binary, with its own cache,
//! config and Docker config in temporary directories, against Debian's docker-registry
//! (plain, TLS, basic auth, token auth), with a fault proxy in front where a test needs
//! broken transfers, injected errors or a log of the requests.
//!
//! As root, the rootless checks run as the user `eskrun-pull` (created if missing) through
//! setpriv; as a normal user everything runs as that user.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::eskrun::{names, running_as_root, snapshot, Eskrun, Run, Stamp};
use common::layers::{noise, Layer as Tar, Meta, MTIME};
use common::registry::*;
use tar::EntryType;

// ---------------------------------------------------------------------------------------
// The image most tests pull: three layers covering what unpack must get right.

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n";
const LONG_NAME: &str = "long/ÿ-ünïcødé-name-that-is-well-over-one-hundred-bytes-long-so-\
                         that-tar-needs-a-gnu-long-name-entry-for-it.txt";

/// Layer 1: a base tree; layer 2 changes it (whiteout, opaque dir, file -> dir, dir ->
/// symlink, hard link to a file of layer 1); layer 3 has what only root may create.
fn main_layers() -> [Vec<u8>; 3] {
    let base = Tar::new()
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, PASSWD)
        .dir("bin", 0o755)
        .file("bin/tool", 0o4755, b"#!tool\n")
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("bin/sh", "tool")
        .symlink("abs", "/etc/passwd")
        .symlink("dangling", "/nowhere/at/all")
        .file("gone", 0o644, b"deleted above")
        .dir("opq", 0o755)
        .file("opq/old", 0o644, b"hidden above")
        .file("was-file", 0o644, b"a file first")
        .dir("was-dir", 0o755)
        .file("was-dir/inner", 0o644, b"inner")
        .dir("base", 0o755)
        .file("base/shared", 0o640, b"linked from above")
        .dir_with("tmp", Meta::mode(0o1777))
        .dir("long", 0o755)
        .file(LONG_NAME, 0o644, b"long")
        .tar();
    let changes = Tar::new()
        .whiteout("gone")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new", 0o644, b"new")
        .dir("was-file", 0o2750)
        .file("was-file/now-inside", 0o644, b"inside")
        .symlink("was-dir", "etc")
        .dir("hl", 0o755)
        .hardlink("hl/copy", "base/shared")
        .tar();
    let privileged = Tar::new()
        .dir("dev", 0o755)
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/pipe", EntryType::Fifo, 0, 0)
        .dir_with("home", Meta::mode(0o755))
        .dir_with("home/user", Meta::mode(0o700).owner(1000, 1000))
        .file_with(
            "home/user/owned",
            Meta::mode(0o600).owner(1000, 1001),
            b"mine",
        )
        .tar();
    [base, changes, privileged]
}

/// One node of an unpacked tree, as the checks compare it.
#[derive(Debug, PartialEq)]
enum Node {
    File {
        mode: u32,
        content: Vec<u8>,
        nlink: u64,
    },
    Dir {
        mode: u32,
    },
    Symlink(String),
    /// A 0:0 character device (a whiteout in overlayfs' format), or a real device.
    CharDevice {
        rdev: u64,
    },
    Fifo,
}

fn file(mode: u32, content: &[u8], nlink: u64) -> Node {
    Node::File {
        mode,
        content: content.to_vec(),
        nlink,
    }
}

fn dir(mode: u32) -> Node {
    Node::Dir { mode }
}

fn symlink(target: &str) -> Node {
    Node::Symlink(target.into())
}

fn node(path: &Path) -> Node {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mode = meta.permissions().mode() & 0o7777;
    let kind = meta.file_type();
    if kind.is_file() {
        Node::File {
            mode,
            content: fs::read(path).unwrap(),
            nlink: meta.nlink(),
        }
    } else if kind.is_dir() {
        Node::Dir { mode }
    } else if kind.is_symlink() {
        Node::Symlink(fs::read_link(path).unwrap().to_string_lossy().into_owned())
    } else if kind.is_char_device() {
        Node::CharDevice { rdev: meta.rdev() }
    } else if kind.is_fifo() {
        Node::Fifo
    } else {
        panic!("{}: unexpected file type {kind:?}", path.display())
    }
}

/// Every path in a tree, relative, sorted.
fn listing(tree: &Path) -> Vec<String> {
    let mut all: Vec<String> = snapshot(tree)
        .into_keys()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .collect();
    all.sort();
    all
}

/// Checks the three layers of [`main_layers`] in the cache. `rootless` gives the uid/gid
/// eskrun ran as when it was not real root.
fn check_main_layers(eskrun: &Eskrun, digests: &[String], rootless: Option<(u32, u32)>) {
    let trees: Vec<PathBuf> = digests
        .iter()
        .map(|d| eskrun.layer_dir(d).join("tree"))
        .collect();
    let [base, changes, privileged] = &trees[..] else {
        panic!("three layers expected")
    };

    assert_eq!(
        listing(base),
        [
            "abs",
            "base",
            "base/shared",
            "bin",
            "bin/sh",
            "bin/tool",
            "bin/tool-link",
            "dangling",
            "etc",
            "etc/passwd",
            "gone",
            "long",
            LONG_NAME,
            "opq",
            "opq/old",
            "tmp",
            "was-dir",
            "was-dir/inner",
            "was-file",
        ]
    );
    assert_eq!(node(&base.join("etc/passwd")), file(0o644, PASSWD, 1));
    assert_eq!(node(&base.join("bin/tool")), file(0o4755, b"#!tool\n", 2));
    assert_eq!(
        node(&base.join("bin/tool-link")),
        file(0o4755, b"#!tool\n", 2)
    );
    assert_eq!(
        fs::metadata(base.join("bin/tool")).unwrap().ino(),
        fs::metadata(base.join("bin/tool-link")).unwrap().ino()
    );
    assert_eq!(node(&base.join("bin/sh")), symlink("tool"));
    assert_eq!(node(&base.join("abs")), symlink("/etc/passwd"));
    assert_eq!(node(&base.join("dangling")), symlink("/nowhere/at/all"));
    assert_eq!(node(&base.join("tmp")), dir(0o1777));
    assert_eq!(node(&base.join("was-dir")), dir(0o755));
    assert_eq!(
        node(&base.join("was-file")),
        file(0o644, b"a file first", 1)
    );
    assert_eq!(node(&base.join(LONG_NAME)), file(0o644, b"long", 1));
    assert_eq!(
        fs::symlink_metadata(base.join("etc/passwd"))
            .unwrap()
            .mtime(),
        MTIME as i64
    );

    assert_eq!(
        listing(changes),
        [
            "gone",
            "hl",
            "hl/copy",
            "opq",
            "opq/new",
            "was-dir",
            "was-file",
            "was-file/now-inside"
        ]
    );
    assert_eq!(
        node(&changes.join("gone")),
        Node::CharDevice { rdev: 0 },
        "a whiteout is a 0:0 character device"
    );
    assert_eq!(
        xattr::get(changes.join("opq"), "user.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(base.join("opq"), "user.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(node(&changes.join("opq/new")), file(0o644, b"new", 1));
    assert_eq!(node(&changes.join("was-file")), dir(0o2750));
    assert_eq!(
        node(&changes.join("was-file/now-inside")),
        file(0o644, b"inside", 1)
    );
    assert_eq!(node(&changes.join("was-dir")), symlink("etc"));
    assert_eq!(
        node(&changes.join("hl/copy")),
        file(0o640, b"linked from above", 1),
        "a hard link to a lower layer's file is completed by a copy"
    );

    match rootless {
        None => {
            assert_eq!(
                listing(privileged),
                [
                    "dev",
                    "dev/null",
                    "dev/pipe",
                    "home",
                    "home/user",
                    "home/user/owned"
                ]
            );
            assert_eq!(
                node(&privileged.join("dev/null")),
                Node::CharDevice {
                    rdev: nix::sys::stat::makedev(1, 3)
                }
            );
            assert_eq!(node(&privileged.join("dev/pipe")), Node::Fifo);
            let owned = fs::symlink_metadata(privileged.join("home/user/owned")).unwrap();
            assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
            let etc = fs::symlink_metadata(base.join("etc")).unwrap();
            assert_eq!((etc.uid(), etc.gid()), (0, 0));
        }
        Some((uid, gid)) => {
            assert_eq!(
                listing(privileged),
                ["dev", "home", "home/user", "home/user/owned"],
                "devices and FIFOs are skipped rootless"
            );
            for tree in &trees {
                for path in listing(tree) {
                    let meta = fs::symlink_metadata(tree.join(&path)).unwrap();
                    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{path}");
                }
            }
            let meta = layer_json(eskrun, &digests[2]);
            assert_eq!(
                meta["owners"],
                serde_json::json!([["home/user", 1000, 1000], ["home/user/owned", 1000, 1001]])
            );
            assert_eq!(meta["skipped_devices"], 2);
        }
    }
    assert_eq!(node(&privileged.join("home/user")), dir(0o700));
    assert_eq!(
        node(&privileged.join("home/user/owned")),
        file(0o600, b"mine", 1)
    );

    for (index, digest) in digests.iter().enumerate() {
        let meta = layer_json(eskrun, digest);
        assert_eq!(meta["digest"], digest.as_str(), "layer {index}");
    }
}

fn layer_json(eskrun: &Eskrun, digest: &str) -> serde_json::Value {
    let path = eskrun.layer_dir(digest).join("layer.json");
    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
}

async fn push_main_image(reg: &TestRegistry, repo: &str, format: Format) -> PushedImage {
    let [base, changes, privileged] = main_layers();
    // Every compression, in an order that differs between the formats, so the two images
    // share no blob.
    let layers = match format {
        Format::Docker => vec![
            Layer::gzip(&base),
            Layer::zstd(&changes),
            Layer::plain(privileged),
        ],
        _ => vec![
            Layer::zstd(&base),
            Layer::plain(changes),
            Layer::gzip(&privileged),
        ],
    };
    reg.push_image(repo, "1", &ImageSpec::with_layers(format, layers))
        .await
}

/// The image references in the cache, as `images --format json` lists them.
fn listed(eskrun: &Eskrun) -> Vec<serde_json::Value> {
    let run = eskrun.run(&["images", "--format", "json"]).ok();
    serde_json::from_str::<Vec<serde_json::Value>>(&run.stdout).unwrap()
}

fn references(eskrun: &Eskrun) -> Vec<String> {
    listed(eskrun)
        .iter()
        .map(|row| row["reference"].as_str().unwrap().to_string())
        .collect()
}

/// A single-layer image with a file whose content tells images apart.
fn small_image(format: Format, tag: &str) -> ImageSpec {
    let tar = Tar::new().file("which", 0o644, tag.as_bytes()).tar();
    ImageSpec::with_layers(format, vec![Layer::gzip(&tar)])
}

/// A layer of a few big incompressible files, `files` x 1 MiB.
fn big_layer(seed: u32, files: usize) -> Vec<u8> {
    let mut tar = Tar::new().dir("big", 0o755);
    for i in 0..files {
        tar = tar.file(&format!("big/{i}"), 0o644, &noise(seed + i as u32, 1 << 20));
    }
    tar.tar()
}

fn check_big_layer(tree: &Path, seed: u32, files: usize) {
    for i in 0..files {
        let content = fs::read(tree.join(format!("big/{i}"))).unwrap();
        assert!(
            content == noise(seed + i as u32, 1 << 20),
            "big/{i} differs"
        );
    }
}

/// The cache's content apart from lock files (created on first use and never holding
/// data) and `tmp/` (whose own mtime changes with every claimed layer).
fn cache_state(eskrun: &Eskrun) -> Vec<(PathBuf, Stamp)> {
    snapshot(&eskrun.store())
        .into_iter()
        .filter(|(path, _)| !path.starts_with("locks") && !path.starts_with("tmp"))
        .collect()
}

fn blob_gets(proxy: &FaultProxy, digest: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&format!("/blobs/{digest}")))
        .count()
}

// ---------------------------------------------------------------------------------------
// Pulling images.

#[tokio::test]
async fn docker_and_oci_images_are_unpacked_file_by_file_and_listed() {
    let reg = TestRegistry::start(Mode::Plain);
    let docker = push_main_image(&reg, "main/docker", Format::Docker).await;
    let oci = push_main_image(&reg, "main/oci", Format::Oci).await;
    let eskrun = Eskrun::new();
    for (repo, pushed) in [("main/docker", &docker), ("main/oci", &oci)] {
        let run = eskrun
            .run(&["pull", "--quiet", &format!("{}/{repo}:1", reg.host)])
            .ok();
        assert_eq!(run.stderr, "", "--quiet prints nothing");
        assert_eq!(run.stdout, "");
        let rootless = (!running_as_root()).then(|| {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        });
        check_main_layers(&eskrun, &pushed.layer_digests, rootless);
        let manifest = eskrun.store().join("manifests/sha256").join(
            pushed
                .manifest_digest
                .strip_prefix("sha256:")
                .expect("sha256"),
        );
        assert_eq!(fs::read(manifest).unwrap(), pushed.manifest_raw);
    }
    assert!(names(&eskrun.store().join("tmp")).is_empty());

    let rows = listed(&eskrun);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, (repo, pushed)) in rows
        .iter()
        .zip([("main/docker", &docker), ("main/oci", &oci)])
    {
        assert_eq!(row["reference"], format!("{}/{repo}:1", reg.host));
        assert_eq!(row["platform"], "linux/amd64");
        assert_eq!(row["manifest_digest"], pushed.manifest_digest.as_str());
        assert_eq!(row["layers"], 3);
    }
    let table = eskrun.run(&["images"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("REFERENCE"), "{table}");
    assert!(
        lines[1].starts_with(&format!("{}/main/docker:1 ", reg.host)) && lines[1].contains(" 3 "),
        "{table}"
    );
}

#[tokio::test]
async fn manifest_list_and_oci_index_choose_the_platform() {
    let reg = TestRegistry::start(Mode::Plain);
    let amd64 = reg
        .push_image("multi/app", "amd64", &small_image(Format::Docker, "amd64"))
        .await;
    let arm64 = reg
        .push_image(
            "multi/app",
            "arm64",
            &small_image(Format::Docker, "arm64").arch("arm64/v8"),
        )
        .await;
    let entries = [("linux/amd64", &amd64), ("linux/arm64/v8", &arm64)];
    reg.push_index("multi/app", "list", true, &entries).await;
    let oci_amd64 = reg
        .push_image("multi/oci", "amd64", &small_image(Format::Oci, "oci-amd64"))
        .await;
    let oci_arm64 = reg
        .push_image(
            "multi/oci",
            "arm64",
            &small_image(Format::Oci, "oci-arm64").arch("arm64/v8"),
        )
        .await;
    let index = reg
        .push_index(
            "multi/oci",
            "index",
            false,
            &[("linux/amd64", &oci_amd64), ("linux/arm64/v8", &oci_arm64)],
        )
        .await;

    let eskrun = Eskrun::new();
    let which = |pushed: &PushedImage| {
        fs::read_to_string(
            eskrun
                .layer_dir(&pushed.layer_digests[0])
                .join("tree/which"),
        )
        .unwrap()
    };
    eskrun
        .run(&["pull", "-q", &format!("{}/multi/app:list", reg.host)])
        .ok();
    assert_eq!(which(&amd64), "amd64", "the host's platform by default");
    assert!(!eskrun.layer_dir(&arm64.layer_digests[0]).exists());

    eskrun
        .run(&[
            "pull",
            "-q",
            "--platform",
            "linux/arm64/v8",
            &format!("{}/multi/oci:index", reg.host),
        ])
        .ok();
    assert_eq!(which(&oci_arm64), "oci-arm64");
    assert!(!eskrun.layer_dir(&oci_amd64.layer_digests[0]).exists());

    let rows = listed(&eskrun);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["reference"], format!("{}/multi/app:list", reg.host));
    assert_eq!(rows[0]["platform"], "linux/amd64");
    assert_eq!(rows[0]["manifest_digest"], amd64.manifest_digest.as_str());
    assert_eq!(rows[1]["platform"], "linux/arm64/v8");
    assert_eq!(
        rows[1]["manifest_digest"],
        oci_arm64.manifest_digest.as_str()
    );
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(
            eskrun
                .store()
                .join("refs")
                .join(format!("{}%2Fmulti%2Foci:index.json", reg.host)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["source_digest"],
        index.as_str(),
        "the index is what a re-pull compares"
    );

    let msg = eskrun
        .run(&[
            "pull",
            "-q",
            "--platform",
            "linux/s390x",
            &format!("{}/multi/oci:index", reg.host),
        ])
        .one_line_error();
    assert!(msg.contains("no variant for platform linux/s390x"), "{msg}");
}

#[tokio::test]
async fn tampered_layer_is_refused_and_nothing_of_it_is_stored() {
    let reg = TestRegistry::start(Mode::Plain);
    let good = Tar::new().file("good", 0o644, b"good").tar();
    let bad = Tar::new().file("bad", 0o644, &noise(7, 200_000)).tar();
    let pushed = reg
        .push_image(
            "tampered/app",
            "1",
            &ImageSpec::with_layers(
                Format::Docker,
                vec![
                    Layer::gzip(&good),
                    Layer::gzip(&bad),
                    Layer::plain(big_layer(500, 2)),
                ],
            ),
        )
        .await;
    let bad_digest = &pushed.layer_digests[1];
    reg.tamper_blob(bad_digest);
    // The third layer hangs mid-transfer: the failure of the second must stop it, and its
    // partial directory must go.
    let proxy = FaultProxy::start(reg.addr());
    proxy.inject(
        &format!("/blobs/{}", pushed.layer_digests[2]),
        Fault::StallAfter(1_200_000),
    );

    let eskrun = Eskrun::new();
    let msg = eskrun
        .run(&["pull", "-q", &format!("{}/tampered/app:1", proxy.host)])
        .one_line_error();
    assert!(msg.contains(&format!("layer {bad_digest}")), "{msg}");
    assert!(msg.contains("hashes to"), "{msg}");
    assert!(!eskrun.layer_dir(bad_digest).exists());
    // The good layer may have been finished (verified) before the bad one failed.
    let layers = names(&eskrun.store().join("layers/sha256"));
    assert!(
        layers.is_empty() || layers == [pushed.layer_digests[0][7..].to_string()],
        "{layers:?}"
    );
    assert!(names(&eskrun.store().join("tmp")).is_empty());
    assert!(names(&eskrun.store().join("refs")).is_empty());
    assert!(names(&eskrun.store().join("manifests/sha256")).is_empty());
    assert!(listed(&eskrun).is_empty());
}

#[tokio::test]
async fn a_transfer_cut_mid_layer_is_resumed_and_verified() {
    let reg = TestRegistry::start(Mode::Plain);
    let tar = big_layer(100, 3);
    let pushed = reg
        .push_image(
            "cut/app",
            "1",
            &ImageSpec::with_layers(Format::Oci, vec![Layer::plain(tar)]),
        )
        .await;
    let digest = &pushed.layer_digests[0];
    let proxy = FaultProxy::start(reg.addr());
    proxy.inject(&format!("/blobs/{digest}"), Fault::CutAfter(1_000_000));
    let eskrun = Eskrun::new();
    eskrun
        .run(&["pull", "-q", &format!("{}/cut/app:1", proxy.host)])
        .ok();
    check_big_layer(&eskrun.layer_dir(digest).join("tree"), 100, 3);
    let gets: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&format!("/blobs/{digest}")))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[1].ends_with("bytes=1000000-"), "{gets:?}");
    assert_eq!(references(&eskrun).len(), 1);
}

#[tokio::test]
async fn sigkill_mid_pull_leaves_no_layer_that_looks_complete() {
    let reg = TestRegistry::start(Mode::Plain);
    let small = Tar::new().file("small", 0o644, b"small").tar();
    let big = big_layer(200, 4);
    let pushed = reg
        .push_image(
            "killed/app",
            "1",
            &ImageSpec::with_layers(Format::Docker, vec![Layer::plain(small), Layer::plain(big)]),
        )
        .await;
    let (small_digest, big_digest) = (&pushed.layer_digests[0], &pushed.layer_digests[1]);
    let proxy = FaultProxy::start(reg.addr());
    // The big layer stops after 1.5 MiB: eskrun is killed while it waits for the rest.
    proxy.inject(
        &format!("/blobs/{big_digest}"),
        Fault::StallAfter(1_500_000),
    );
    let eskrun = Eskrun::new();
    let image = format!("{}/killed/app:1", proxy.host);
    let child = eskrun.spawn(&["pull", "-q", &image]);
    let partial = eskrun
        .store()
        .join("tmp")
        .join(format!("layer-{}", &big_digest[7..]))
        .join("tree/big/0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(partial.exists() && eskrun.layer_dir(small_digest).exists()) {
        assert!(Instant::now() < deadline, "the pull did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Eskrun::wait(child);
    assert_eq!(killed.code, None, "killed by the signal: {killed:?}");

    assert!(
        !eskrun.layer_dir(big_digest).exists(),
        "a half layer never appears in layers/"
    );
    assert!(eskrun.layer_dir(small_digest).join("layer.json").exists());
    assert!(names(&eskrun.store().join("refs")).is_empty());
    let msg = eskrun.run(&["images", "--format", "json"]).ok().stdout;
    assert_eq!(msg.trim(), "[]");

    eskrun.run(&["pull", "-q", &image]).ok();
    check_big_layer(&eskrun.layer_dir(big_digest).join("tree"), 200, 4);
    assert_eq!(
        fs::read(eskrun.layer_dir(small_digest).join("tree/small")).unwrap(),
        b"small"
    );
    assert!(
        names(&eskrun.store().join("tmp")).is_empty(),
        "the dead pull's leftover was removed"
    );
    assert_eq!(
        blob_gets(&proxy, small_digest),
        1,
        "the finished layer is kept"
    );
    assert_eq!(references(&eskrun), [image]);
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_fetch_each_layer_once() {
    let reg = TestRegistry::start(Mode::Plain);
    // The two upper layers hard-link a file of the bottom one: each completes its links only
    // once the layers below are in the cache, whichever pull stores them.
    let layers: Vec<Layer> = (0..3u32)
        .map(|i| {
            let tar = match i {
                0 => Tar::new().dir("base", 0o755).file("base/f", 0o644, b"f"),
                _ => Tar::new().hardlink(&format!("link{i}"), "base/f"),
            };
            let mut tar = tar.tar();
            // Append the big files after the small entries (drop the end marker first).
            tar.truncate(tar.len() - 1024);
            let big = big_layer(300 + 10 * i, 2);
            tar.extend_from_slice(&big);
            Layer::gzip(&tar)
        })
        .collect();
    let pushed = reg
        .push_image(
            "shared/app",
            "1",
            &ImageSpec::with_layers(Format::Oci, layers),
        )
        .await;
    let proxy = FaultProxy::start(reg.addr());
    let eskrun = Eskrun::new();
    let image = format!("{}/shared/app:1", proxy.host);
    let children: Vec<_> = ["1", "2", "4", "4"]
        .iter()
        .map(|jobs| eskrun.spawn(&["pull", "--quiet", "--jobs", jobs, &image]))
        .collect();
    for child in children {
        let run = Eskrun::wait(child).ok();
        assert_eq!(
            run.stderr, "",
            "--quiet, even when waiting for another pull"
        );
    }
    for (i, digest) in pushed.layer_digests.iter().enumerate() {
        assert_eq!(blob_gets(&proxy, digest), 1, "layer {digest}");
        let tree = eskrun.layer_dir(digest).join("tree");
        check_big_layer(&tree, 300 + 10 * i as u32, 2);
        if i > 0 {
            assert_eq!(node(&tree.join(format!("link{i}"))), file(0o644, b"f", 1));
        }
    }
    assert_eq!(references(&eskrun), [image]);
    assert!(names(&eskrun.store().join("tmp")).is_empty());
}

#[tokio::test]
async fn a_layer_listed_twice_is_fetched_once() {
    let reg = TestRegistry::start(Mode::Plain);
    let base = Layer::gzip(&Tar::new().file("f", 0o644, b"f").tar());
    // Listed twice, with a hard link into the layer below: both listings need the lower
    // layers in place, the second one included the first.
    let twice = Layer::gzip(&Tar::new().hardlink("g", "f").tar());
    let pushed = reg
        .push_image(
            "twice/app",
            "1",
            &ImageSpec::with_layers(Format::Docker, vec![base, twice.clone(), twice]),
        )
        .await;
    let proxy = FaultProxy::start(reg.addr());
    let eskrun = Eskrun::new();
    let image = format!("{}/twice/app:1", proxy.host);
    eskrun.run(&["pull", "-q", &image]).ok();
    assert_eq!(pushed.layer_digests[1], pushed.layer_digests[2]);
    assert_eq!(blob_gets(&proxy, &pushed.layer_digests[1]), 1);
    assert_eq!(
        node(&eskrun.layer_dir(&pushed.layer_digests[1]).join("tree/g")),
        file(0o644, b"f", 1)
    );
    assert_eq!(listed(&eskrun)[0]["layers"], 3);
}

#[tokio::test]
async fn re_pull_of_an_up_to_date_image_costs_one_head_and_writes_nothing() {
    let reg = TestRegistry::start(Mode::Plain);
    let tars = [
        Tar::new().file("a", 0o644, b"a").tar(),
        Tar::new().file("b", 0o644, b"b").tar(),
    ];
    let pushed = reg
        .push_image(
            "fresh/app",
            "1",
            &ImageSpec::with_layers(
                Format::Docker,
                tars.iter().map(|t| Layer::gzip(t)).collect(),
            ),
        )
        .await;
    let proxy = FaultProxy::start(reg.addr());
    let eskrun = Eskrun::new();
    let image = format!("{}/fresh/app:1", proxy.host);

    // Without a terminal: plain progress lines, no bars or escape sequences.
    let first = eskrun.run(&["pull", &image]).ok();
    for digest in &pushed.layer_digests {
        let short = &digest[7..19];
        assert!(
            first.stderr.contains(&format!("{short}: fetching"))
                && first.stderr.contains(&format!("{short}: done")),
            "{}",
            first.stderr
        );
    }
    assert!(
        first
            .stderr
            .lines()
            .last()
            .unwrap()
            .contains(&format!("{image}: pulled {}", pushed.manifest_digest)),
        "{}",
        first.stderr
    );
    assert!(
        !first.stderr.contains('\r') && !first.stderr.contains('\x1b'),
        "{:?}",
        first.stderr
    );

    let before = snapshot(&eskrun.cache());
    let requests_before = proxy.requests().len();
    let again = eskrun.run(&["pull", &image]).ok();
    assert_eq!(again.stderr.trim(), format!("{image}: image is up to date"));
    assert_eq!(snapshot(&eskrun.cache()), before, "nothing written");
    let requests = proxy.requests()[requests_before..].to_vec();
    // The version check (`GET /v2/`, which also tells the auth scheme) comes with any new
    // connection to a registry; the manifest costs one HEAD.
    assert_eq!(
        requests,
        ["GET /v2/ ", "HEAD /v2/fresh/app/manifests/1 "],
        "one HEAD of the manifest"
    );

    // A digest reference names immutable content: not even a HEAD.
    let by_digest = format!("{}/fresh/app@{}", proxy.host, pushed.manifest_digest);
    eskrun.run(&["pull", "-q", &by_digest]).ok();
    let before = snapshot(&eskrun.cache());
    let requests_before = proxy.requests().len();
    eskrun.run(&["pull", "-q", &by_digest]).ok();
    assert_eq!(snapshot(&eskrun.cache()), before);
    assert_eq!(proxy.requests().len(), requests_before);

    // A new image under the tag is pulled.
    let newer = reg
        .push_image("fresh/app", "1", &small_image(Format::Docker, "newer"))
        .await;
    eskrun.run(&["pull", "-q", &image]).ok();
    assert_eq!(
        fs::read_to_string(eskrun.layer_dir(&newer.layer_digests[0]).join("tree/which")).unwrap(),
        "newer"
    );
    let row = listed(&eskrun)
        .into_iter()
        .find(|row| row["reference"] == image.as_str())
        .unwrap();
    assert_eq!(row["manifest_digest"], newer.manifest_digest.as_str());

    // A layer gone from the cache (removed by hand): the next pull puts it back.
    let layer = eskrun.layer_dir(&newer.layer_digests[0]);
    fs::remove_dir_all(&layer).unwrap();
    let gets = blob_gets(&proxy, &newer.layer_digests[0]);
    eskrun.run(&["pull", "-q", &image]).ok();
    assert_eq!(
        fs::read_to_string(layer.join("tree/which")).unwrap(),
        "newer"
    );
    assert_eq!(blob_gets(&proxy, &newer.layer_digests[0]), gets + 1);
}

#[tokio::test]
async fn progress_bars_on_a_terminal() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = reg
        .push_image("bars/app", "1", &small_image(Format::Oci, "bars"))
        .await;
    let eskrun = Eskrun::new();
    let pull = eskrun.command(&["pull", &format!("{}/bars/app:1", reg.host)]);
    // script(1) gives eskrun a terminal; the command line is quoted for its shell.
    let line = std::iter::once(pull.get_program())
        .chain(pull.get_args())
        .map(|arg| format!("'{}'", arg.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let output = std::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env_clear()
        .envs(pull.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    let short = &pushed.layer_digests[0][7..19];
    assert!(
        shown.contains(&format!("{short}: ")) && shown.contains("done"),
        "{shown:?}"
    );
    assert!(
        !shown.contains("fetching"),
        "bars, not log lines: {shown:?}"
    );
    assert!(
        shown.trim_end_matches(' ').ends_with(&format!(
            "{}/bars/app:1: pulled {} (1 layers fetched, 0 already cached)\r\n",
            reg.host, pushed.manifest_digest
        )),
        "the last line is whole: {shown:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Errors: one line, a non-zero exit, the cache untouched.

/// Runs a pull expected to fail; checks the one line, that the cache did not change and
/// that no partial layer is left; returns the line.
#[track_caller]
fn failed_pull(eskrun: &Eskrun, args: &[&str]) -> String {
    let before = cache_state(eskrun);
    let mut all = vec!["pull", "--quiet"];
    all.extend_from_slice(args);
    let msg = eskrun.run(&all).one_line_error();
    assert_eq!(cache_state(eskrun), before, "cache changed by: {msg}");
    assert!(names(&eskrun.store().join("tmp")).is_empty(), "{msg}");
    msg
}

#[tokio::test]
async fn errors_are_one_line_and_leave_the_cache_untouched() {
    let reg = TestRegistry::start(Mode::Plain);
    reg.push_image("ok/app", "1", &small_image(Format::Docker, "ok"))
        .await;
    let hostile = Tar::new()
        .file("fine", 0o644, b"x")
        .raw(EntryType::Regular, b"../escape", b"", b"evil")
        .tar();
    let hostile = reg
        .push_image(
            "hostile/app",
            "1",
            &ImageSpec::with_layers(Format::Docker, vec![Layer::gzip(&hostile)]),
        )
        .await;
    // The registry refuses foreign layers without allowed URLs: the proxy serves the
    // manifest, naming the config of an image pushed normally.
    let base = reg
        .push_image("foreign/app", "base", &small_image(Format::Docker, "f"))
        .await;
    let mut manifest: serde_json::Value = serde_json::from_slice(&base.manifest_raw).unwrap();
    manifest["layers"][0]["mediaType"] =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
    manifest["layers"][0]["urls"] = serde_json::json!(["https://example.com/layer.tar.gz"]);
    let mut lying = Layer::gzip(&Tar::new().file("l", 0o644, b"l").tar());
    lying.diff_id = sha256(b"something else");
    let lying = reg
        .push_image(
            "lying/app",
            "1",
            &ImageSpec::with_layers(Format::Docker, vec![lying]),
        )
        .await;
    let proxy = FaultProxy::start(reg.addr());
    let host = &proxy.host;
    for _ in 0..2 {
        proxy.inject(
            "/v2/foreign/app/manifests/1",
            Fault::Respond {
                status: 200,
                headers: vec![("Content-Type".into(), DOCKER_MANIFEST.into())],
                body: serde_json::to_vec(&manifest).unwrap(),
            },
        );
    }

    // A cache that holds an image already, so "untouched" means something.
    let eskrun = Eskrun::new();
    eskrun
        .run(&["pull", "-q", &format!("{host}/ok/app:1")])
        .ok();

    let msg = failed_pull(&eskrun, &["Bad//Name:tag"]);
    assert!(msg.contains("Bad//Name:tag"), "{msg}");

    let msg = failed_pull(&eskrun, &[&format!("{host}/ok/app:missing")]);
    assert_eq!(
        msg,
        format!("eskrun: image {host}/ok/app:missing not found on {host}: check the name and tag")
    );

    // A tag not in the cache, so the answer to the manifest request is final (a failed HEAD
    // of a cached image's manifest falls back to a GET).
    // Twice: the second answers the HEAD with which eskrun asks when to retry.
    for _ in 0..2 {
        proxy.inject(
            "/manifests/2",
            Fault::Respond {
                status: 429,
                headers: vec![("Retry-After".into(), "120".into())],
                body: b"slow down".to_vec(),
            },
        );
    }
    let msg = failed_pull(&eskrun, &[&format!("{host}/ok/app:2")]);
    assert!(
        msg.starts_with(&format!(
            "eskrun: rate limited by {host} (HTTP 429): retry after 120 s (at "
        )),
        "{msg}"
    );
    assert!(msg.contains("eskrun login"), "{msg}");

    for _ in 0..3 {
        proxy.inject(
            "/manifests/2",
            Fault::Respond {
                status: 500,
                headers: vec![],
                body: b"broken".to_vec(),
            },
        );
    }
    let msg = failed_pull(&eskrun, &[&format!("{host}/ok/app:2")]);
    assert_eq!(
        msg,
        format!("eskrun: registry {host} failed with HTTP 500 (tried 3 times): broken")
    );

    let schema1 = br#"{"schemaVersion": 1, "name": "ok/app", "tag": "1", "fsLayers": []}"#;
    proxy.inject(
        "/manifests/old",
        Fault::Respond {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            )],
            body: schema1.to_vec(),
        },
    );
    let msg = failed_pull(&eskrun, &[&format!("{host}/ok/app:old")]);
    assert!(msg.contains("legacy Docker schema 1"), "{msg}");

    let msg = failed_pull(&eskrun, &[&format!("{host}/hostile/app:1")]);
    assert!(
        msg.contains(&format!("layer {}", hostile.layer_digests[0]))
            && msg.contains("\"../escape\""),
        "{msg}"
    );
    assert!(!eskrun.layer_dir(&hostile.layer_digests[0]).exists());

    let msg = failed_pull(&eskrun, &[&format!("{host}/foreign/app:1")]);
    assert!(msg.contains("foreign (non-distributable) layer"), "{msg}");
    assert!(msg.contains(&format!("{host}/foreign/app:1")), "{msg}");

    let msg = failed_pull(&eskrun, &[&format!("{host}/lying/app:1")]);
    assert!(
        msg.contains(&format!("layer {}", lying.layer_digests[0]))
            && msg.contains("the image is broken"),
        "{msg}"
    );

    let msg = failed_pull(
        &eskrun,
        &["--platform", "linux", &format!("{host}/ok/app:1")],
    );
    assert!(msg.contains("invalid platform \"linux\""), "{msg}");

    let unwritable = eskrun
        .command(&["pull", "-q", &format!("{host}/ok/app:1")])
        .env("ESKRUN_CACHE", "/proc/eskrun-cache")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unwritable.stderr);
    assert!(!unwritable.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("/proc/eskrun-cache") && stderr.contains("ESKRUN_CACHE"),
        "{stderr}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let msg = failed_pull(&eskrun, &[&format!("{closed}/ok/app:1")]);
    assert!(
        msg.starts_with(&format!("eskrun: cannot reach registry {closed}")),
        "{msg}"
    );

    let msg = eskrun
        .run(&["rmi", &format!("{host}/never/pulled:1")])
        .one_line_error();
    assert!(msg.contains("no such image in the cache"), "{msg}");
    assert_eq!(references(&eskrun), [format!("{host}/ok/app:1")]);
}

#[tokio::test]
async fn disk_full_is_one_line_naming_the_cache() {
    let reg = TestRegistry::start(Mode::Plain);
    let tar = big_layer(400, 2);
    reg.push_image(
        "full/app",
        "1",
        &ImageSpec::with_layers(Format::Docker, vec![Layer::gzip(&tar)]),
    )
    .await;
    let eskrun = Eskrun::new();
    fs::create_dir_all(eskrun.cache()).unwrap();
    // A 512 KiB tmpfs as the cache, in a mount namespace of its own (a user namespace too
    // when not root): it is gone with the process.
    let script = r#"mount -t tmpfs -o size=512k eskrun-test "$ESKRUN_CACHE" || exit 99
"$0" "$@"
code=$?
echo "left:" $(find "$ESKRUN_CACHE/v1/tmp" "$ESKRUN_CACHE/v1/layers/sha256" "$ESKRUN_CACHE/v1/refs" -mindepth 1) >&2
exit $code"#;
    let image = format!("{}/full/app:1", reg.host);
    let probe = eskrun.command(&["pull", "--quiet", &image]);
    let mut command = std::process::Command::new("unshare");
    if !running_as_root() {
        command.args(["--user", "--map-root-user"]);
    }
    command
        .args(["--mount", "--", "sh", "-c", script])
        .arg(probe.get_program())
        .args(probe.get_args())
        .envs(probe.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(99), "cannot mount: {stderr}");
    assert!(!output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "eskrun: disk full while writing the cache at {}: free space or set ESKRUN_CACHE",
                eskrun.cache().display()
            )
            .as_str(),
            "left:",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// TLS and credentials.

#[tokio::test]
async fn tls_registry_is_trusted_through_certs_d_only() {
    let reg = TestRegistry::start(Mode::Tls);
    let pushed = reg
        .push_image("secure/app", "1", &small_image(Format::Oci, "tls"))
        .await;
    let eskrun = Eskrun::new();
    eskrun.run(&["images"]).ok(); // an empty cache, to see that a failed pull leaves it so
    let image = format!("{}/secure/app:1", reg.host);
    let before = cache_state(&eskrun);
    let msg = eskrun.run(&["pull", "-q", &image]).one_line_error();
    let ca_path = eskrun
        .config()
        .join("certs.d")
        .join(&reg.host)
        .join("ca.crt");
    assert!(
        msg.starts_with(&format!("eskrun: TLS failure talking to {}", reg.host)),
        "{msg}"
    );
    assert!(msg.contains(&ca_path.display().to_string()), "{msg}");
    assert_eq!(cache_state(&eskrun), before);

    fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    fs::copy(reg.ca.as_ref().unwrap(), &ca_path).unwrap();
    eskrun.run(&["pull", "-q", &image]).ok();
    assert_eq!(
        fs::read_to_string(
            eskrun
                .layer_dir(&pushed.layer_digests[0])
                .join("tree/which")
        )
        .unwrap(),
        "tls"
    );
}

#[tokio::test]
async fn basic_auth_login_pull_and_logout() {
    let reg = TestRegistry::start(Mode::Basic);
    for tag in ["1", "2"] {
        reg.push_image("locked/app", tag, &small_image(Format::Docker, tag))
            .await;
    }
    let eskrun = Eskrun::new();
    eskrun.run(&["images"]).ok(); // an empty cache, to see that a failed pull leaves it so
    let image = |tag: &str| format!("{}/locked/app:{tag}", reg.host);

    let msg = failed_pull(&eskrun, &[&image("1")]);
    assert!(
        msg.contains(&format!("`eskrun login {}`", reg.host)),
        "{msg}"
    );

    let wrong = eskrun.run_with_stdin(
        &["login", "--username", USER, "--password-stdin", &reg.host],
        "wrong\n",
    );
    let msg = wrong.one_line_error();
    assert!(
        msg.contains(&format!("login to {} failed", reg.host)),
        "{msg}"
    );
    assert!(!eskrun.docker_config().join("config.json").exists());

    let login = eskrun
        .run_with_stdin(
            &["login", "--username", USER, "--password-stdin", &reg.host],
            &format!("{PASSWORD}\n"),
        )
        .ok();
    assert_eq!(login.stdout.trim(), "Login Succeeded");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(eskrun.docker_config().join("config.json")).unwrap())
            .unwrap();
    assert!(config["auths"][&reg.host]["auth"].is_string(), "{config}");
    let mode = fs::metadata(eskrun.docker_config().join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "credentials are private to the user");

    eskrun.run(&["pull", "-q", &image("1")]).ok();
    assert_eq!(references(&eskrun), [image("1")]);

    let logout = eskrun.run(&["logout", &reg.host]).ok();
    assert_eq!(
        logout.stdout.trim(),
        format!("Removed login credentials for {}", reg.host)
    );
    let config = fs::read_to_string(eskrun.docker_config().join("config.json")).unwrap();
    assert!(!config.contains(&reg.host), "{config}");
    let msg = failed_pull(&eskrun, &[&image("2")]);
    assert!(msg.contains("eskrun login"), "{msg}");
    let again = eskrun.run(&["logout", &reg.host]).ok();
    assert_eq!(
        again.stdout.trim(),
        format!("Not logged in to {}", reg.host)
    );
}

#[tokio::test]
async fn token_auth_anonymous_then_logged_in() {
    let reg = TestRegistry::start(Mode::Token);
    reg.push_image("public/app", "1", &small_image(Format::Oci, "public"))
        .await;
    let private = reg
        .push_image(
            &format!("{PRIVATE_PREFIX}app"),
            "1",
            &small_image(Format::Oci, "private"),
        )
        .await;
    let eskrun = Eskrun::new();
    eskrun
        .run(&["pull", "-q", &format!("{}/public/app:1", reg.host)])
        .ok();
    let image = format!("{}/{PRIVATE_PREFIX}app:1", reg.host);
    let msg = failed_pull(&eskrun, &[&image]);
    assert!(
        msg.contains(&format!("`eskrun login {}`", reg.host)),
        "{msg}"
    );
    eskrun
        .run_with_stdin(
            &["login", "-u", USER, "--password-stdin", &reg.host],
            PASSWORD,
        )
        .ok();
    eskrun.run(&["pull", "-q", &image]).ok();
    assert_eq!(
        fs::read_to_string(
            eskrun
                .layer_dir(&private.layer_digests[0])
                .join("tree/which")
        )
        .unwrap(),
        "private"
    );
}

// ---------------------------------------------------------------------------------------
// Freeing space.

#[tokio::test]
async fn rmi_and_prune_free_only_what_no_image_uses() {
    let reg = TestRegistry::start(Mode::Plain);
    let base = Layer::gzip(&Tar::new().file("base", 0o644, b"base").tar());
    let top = |name: &str| Layer::gzip(&Tar::new().file(name, 0o644, name.as_bytes()).tar());
    let spec = |name: &str| ImageSpec::with_layers(Format::Docker, vec![base.clone(), top(name)]);
    let a = reg.push_image("gc/a", "1", &spec("a")).await;
    let b = reg.push_image("gc/b", "1", &spec("b")).await;
    let eskrun = Eskrun::new();
    let (image_a, image_b) = (
        format!("{}/gc/a:1", reg.host),
        format!("{}/gc/b:1", reg.host),
    );
    for image in [&image_a, &image_b] {
        eskrun.run(&["pull", "-q", image]).ok();
    }
    assert_eq!(a.layer_digests[0], b.layer_digests[0], "a shared layer");

    let rmi = eskrun.run(&["rmi", &image_a]).ok();
    assert!(
        rmi.stdout.contains(&format!("Untagged: {image_a}"))
            && rmi.stdout.contains("(1 layers, 2 manifests/configs)"),
        "{}",
        rmi.stdout
    );
    assert!(!eskrun.layer_dir(&a.layer_digests[1]).exists());
    assert!(eskrun.layer_dir(&b.layer_digests[0]).exists(), "shared");
    assert!(eskrun.layer_dir(&b.layer_digests[1]).exists());
    assert_eq!(references(&eskrun), std::slice::from_ref(&image_b));

    // gc/b:1 moves to a new image: its old top layer is no longer used.
    let c = reg.push_image("gc/b", "1", &spec("c")).await;
    eskrun.run(&["pull", "-q", &image_b]).ok();
    // A dead pull's leftover, and a live one (its layer lock held).
    let dead = eskrun.store().join(format!("tmp/layer-{}", "d".repeat(64)));
    let live = eskrun.store().join(format!("tmp/layer-{}", "e".repeat(64)));
    for dir in [&dead, &live] {
        fs::create_dir_all(dir.join("tree")).unwrap();
        fs::write(dir.join("tree/junk"), noise(1, 100_000)).unwrap();
    }
    let lock = fs::File::create(
        eskrun
            .store()
            .join(format!("locks/layer-{}.lock", "e".repeat(64))),
    )
    .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    // What a pull killed while writing a ref or a manifest leaves.
    let partial_ref = eskrun.store().join("refs/.x%2Fy:1.json.tmp-4242");
    let partial_manifest = eskrun
        .store()
        .join(format!("manifests/sha256/.{}.tmp-4242", "f".repeat(64)));
    for file in [&partial_ref, &partial_manifest] {
        fs::write(file, b"{\"half\":").unwrap();
    }

    let prune = eskrun.run(&["prune"]).ok();
    assert!(
        prune.stdout.starts_with("Freed ")
            && prune.stdout.contains("(1 layers, 2 manifests/configs)"),
        "{}",
        prune.stdout
    );
    assert!(!prune.stdout.starts_with("Freed 0 B"), "{}", prune.stdout);
    assert!(!eskrun.layer_dir(&b.layer_digests[1]).exists());
    assert!(eskrun.layer_dir(&c.layer_digests[0]).exists());
    assert!(eskrun.layer_dir(&c.layer_digests[1]).exists());
    assert!(!dead.exists(), "dead leftover removed");
    assert!(!partial_ref.exists() && !partial_manifest.exists());
    assert!(live.exists(), "a pull in progress keeps its directory");
    drop(held);

    let again = eskrun.run(&["prune"]).ok();
    assert!(
        again.stdout.contains("(0 layers, 0 manifests/configs)"),
        "{}",
        again.stdout
    );
    assert!(!live.exists());
    assert_eq!(references(&eskrun), [image_b]);
    assert_eq!(
        names(&eskrun.store().join("layers/sha256")).len(),
        2,
        "only c's layers remain"
    );
}

// ---------------------------------------------------------------------------------------
// Rootless.

#[tokio::test]
async fn rootless_pull_owns_its_files_and_records_the_image_owners() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = push_main_image(&reg, "rootless/app", Format::Oci).await;
    let eskrun = if running_as_root() {
        Eskrun::as_test_user()
    } else {
        Eskrun::new()
    };
    let ids = eskrun.user().unwrap_or_else(|| {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    });
    let run: Run = eskrun
        .run(&["pull", &format!("{}/rootless/app:1", reg.host)])
        .ok();
    let skipped: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("skipped"))
        .collect();
    assert_eq!(
        skipped,
        [format!(
            "{}: skipped 2 device nodes/FIFOs (only real root can create them)",
            &pushed.layer_digests[2][7..19]
        )],
        "{}",
        run.stderr
    );
    check_main_layers(&eskrun, &pushed.layer_digests, Some(ids));
    for path in listing(&eskrun.store()) {
        let meta = fs::symlink_metadata(eskrun.store().join(&path)).unwrap();
        assert_eq!(meta.uid(), ids.0, "{path}");
    }
    let rows = listed(&eskrun);
    assert_eq!(rows.len(), 1);
    // The user can remove what it pulled, read-only directories included.
    eskrun
        .run(&["rmi", &format!("{}/rootless/app:1", reg.host)])
        .ok();
    assert!(names(&eskrun.store().join("layers/sha256")).is_empty());
}
