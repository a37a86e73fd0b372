//! Image references with Docker's normalisation rules.
//!
//! The parsing and normalisation are oci-spec's (a port of Docker's own code); this module
//! adds what a user needs when a reference is wrong: one line saying which part is wrong.

use std::fmt;

use oci_client::{ParseError, Reference};

/// Docker Hub's name in references and the host that actually serves its registry API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_REGISTRY_HOST: &str = "registry-1.docker.io";

/// A reference that names one image: registry, repository, and a tag and/or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef(Reference);

/// Why a string is not an image reference. The message names the offending part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference \"{input}\": {reason}")]
pub struct ReferenceError {
    input: String,
    reason: String,
}

impl ImageRef {
    /// Parses `name[:tag][@digest]` with Docker's rules: no registry means `docker.io`, a
    /// one-component name on Docker Hub gets `library/`, no tag and no digest means `latest`.
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        let error = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        let reference = input
            .parse::<Reference>()
            .map_err(|err| error(explain(input, err)))?;
        // oci-spec lets an uppercase first component through when it is not a registry host
        // ("Kave/app"); Docker refuses it.
        if reference
            .repository()
            .chars()
            .any(|c| c.is_ascii_uppercase())
        {
            return Err(error(format!(
                "repository name \"{}\" must be lowercase",
                reference.repository()
            )));
        }
        Ok(ImageRef(reference))
    }

    /// The registry as written in the normalised reference (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The host (and port) that serves the registry API for this reference.
    pub fn registry_host(&self) -> &str {
        match self.registry() {
            DOCKER_HUB => DOCKER_HUB_REGISTRY_HOST,
            other => other,
        }
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The digest, when the reference pins one. It wins over the tag when both are given.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    pub fn oci(&self) -> &Reference {
        &self.0
    }

    /// The same image as served by `host` (the real registry host or a mirror): what the
    /// HTTP client is given, so that it talks to that host and nothing else.
    pub(crate) fn on_host(&self, host: &str) -> Reference {
        let (registry, repository) = (host.to_string(), self.repository().to_string());
        match (self.tag(), self.digest()) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
            }
            (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
            (tag, None) => {
                Reference::with_tag(registry, repository, tag.unwrap_or("latest").into())
            }
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// oci-spec answers "invalid reference format" for most mistakes; look at the parts to say
/// which one is wrong.
fn explain(input: &str, err: ParseError) -> String {
    if err != ParseError::ReferenceInvalidFormat {
        return match err {
            ParseError::DigestInvalidLength => {
                "the digest has the wrong length (sha256 takes 64 hex digits)".into()
            }
            ParseError::DigestUnsupported => {
                "unsupported digest algorithm (use sha256:<64 hex digits>)".into()
            }
            ParseError::NameEmpty => "the reference is empty".into(),
            other => other.to_string(),
        };
    }
    if input.trim() != input || input.contains(char::is_whitespace) {
        return "a reference may not contain spaces".into();
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (input, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algo, hex)| {
            let len = match algo {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => 0,
            };
            hex.len() == len && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return format!("bad digest \"{digest}\" (expected sha256:<64 hex digits>)");
        }
    }
    // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return format!(
                "bad tag \"{tag}\" (up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-')"
            );
        }
    }
    if name.is_empty() {
        return "the image name is empty".into();
    }
    // The first component is a registry host when it looks like one (Docker's rule).
    let repository = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    };
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return format!("repository name \"{repository}\" must be lowercase");
    }
    if repository.is_empty() || repository.split('/').any(str::is_empty) {
        return format!("repository name \"{repository}\" has an empty path component");
    }
    format!(
        "repository name \"{repository}\" may only contain lowercase letters, digits and \
         separators ('.', '_', '__', '-') between them, components joined by '/'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn reason(s: &str) -> String {
        ImageRef::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn docker_hub_user_image() {
        let r = parse("kave/eskapade-env:0.7");
        assert_eq!(r.to_string(), "docker.io/kave/eskapade-env:0.7");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "kave/eskapade-env");
        assert_eq!(r.tag(), Some("0.7"));
        assert_eq!(r.digest(), None);
    }

    #[test]
    fn official_image_gets_library_and_latest() {
        let r = parse("ubuntu");
        assert_eq!(r.to_string(), "docker.io/library/ubuntu:latest");
        assert_eq!(r.repository(), "library/ubuntu");
        assert_eq!(
            parse("index.docker.io/ubuntu").to_string(),
            "docker.io/library/ubuntu:latest"
        );
    }

    #[test]
    fn host_port_path_tag() {
        let r = parse("localhost:5000/team/tools/app:1.2.3");
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.registry_host(), "localhost:5000");
        assert_eq!(r.repository(), "team/tools/app");
        assert_eq!(r.tag(), Some("1.2.3"));
        assert_eq!(parse("127.0.0.1:5000/app").tag(), Some("latest"));
        assert_eq!(parse("registry.example/app").registry(), "registry.example");
        assert_eq!(parse("localhost/app").registry(), "localhost");
    }

    #[test]
    fn digest_only_and_tag_plus_digest() {
        let r = parse(&format!("busybox@{DIGEST}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(DIGEST));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{DIGEST}"));

        let r = parse(&format!("busybox:1.36@{DIGEST}"));
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.digest(), Some(DIGEST));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox:1.36@{DIGEST}")
        );
        // The digest wins: the reference sent to the registry names it.
        assert_eq!(r.on_host("mirror:5000").digest(), Some(DIGEST));
        assert_eq!(r.on_host("mirror:5000").registry(), "mirror:5000");
    }

    #[test]
    fn on_host_keeps_repository_and_tag() {
        let r = parse("ubuntu:22.04").on_host("registry-1.docker.io");
        assert_eq!(r.to_string(), "registry-1.docker.io/library/ubuntu:22.04");
        assert_eq!(r.resolve_registry(), "registry-1.docker.io");
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        assert!(reason("").contains("empty"), "{}", reason(""));
        assert!(reason("Kave/app").contains("\"Kave/app\" must be lowercase"));
        assert!(reason("example.com:5000/Team/app:1").contains("\"Team/app\" must be lowercase"));
        assert!(
            reason("app:-x").contains("bad tag \"-x\""),
            "{}",
            reason("app:-x")
        );
        assert!(
            reason("app:").contains("bad tag \"\""),
            "{}",
            reason("app:")
        );
        assert!(
            reason("app@sha256:xyz").contains("bad digest"),
            "{}",
            reason("app@sha256:xyz")
        );
        assert!(
            reason("app@sha256:ABC").contains("bad digest"),
            "{}",
            reason("app@sha256:ABC")
        );
        assert!(reason("app@sha256:0123").contains("bad digest"));
        let short = format!("app@sha256:{}", "0".repeat(40));
        assert!(
            reason(&short).contains("wrong length"),
            "{}",
            reason(&short)
        );
        assert!(reason("app@md5:0123456789abcdef0123456789abcdef").contains("unsupported digest"));
        assert!(
            reason("a//b").contains("empty path component"),
            "{}",
            reason("a//b")
        );
        assert!(reason("my app").contains("spaces"));
        assert!(
            reason("app$").contains("may only contain"),
            "{}",
            reason("app$")
        );
        // Every message is one line and quotes the input.
        for bad in ["", "Kave/app", "app:-x", "a//b", "app@sha256:xyz"] {
            let msg = reason(bad);
            assert!(!msg.contains('\n'));
            assert!(
                msg.starts_with(&format!("invalid image reference \"{bad}\"")),
                "{msg}"
            );
        }
    }
}
