//! Resolves the container user (`name|uid[:group|gid]`) from the image's /etc/passwd and
//! /etc/group, read straight from the unpacked layers (topmost first, honouring whiteouts and
//! opaque directories) so no rootfs has to be mounted to know the ids.

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The user the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from the image's /etc/group (not including `gid`).
    pub additional_gids: Vec<u32>,
    /// Home directory from /etc/passwd, `/` when the user has no entry.
    pub home: String,
}

/// Resolves `spec` (`""` means root) against the image's files. A name missing from
/// /etc/passwd (or /etc/group) is an error, as in Docker; a numeric id needs no entry.
pub fn resolve(spec: &str, layers: &[PathBuf]) -> Result<User> {
    let mut seen = LayerLookups::default();
    let passwd = read_image_file(layers, "etc/passwd", &mut seen)?.unwrap_or_default();
    let group = read_image_file(layers, "etc/group", &mut seen)?.unwrap_or_default();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 6
                && (f[0] == user_part || (user_part.parse::<u32>().is_ok() && f[2] == user_part))
        });
    let (uid, mut gid, home, name) = match (&entry, user_part.parse::<u32>()) {
        (Some(f), _) => (
            parse_id(f[2], "uid", "/etc/passwd")?,
            parse_id(f[3], "gid", "/etc/passwd")?,
            f[5].to_string(),
            Some(f[0].to_string()),
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => {
            bail!("unable to find user {user_part}: no matching entries in the image's /etc/passwd")
        }
    };
    if let Some(g) = group_part {
        gid = group_id(g, &group)?;
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                let g = parse_id(f[2], "gid", "/etc/group")?;
                if g != gid && !additional_gids.contains(&g) {
                    additional_gids.push(g);
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Resolves `--group-add` values (names from the image's /etc/group, or numbers).
pub fn resolve_groups(groups: &[String], layers: &[PathBuf]) -> Result<Vec<u32>> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let table =
        read_image_file(layers, "etc/group", &mut LayerLookups::default())?.unwrap_or_default();
    groups.iter().map(|g| group_id(g, &table)).collect()
}

/// A group given as a number, or by name from the image's /etc/group (`table`).
fn group_id(group: &str, table: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    table
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == group)
        .map(|f| parse_id(f[2], "gid", "/etc/group"))
        .transpose()?
        .with_context(|| {
            format!("unable to find group {group}: no matching entries in the image's /etc/group")
        })
}

fn parse_id(s: &str, what: &str, file: &str) -> Result<u32> {
    s.parse()
        .with_context(|| format!("the image's {file} has an invalid {what} {s:?}"))
}

/// Reads `rel` (relative, no `..`) as the overlay of `layers` (lowest first) would show it.
pub fn read_image_file(
    layers: &[PathBuf],
    rel: &str,
    seen: &mut LayerLookups,
) -> Result<Option<String>> {
    use std::io::Read;
    let Some((path, meta)) = image_entry(layers, rel, seen)? else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    // Its size is known: read into room for it (and the end), without `fs::read`'s own
    // stat and seek for a size hint.
    let mut bytes = Vec::with_capacity(meta.len() as usize + 1);
    fs_err::File::open(&path)?
        .take(u64::MAX)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The entry `rel` (relative, no `..`) names in the overlay of `layers` (lowest first), of
/// any type, with the layer file that provides it. `None` when it is missing or whited out.
/// A symlink on the way is not followed (it would resolve inside the container): `None`.
pub fn image_entry(
    layers: &[PathBuf],
    rel: &str,
    seen: &mut LayerLookups,
) -> Result<Option<(PathBuf, std::fs::Metadata)>> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for layer in layers.iter().rev() {
        match lookup_in_layer(layer, &comps, seen)? {
            Found::Entry(path, meta) => return Ok(Some((path, meta))),
            Found::Hidden => return Ok(None),
            Found::NotHere => {}
        }
    }
    Ok(None)
}

enum Found {
    Entry(PathBuf, std::fs::Metadata),
    /// Whited out, or a parent is opaque/not a directory here: lower layers don't count.
    Hidden,
    NotHere,
}

/// What was learnt of layer files while looking entries up, so that the lookups of one start
/// (the user's files, the init layer's mount points) ask the filesystem about each directory
/// once: `etc` is on the way to every file in it, each time a stat and two xattr reads on the
/// cache's long paths.
#[derive(Default)]
pub struct LayerLookups {
    meta: HashMap<PathBuf, Option<std::fs::Metadata>>,
    opaque: HashMap<PathBuf, bool>,
}

impl LayerLookups {
    /// `path`'s own metadata (a symlink is not followed), `None` when it does not exist.
    fn meta(&mut self, path: &Path) -> Result<Option<std::fs::Metadata>> {
        if let Some(known) = self.meta.get(path) {
            return Ok(known.clone());
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        self.meta.insert(path.to_path_buf(), meta.clone());
        Ok(meta)
    }

    fn opaque(&mut self, dir: &Path) -> bool {
        *self
            .opaque
            .entry(dir.to_path_buf())
            .or_insert_with(|| is_opaque(dir))
    }
}

fn lookup_in_layer(layer: &Path, comps: &[&str], seen: &mut LayerLookups) -> Result<Found> {
    let mut path = layer.to_path_buf();
    for (i, comp) in comps.iter().enumerate() {
        path.push(comp);
        let Some(meta) = seen.meta(&path)? else {
            return Ok(Found::NotHere);
        };
        let ft = meta.file_type();
        if ft.is_char_device()
            && nix::sys::stat::major(std::os::unix::fs::MetadataExt::rdev(&meta)) == 0
        {
            return Ok(Found::Hidden);
        }
        if i + 1 == comps.len() {
            return Ok(Found::Entry(path, meta));
        }
        if !ft.is_dir() {
            return Ok(Found::Hidden);
        }
        if seen.opaque(&path) {
            // Lower layers are hidden below this directory: only this layer can have it.
            return match lookup_in_layer(&path, &comps[i + 1..], seen)? {
                Found::NotHere => Ok(Found::Hidden),
                other => Ok(other),
            };
        }
    }
    Ok(Found::NotHere)
}

/// Whether `dir` of an unpacked layer is opaque (hides the lower layers' contents).
pub fn is_opaque(dir: &Path) -> bool {
    ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|name| nix_getxattr(dir, name).as_deref() == Some(b"y".as_slice()))
}

fn nix_getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = [0u8; 8];
    // SAFETY: both strings are NUL-terminated and buf outlives the call.
    let len =
        unsafe { nix::libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        d
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nesdev:x:1000:1000::/home/esdev:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nesdev:x:1000:\nstaff:x:50:esdev\n";

    #[test]
    fn names_ids_and_groups() {
        let l = layer(&[("etc/passwd", PASSWD), ("etc/group", GROUP)]);
        let layers = vec![l.path().to_path_buf()];
        let root = resolve("", &layers).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let u = resolve("esdev", &layers).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![50])
        );
        assert_eq!(u.home, "/home/esdev");
        assert_eq!(resolve("1000:staff", &layers).unwrap().gid, 50);
        let n = resolve("4242:7", &layers).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 7, "/"));
        let err = resolve("nobody", &layers).unwrap_err().to_string();
        assert!(err.contains("unable to find user nobody"), "{err}");
        assert!(resolve("esdev:nogroup", &layers).is_err());
        assert_eq!(
            resolve_groups(&["staff".into(), "7".into()], &layers).unwrap(),
            [50, 7]
        );
        assert!(resolve_groups(&["nogroup".into()], &layers).is_err());
    }

    #[test]
    fn topmost_layer_wins_and_whiteouts_hide() {
        let low = layer(&[("etc/passwd", PASSWD)]);
        let high = layer(&[("etc/passwd", "root:x:0:0::/r2:/bin/sh\n")]);
        let layers = vec![low.path().to_path_buf(), high.path().to_path_buf()];
        assert_eq!(resolve("", &layers).unwrap().home, "/r2");
        assert!(resolve("esdev", &layers).is_err());

        let wh = tempfile::tempdir().unwrap();
        std::fs::create_dir(wh.path().join("etc")).unwrap();
        nix::sys::stat::mknod(
            &wh.path().join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let layers = vec![low.path().to_path_buf(), wh.path().to_path_buf()];
        let none = read_image_file(&layers, "etc/passwd", &mut LayerLookups::default());
        assert_eq!(none.unwrap(), None);
        assert!(resolve("esdev", &layers).is_err());
    }
}
