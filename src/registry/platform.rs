//! Platforms (`os/arch[/variant]`) and the choice of one entry of a multi-platform image.

use std::fmt;

use oci_client::manifest::ImageIndexEntry;

use super::RegistryError;

/// An OS, a CPU architecture and an optional variant, as Go names them (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform eskrun runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `os/arch` or `os/arch/variant`.
    pub fn parse(input: &str) -> Result<Platform, RegistryError> {
        let err = |reason: &str| RegistryError::Platform {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(err(
                "expected os/arch or os/arch/variant, e.g. linux/arm64/v8",
            ));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("a part is empty"));
        }
        if parts
            .iter()
            .any(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(err("only letters, digits and '_' are allowed in each part"));
        }
        let lower: Vec<String> = parts.iter().map(|p| p.to_ascii_lowercase()).collect();
        Ok(Platform {
            os: lower[0].clone(),
            architecture: lower[1].clone(),
            variant: lower.get(2).cloned(),
        })
    }

    /// Whether an image made for `other` runs here. A missing variant matches the
    /// architecture's default one (arm64 is v8), as containerd does.
    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != architecture {
            return false;
        }
        match (&self.variant, variant) {
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => default_variant(architecture) == Some(want.as_str()),
            (None, _) => true,
        }
    }

    /// The digest of the entry of `entries` for this platform, or an error listing what the
    /// image offers. An exact variant match beats an entry without a variant.
    pub(crate) fn choose(
        &self,
        image: &str,
        entries: &[ImageIndexEntry],
    ) -> Result<String, RegistryError> {
        let described: Vec<(&ImageIndexEntry, Platform)> = entries
            .iter()
            .filter_map(|e| {
                e.platform.as_ref().map(|p| {
                    let platform = Platform {
                        os: p.os.to_string(),
                        architecture: p.architecture.to_string(),
                        variant: p.variant.clone(),
                    };
                    (e, platform)
                })
            })
            .collect();
        let candidates: Vec<&(&ImageIndexEntry, Platform)> = described
            .iter()
            .filter(|(_, p)| self.matches(&p.os, &p.architecture, p.variant.as_deref()))
            .collect();
        let exact = candidates
            .iter()
            .find(|(_, p)| p.variant.is_some() && p.variant == self.variant);
        if let Some((entry, _)) = exact.or(candidates.first()).copied() {
            return Ok(entry.digest.clone());
        }
        let mut available: Vec<String> = described
            .iter()
            // Attestation manifests in BuildKit images say unknown/unknown: no platform.
            .filter(|(_, p)| p.os != "unknown")
            .map(|(_, p)| p.to_string())
            .collect();
        available.dedup();
        if available.is_empty() {
            available.push("no platform described".into());
        }
        Err(RegistryError::NoPlatform {
            image: image.to_string(),
            wanted: self.to_string(),
            available,
        })
    }
}

fn default_variant(architecture: &str) -> Option<&'static str> {
    match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, platform: serde_json::Value) -> ImageIndexEntry {
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
            "platform": platform,
        }))
        .unwrap()
    }

    fn index() -> Vec<ImageIndexEntry> {
        vec![
            entry(
                "sha256:amd",
                serde_json::json!({"os": "linux", "architecture": "amd64"}),
            ),
            entry(
                "sha256:armv6",
                serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v6"}),
            ),
            entry(
                "sha256:armv7",
                serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
            ),
            entry(
                "sha256:arm64",
                serde_json::json!({"os": "linux", "architecture": "arm64"}),
            ),
            entry(
                "sha256:att",
                serde_json::json!({"os": "unknown", "architecture": "unknown"}),
            ),
        ]
    }

    #[test]
    fn parses_and_prints() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.os, "linux");
        assert_eq!(p.architecture, "arm64");
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(Platform::parse("linux/amd64").unwrap().variant, None);
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            let msg = Platform::parse(bad).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid platform \"{bad}\"")),
                "{msg}"
            );
        }
    }

    #[test]
    fn host_platform_is_linux_with_go_arch_name() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.contains('_'), "{host}");
    }

    #[test]
    fn chooses_by_os_arch_variant() {
        let pick = |p: &str| Platform::parse(p).unwrap().choose("img", &index()).unwrap();
        assert_eq!(pick("linux/amd64"), "sha256:amd");
        assert_eq!(pick("linux/arm/v7"), "sha256:armv7");
        assert_eq!(pick("linux/arm/v6"), "sha256:armv6");
        // arm64 without a variant in the index is v8.
        assert_eq!(pick("linux/arm64/v8"), "sha256:arm64");
        assert_eq!(pick("linux/arm64"), "sha256:arm64");
    }

    #[test]
    fn no_match_lists_what_the_image_has() {
        let err = Platform::parse("linux/s390x")
            .unwrap()
            .choose("docker.io/library/x:1", &index())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image docker.io/library/x:1 has no variant for platform linux/s390x; it has: \
             linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64"
        );
        assert!(Platform::parse("linux/arm64/v9")
            .unwrap()
            .choose("i", &index())
            .is_err());
    }
}
