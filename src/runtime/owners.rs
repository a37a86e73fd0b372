//! Rootless with a subordinate id range: the image's files with the owners the image gives
//! them. A rootless pull leaves every file the pulling user's, which inside the container
//! would make them all the container user's; a daemon running as another image user could
//! not write its own directories. So, in eskrun's user namespace (where it may chown to any
//! mapped id), each layer that needs it is copied once per id mapping with its owners from
//! layer.json, and that copy is stacked instead (see `unpack::copy_owned`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::userns::Identity;
use crate::store::LayerMeta;
use crate::unpack::{copy_owned, remove_layer_dir, Owners};

/// The directories to stack for `layers` (pulled trees, lowest first) under `identity`. Must
/// run inside eskrun's user namespace.
pub fn owned_layers(layers: &[PathBuf], identity: &Identity) -> Result<Vec<PathBuf>> {
    let Some(key) = identity.mapping_key() else {
        return Ok(layers.to_vec());
    };
    // The ids the pulling user has in here: what every file of a pulled tree shows.
    let user = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let mut told = false;
    layers
        .iter()
        .map(|tree| {
            let Some(meta) = LayerMeta::of_tree(tree)? else {
                return Ok(tree.clone());
            };
            // A tree real root pulled has its owners already.
            let ours = fs_err::symlink_metadata(tree)?.uid() == user.0;
            let needed = user != (0, 0) || meta.owners.iter().any(|(_, u, g)| (*u, *g) != user);
            if !ours || !needed {
                return Ok(tree.clone());
            }
            if let Some((path, u, g)) = meta.owners.iter().find(|(_, u, g)| !identity.maps(*u, *g)) {
                eprintln!("eskrun: layer {} gives {path:?} to {u}:{g}, beyond this user's subordinate ids: its files show as the container user's (a larger /etc/subuid and /etc/subgid range fixes it)", meta.digest);
                return Ok(tree.clone());
            }
            let owned = LayerMeta::owned_tree(tree, &key);
            if !owned.is_dir() {
                if !std::mem::replace(&mut told, true) {
                    eprintln!("eskrun: giving the image's files their owners for this user's id mapping (once per image and mapping)");
                }
                make(tree, &owned, &meta)?;
            }
            Ok(owned)
        })
        .collect()
}

/// Copies `tree` to `owned` through a temporary directory, so `owned` is complete once it
/// exists; a concurrent eskrun making the same copy is fine (the first rename wins).
fn make(tree: &Path, owned: &Path, meta: &LayerMeta) -> Result<()> {
    let parent = owned.parent().expect("an owned tree has a parent");
    fs_err::create_dir_all(parent)?;
    remove_abandoned(parent)?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        owned.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    fs_err::create_dir(&tmp)?;
    let owners: Owners = meta
        .owners
        .iter()
        .map(|(path, u, g)| (path.clone(), (*u, *g)))
        .collect();
    let copied = copy_owned(tree, &tmp, &owners)
        .map_err(anyhow::Error::from)
        .and_then(|()| match std::fs::rename(&tmp, owned) {
            Err(_) if owned.is_dir() => remove_layer_dir(&tmp).map_err(Into::into),
            other => other.map_err(Into::into),
        });
    if copied.is_err() {
        let _ = remove_layer_dir(&tmp);
    }
    copied.with_context(|| {
        format!(
            "giving the files of layer {} their owners in {}",
            meta.digest,
            tmp.display()
        )
    })
}

/// Removes copies left half made by an eskrun that was killed (their process is gone).
fn remove_abandoned(dir: &Path) -> Result<()> {
    for entry in fs_err::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix(".tmp-")
            .and_then(|n| n.rsplit('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            remove_layer_dir(&dir.join(&*name))?;
        }
    }
    Ok(())
}
