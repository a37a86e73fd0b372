//! Removing an unpacked layer directory.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Removes a layer directory, complete or half unpacked, also rootless when the image made
/// some of its directories read-only or unreadable (modes such as 0555 or 0000, which keep
/// even their owner from emptying them). Symlinks are removed, never followed. A missing
/// directory is not an error.
pub fn remove_layer_dir(dir: &Path) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = match fs_err::symlink_metadata(&dir) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            other => other?,
        };
        if !meta.is_dir() {
            continue;
        }
        if meta.permissions().mode() & 0o700 != 0o700 {
            fs_err::set_permissions(&dir, Permissions::from_mode(0o700))?;
        }
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    match fs_err::remove_dir_all(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
