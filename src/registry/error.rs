//! What can go wrong talking to a registry, each as one line that says what to do.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// A registry operation failed. The `Display` form is the one line shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {image} not found on {host}: check the name and tag")]
    NotFound { image: String, host: String },

    /// Docker Hub also answers this way for a repository that does not exist, so the
    /// message names both causes, as Docker's does.
    #[error("access to {image} denied by {host}: check the name, or run `eskrun login {registry}` if it needs credentials")]
    Denied {
        image: String,
        host: String,
        registry: String,
    },

    #[error(
        "rate limited by {host} (HTTP 429): {when}; `eskrun login {registry}` may raise the limit"
    )]
    RateLimited {
        host: String,
        registry: String,
        when: String,
        /// The request that was refused, asked again to learn when to retry (see
        /// `Endpoint::retry_after`).
        url: String,
    },

    #[error("registry {host} failed with HTTP {status} (tried {tries} times): {message}")]
    Server {
        host: String,
        status: u16,
        tries: u32,
        message: String,
    },

    #[error("cannot reach registry {host}: {detail}")]
    Unreachable { host: String, detail: String },

    #[error("TLS failure talking to {host}: {detail}; if it uses a private CA, put the CA certificate at {} (or use /etc/docker/certs.d/{host}/)", ca_path.display())]
    Tls {
        host: String,
        detail: String,
        ca_path: PathBuf,
    },

    #[error("bad CA certificate file {}: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },

    #[error("image {image} uses the legacy Docker schema 1 manifest format, which eskrun does not support: push the image again with a current docker/podman/buildah")]
    Schema1 { image: String },

    #[error("image {image} has no variant for platform {wanted}; it has: {}", available.join(", "))]
    NoPlatform {
        image: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error("image {image} from {host}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        image: String,
        host: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("image {image} from {host}: unsupported manifest: {detail}")]
    Unsupported {
        image: String,
        host: String,
        detail: String,
    },

    #[error("image {image} from {host}: download of blob {digest} broke off at byte {offset} and could not be resumed: {detail}")]
    Transfer {
        image: String,
        host: String,
        digest: String,
        offset: u64,
        detail: String,
    },

    #[error("login to {registry} failed: {detail}")]
    Login { registry: String, detail: String },

    #[error("credentials for {host}: {detail}")]
    Credentials { host: String, detail: String },

    #[error("invalid platform \"{input}\": {reason}")]
    Platform { input: String, reason: String },

    #[error("registry {host} ({image}): {detail}")]
    Other {
        image: String,
        host: String,
        detail: String,
    },
}

impl RegistryError {
    /// Worth another try: a 5xx answer or a connection that broke.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            RegistryError::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Names what a digest mismatch was about.
    pub(crate) fn about(self, what: &str) -> RegistryError {
        match self {
            RegistryError::DigestMismatch {
                image,
                host,
                expected,
                actual,
                ..
            } => RegistryError::DigestMismatch {
                image,
                host,
                what: what.to_string(),
                expected,
                actual,
            },
            other => other,
        }
    }

    /// A mirror failing this way should make us try the next mirror or the upstream.
    pub(crate) fn try_next_host(&self) -> bool {
        !matches!(
            self,
            RegistryError::Schema1 { .. }
                | RegistryError::NoPlatform { .. }
                | RegistryError::Credentials { .. }
        )
    }
}

/// What an operation was about, to put in its error message.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    pub image: String,
    /// The registry's name in references (`docker.io`), what `eskrun login` takes.
    pub registry: String,
    /// The host that was asked.
    pub host: String,
    /// Where the user's own CA certificate for `host` goes.
    pub ca_path: PathBuf,
}

impl Context {
    pub fn error(&self, err: OciDistributionError) -> RegistryError {
        let (image, host) = (self.image.clone(), self.host.clone());
        match err {
            OciDistributionError::RequestError(err) => self.transport_error(&err),
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.denied(),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    RegistryError::NotFound { image, host }
                } else if codes.contains(&&OciErrorCode::BlobUnknown) {
                    RegistryError::Other {
                        image,
                        host,
                        detail: "the registry lacks a blob the image's manifest lists (BLOB_UNKNOWN): the image is broken there, push it again".into(),
                    }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    self.denied()
                } else if codes.contains(&&OciErrorCode::Toomanyrequests) {
                    self.rate_limited(url)
                } else {
                    RegistryError::Other {
                        image,
                        host,
                        detail: message,
                    }
                }
            }
            OciDistributionError::ServerError { code, message, url } => {
                self.status_error(code, &message, url)
            }
            OciDistributionError::DigestError(err) => match err {
                oci_client::errors::DigestError::VerificationError { expected, actual } => {
                    RegistryError::DigestMismatch {
                        image,
                        host,
                        what: "content".into(),
                        expected,
                        actual,
                    }
                }
                other => RegistryError::Other {
                    image,
                    host,
                    detail: other.to_string(),
                },
            },
            other => RegistryError::Other {
                image,
                host,
                detail: one_line(&other.to_string()),
            },
        }
    }

    /// An HTTP status that is not a success, with the body's text.
    fn status_error(&self, code: u16, body: &str, url: String) -> RegistryError {
        match code {
            401 | 403 => self.denied(),
            404 => RegistryError::NotFound {
                image: self.image.clone(),
                host: self.host.clone(),
            },
            429 => self.rate_limited(url),
            _ => RegistryError::Server {
                host: self.host.clone(),
                status: code,
                tries: 1,
                message: short_body(body),
            },
        }
    }

    fn denied(&self) -> RegistryError {
        RegistryError::Denied {
            image: self.image.clone(),
            host: self.host.clone(),
            registry: self.registry.clone(),
        }
    }

    /// When to retry is not known yet: oci-client 0.18 drops the headers of failed responses,
    /// so `retry` asks again and fills it in with [`retry_when`].
    fn rate_limited(&self, url: String) -> RegistryError {
        RegistryError::RateLimited {
            host: self.host.clone(),
            registry: self.registry.clone(),
            when: retry_when(None, Utc::now()),
            url,
        }
    }

    /// A request that got no HTTP answer: refused, DNS, timeout, TLS.
    pub fn transport_error(&self, err: &reqwest::Error) -> RegistryError {
        let host = self.host.clone();
        if let Some(tls) = find_rustls(err) {
            return RegistryError::Tls {
                host,
                detail: tls.to_string(),
                ca_path: self.ca_path.clone(),
            };
        }
        let detail = if err.is_timeout() {
            "timed out".to_string()
        } else {
            root_cause(err)
        };
        if err.is_connect() || err.is_timeout() {
            RegistryError::Unreachable { host, detail }
        } else {
            RegistryError::Other {
                image: self.image.clone(),
                host,
                detail,
            }
        }
    }
}

/// The rustls error behind a failed request, if TLS is what failed. It sits inside nested
/// `io::Error`s, whose `source()` skips what they wrap, so descend through `get_ref()`.
pub(crate) fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The innermost message of an error chain ("Connection refused (os error 111)", "failed
/// to lookup address information: ..."), which is what tells the user what happened.
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

/// Says when a rate-limited request may be retried, `wait` from `now`, if the registry said.
pub(crate) fn retry_when(wait: Option<Duration>, now: DateTime<Utc>) -> String {
    let Some(wait) = wait else {
        return "the registry did not say when; wait a few minutes".to_string();
    };
    let at = chrono::TimeDelta::from_std(wait)
        .ok()
        .and_then(|d| now.checked_add_signed(d));
    match at {
        Some(at) => format!(
            "retry after {} s (at {} UTC)",
            wait.as_secs(),
            at.format("%H:%M:%S")
        ),
        None => format!("retry after {} s", wait.as_secs()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn short_body(body: &str) -> String {
    let body = one_line(body);
    if body.is_empty() {
        return "no details given".into();
    }
    match body.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &body[..i]),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_when_to_retry() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T13:59:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            retry_when(Some(Duration::from_secs(42)), now),
            "retry after 42 s (at 14:00:12 UTC)"
        );
        assert_eq!(
            retry_when(None, now),
            "the registry did not say when; wait a few minutes"
        );
    }
}
