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
        if let Some(reference) = parse_common(input) {
            return Ok(ImageRef(reference));
        }
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

/// The everyday shapes of a reference, `[host[:port]/]path[:tag][@sha256:hex]` in plain ASCII,
/// parsed without oci-spec's regular expression: building that expression costs about 30 ms,
/// four times a whole `eskrun run`. Anything this conservative subset does not accept goes to
/// oci-spec, so it decides every unusual or wrong reference; the tests check both agree.
fn parse_common(input: &str) -> Option<Reference> {
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => {
            let hex = digest.strip_prefix("sha256:")?;
            let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return None;
            }
            (rest, Some(digest.to_string()))
        }
        None => (input, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let bytes = tag.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 128
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return None;
        }
    }
    let (registry, path) = match name.split_once('/') {
        Some((host, path)) if host.contains(['.', ':']) || host == "localhost" => {
            if !is_host(host) {
                return None;
            }
            (
                if host == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    host
                },
                path,
            )
        }
        _ => (DOCKER_HUB, name),
    };
    if path.is_empty() || !path.split('/').all(is_path_component) {
        return None;
    }
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if repository.len() > 255 {
        return None;
    }
    let (registry, tag) = (registry.to_string(), tag.map(str::to_string));
    Some(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest)
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest".into())),
    })
}

/// `label(.label)*(:port)?`, labels of ASCII letters, digits and inner '-'.
fn is_host(host: &str) -> bool {
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by one separator: `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        if !(matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
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

    #[test]
    fn the_fast_path_agrees_with_oci_spec() {
        let digest = format!("@{DIGEST}");
        let mut inputs = vec![];
        for name in [
            "ubuntu",
            "kave/eskapade-env",
            "library/busybox",
            "docker.io/ubuntu",
            "index.docker.io/kave/x",
            "localhost/app",
            "localhost:5000/a/b/c",
            "127.0.0.1:5000/team/app",
            "reg.example.com/a.b/c_d/e__f/g---h",
            "my-host.lab:443/x",
            "a_b/c",
            "foo/Bar",
            "Foo/bar",
            "foo//bar",
            "foo/bar/",
            "-foo/bar",
            "foo-/bar",
            "host-.lab/x",
            "ho_st.lab/x",
            "foo/a___b",
            "foo/a..b",
            "foo/a.-b",
            "foo:5000",
            "localhost:/x",
        ] {
            for suffix in ["", ":0.7", ":latest", ":_x", ":.x", ":-x", ":a:b"] {
                inputs.push(format!("{name}{suffix}"));
                inputs.push(format!("{name}{suffix}{digest}"));
            }
        }
        inputs.push(format!("ubuntu@sha256:{}", "A".repeat(64)));
        inputs.push(format!("ubuntu@sha256:{}", "a".repeat(63)));
        inputs.push(format!("ubuntu@sha512:{}", "a".repeat(128)));
        inputs.push(format!("a/{}", "b".repeat(260)));
        inputs.push(format!("ubuntu:{}", "t".repeat(129)));
        for input in &inputs {
            if let Some(reference) = parse_common(input) {
                assert_eq!(
                    input.parse::<Reference>().as_ref(),
                    Ok(&reference),
                    "{input}"
                );
            }
        }
        for everyday in [
            "kave/eskapade-env:0.7",
            "ubuntu",
            "localhost:5000/a/b:1",
            &format!("127.0.0.1:5000/x:1{digest}"),
        ] {
            assert!(parse_common(everyday).is_some(), "{everyday} is slow");
        }
    }

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
