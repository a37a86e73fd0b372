//! eskrun's configuration file, `config.toml` in [`crate::dirs::config_dir`]:
//!
//! ```toml
//! insecure_registries = ["registry.lab:5000"]
//!
//! [mirrors]
//! "docker.io" = ["mirror.site:5000", "https://mirror2.site"]
//! ```
//!
//! A missing file means the defaults. Only what the registry client needs lives here; the
//! rest of eskrun is configured by flags and environment variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// The parsed configuration file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Registries (`host` or `host:port`) that may be reached over plain HTTP when they do not
    /// speak TLS.
    pub insecure_registries: Vec<String>,
    /// Pull-through mirrors, tried in order before the registry itself. Keyed by the
    /// registry's name in references (`docker.io` for Docker Hub, the usual case).
    pub mirrors: BTreeMap<String, Vec<String>>,
}

impl Config {
    /// The file eskrun reads.
    pub fn path() -> PathBuf {
        crate::dirs::config_dir().join("config.toml")
    }

    /// Reads [`Config::path`]; a missing file gives the defaults.
    pub fn load() -> Result<Config> {
        Self::load_from(&Self::path())
    }

    /// Reads one configuration file; a missing file gives the defaults.
    pub fn load_from(path: &Path) -> Result<Config> {
        let text = match fs_err::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(err) => return Err(err.into()),
        };
        Self::parse(&text).with_context(|| format!("bad configuration file {}", path.display()))
    }

    fn parse(text: &str) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|err| {
            // toml's own message spans several lines (it quotes the source); keep one.
            let line = err
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1);
            let message = err.message().trim().replace('\n', " ");
            match line {
                Some(line) => anyhow::anyhow!("line {line}: {message}"),
                None => anyhow::anyhow!("{message}"),
            }
        })?;
        // Docker's config lets mirrors be URLs; the client wants host[:port].
        for hosts in config.mirrors.values_mut() {
            for host in hosts.iter_mut() {
                *host = strip_scheme(host);
            }
        }
        config.insecure_registries = config
            .insecure_registries
            .iter()
            .map(|h| strip_scheme(h))
            .collect();
        Ok(config)
    }

    /// The mirrors to try, in order, for a registry named `registry` in references.
    pub fn mirrors_for(&self, registry: &str) -> &[String] {
        self.mirrors.get(registry).map_or(&[], Vec::as_slice)
    }

    /// Whether the user marked `host` (`host` or `host:port`) insecure.
    pub fn is_insecure(&self, host: &str) -> bool {
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        self.insecure_registries
            .iter()
            .any(|entry| entry == host || entry == bare)
    }
}

fn strip_scheme(host: &str) -> String {
    let host = host
        .strip_prefix("https://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host);
    host.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load_from(&dir.path().join("config.toml")).unwrap();
        assert_eq!(config, Config::default());
        assert!(config.mirrors_for("docker.io").is_empty());
    }

    #[test]
    fn reads_insecure_registries_and_mirrors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs_err::write(
            &path,
            "insecure_registries = [\"lab.example:5000\", \"plain.example\"]\n\
             [mirrors]\n\"docker.io\" = [\"mirror.example:5000\", \"https://second.example/\"]\n",
        )
        .unwrap();
        let config = Config::load_from(&path).unwrap();
        assert_eq!(
            config.mirrors_for("docker.io"),
            ["mirror.example:5000", "second.example"]
        );
        assert!(config.mirrors_for("quay.io").is_empty());
        assert!(config.is_insecure("lab.example:5000"));
        assert!(!config.is_insecure("lab.example:5001"));
        assert!(config.is_insecure("plain.example:443"));
        assert!(!config.is_insecure("other.example"));
    }

    #[test]
    fn parse_error_names_file_and_line_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs_err::write(
            &path,
            "# comment\n\ninsecure_registries = [\"a\",\n  oops ]\n",
        )
        .unwrap();
        let msg = format!("{:#}", Config::load_from(&path).unwrap_err());
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        fs_err::write(&path, "insecure = []\n").unwrap();
        let msg = format!("{:#}", Config::load_from(&path).unwrap_err());
        assert!(msg.contains("line 1") && msg.contains("insecure"), "{msg}");
    }
}
