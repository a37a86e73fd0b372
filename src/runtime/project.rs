//! `eskrun up`'s project settings: an optional `eskrun.toml` in the project directory.
//!
//! ```toml
//! image = "kave/eskapade-env:0.7"
//! target = "/opt/eskapade"     # where the directory is mounted
//! command = ["jupyter", "lab"] # instead of the image's CMD
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

pub const DEFAULT_IMAGE: &str = "kave/eskapade-env:0.7";
pub const DEFAULT_TARGET: &str = "/opt/eskapade";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Project {
    pub image: String,
    pub target: String,
    pub command: Vec<String>,
}

impl Default for Project {
    fn default() -> Self {
        Project {
            image: DEFAULT_IMAGE.into(),
            target: DEFAULT_TARGET.into(),
            command: Vec::new(),
        }
    }
}

impl Project {
    /// Reads `dir/eskrun.toml`; a missing file gives the defaults.
    pub fn load(dir: &Path) -> Result<Project> {
        let path = dir.join("eskrun.toml");
        match fs_err::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {}",
                    path.display(),
                    e.message().trim().replace('\n', " ")
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Project::default()),
            Err(e) => Err(e).context("reading the project settings"),
        }
    }
}

/// The container name for a project directory: its name, lower-cased, other characters as '-'.
pub fn container_name(dir: &Path) -> String {
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.is_empty() {
        "eskrun-project".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_names() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Project::load(d.path()).unwrap(), Project::default());
        std::fs::write(
            d.path().join("eskrun.toml"),
            "image = \"x:1\"\ncommand = [\"sh\"]\n",
        )
        .unwrap();
        let p = Project::load(d.path()).unwrap();
        assert_eq!(
            (p.image.as_str(), p.target.as_str(), p.command.len()),
            ("x:1", DEFAULT_TARGET, 1)
        );
        std::fs::write(d.path().join("eskrun.toml"), "imag = 1\n").unwrap();
        assert!(Project::load(d.path()).is_err());
        assert_eq!(
            container_name(Path::new("/home/u/My Project")),
            "my-project"
        );
        assert_eq!(container_name(Path::new("/")), "eskrun-project");
    }
}
