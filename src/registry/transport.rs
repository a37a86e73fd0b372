//! One connection setup per registry host: HTTPS with the host's extra CAs, or plain HTTP for
//! local and insecure registries that do not speak TLS, and the credentials to present.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::HeaderMap;

use super::auth::Credentials;
use super::error::{find_rustls, Context};
use super::{tls, token, Options, RegistryError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest silence inside one response; a stalled blob transfer is then resumed.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Pull tokens commonly live 5 minutes (Docker Hub's); a long pull fetches a new one before
/// then, since oci-client cannot renew a token it was handed.
const PULL_TOKEN_REFRESH: Duration = Duration::from_secs(240);

/// A registry host, ready to talk to.
pub(crate) struct Endpoint {
    pub host: String,
    pub oci: oci_client::Client,
    /// Same transport as `oci`, for the requests oci-client has no call for (ping, login).
    pub http: reqwest::Client,
    pub scheme: &'static str,
    pub auth: RegistryAuth,
    /// An OAuth2 refresh token, exchanged for a pull token per repository (see `ready`).
    identity_token: Option<String>,
    /// When each repository's pull token was fetched.
    pull_tokens: tokio::sync::Mutex<HashMap<String, Instant>>,
}

impl Endpoint {
    /// Sets up `host`, to be used with `credentials`.
    pub async fn connect(
        options: &Options,
        host: &str,
        credentials: Credentials,
        ctx: &Context,
    ) -> Result<Endpoint, RegistryError> {
        let pems = tls::ca_certificates(&options.certs_dirs, host)?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        for pem in &pems {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ctx.transport_error(&e))?
            {
                http = http.tls_certs_merge([cert]);
            }
        }
        let http = http.build().map_err(|e| ctx.transport_error(&e))?;

        let scheme = if may_use_plain_http(options, host) && !speaks_tls(&http, host).await {
            tracing::debug!(host, "no TLS, using plain HTTP");
            "http"
        } else {
            "https"
        };
        let config = ClientConfig {
            protocol: match scheme {
                "http" => ClientProtocol::HttpsExcept(vec![host.to_string()]),
                _ => ClientProtocol::Https,
            },
            extra_root_certificates: pems
                .into_iter()
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
                .collect(),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            // Multi-platform images are resolved by us (variants, error listing platforms).
            platform_resolver: None,
            user_agent: concat!("eskrun/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        // `Client::new` falls back to a default configuration (dropping our CAs) on error.
        let oci = oci_client::Client::try_from(config).map_err(|e| ctx.error(e))?;
        let (auth, identity_token) = match credentials {
            Credentials::Anonymous => (RegistryAuth::Anonymous, None),
            Credentials::Basic { username, password } => {
                (RegistryAuth::Basic(username, password), None)
            }
            Credentials::IdentityToken(token) => (RegistryAuth::Anonymous, Some(token)),
        };
        Ok(Endpoint {
            host: host.to_string(),
            oci,
            http,
            scheme,
            auth,
            identity_token,
            pull_tokens: Default::default(),
        })
    }

    /// Makes the client ready to pull from `image`'s repository. oci-client knows user names
    /// and passwords but not identity tokens: for those, fetch the repository's pull token
    /// ourselves and hand it over.
    pub async fn ready(&self, image: &Reference, ctx: &Context) -> Result<(), RegistryError> {
        self.oci.store_auth_if_needed(&self.host, &self.auth).await;
        let Some(refresh) = &self.identity_token else {
            return Ok(());
        };
        let mut fetched = self.pull_tokens.lock().await;
        if fetched
            .get(image.repository())
            .is_some_and(|at| at.elapsed() < PULL_TOKEN_REFRESH)
        {
            return Ok(());
        }
        let access = token::exchange_identity_token(self, refresh, image.repository(), ctx).await?;
        self.oci
            .auth(
                image,
                &RegistryAuth::Bearer(access),
                RegistryOperation::Pull,
            )
            .await
            .map_err(|e| ctx.error(e))?;
        fetched.insert(image.repository().to_string(), Instant::now());
        Ok(())
    }

    /// How long the registry asks us to wait after refusing `url` with 429. oci-client 0.18
    /// drops the headers of failed responses, so ask for the same URL again: a HEAD, which
    /// registries answer with the same headers and do not count as a pull.
    pub async fn retry_after(&self, wire: &Reference, url: &str) -> Option<Duration> {
        let mut request = self.http.head(url).timeout(Duration::from_secs(10));
        // An identity token's pull token is handed to oci-client, which does not give it
        // back; asking oci-client for an anonymous one would replace it.
        if self.identity_token.is_none() {
            match self
                .oci
                .auth(wire, &self.auth, RegistryOperation::Pull)
                .await
            {
                Ok(Some(token)) => request = request.bearer_auth(token),
                _ => {
                    if let RegistryAuth::Basic(user, password) = &self.auth {
                        request = request.basic_auth(user, Some(password));
                    }
                }
            }
        }
        let response = request.send().await.ok()?;
        wait_from_headers(response.headers(), Utc::now())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.host)
    }
}

/// The wait a response asks for: `Retry-After` (seconds or an HTTP date), else the
/// `RateLimit-Reset` seconds of the IETF rate-limit headers.
fn wait_from_headers(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = DateTime::parse_from_rfc2822(value) {
            return Some(
                (date.with_timezone(&Utc) - now)
                    .to_std()
                    .unwrap_or_default(),
            );
        }
    }
    header("ratelimit-reset")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Docker's rule: plain HTTP is possible only for the local host and registries the user
/// marked insecure (config file or `--insecure`).
fn may_use_plain_http(options: &Options, host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    options.insecure
        || options.config.is_insecure(host)
        || name == "localhost"
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` answers TLS. Only a TLS protocol error (the server answered something
/// that is not TLS) means "no": a refused connection or a bad certificate is reported as
/// such by the real request, instead of being hidden behind a plain-HTTP attempt.
async fn speaks_tls(http: &reqwest::Client, host: &str) -> bool {
    let probe = http
        .get(format!("https://{host}/v2/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match probe {
        Ok(_) => true,
        Err(err) => !matches!(
            find_rustls(&err),
            Some(tls) if !matches!(tls, rustls::Error::InvalidCertificate(_))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn options(insecure: bool, config: &str) -> Options {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs_err::write(&path, config).unwrap();
        Options {
            config: Config::load_from(&path).unwrap(),
            certs_dirs: vec![],
            docker: super::super::DockerConfig {
                path: dir.path().join("config.json"),
                helper_path: Default::default(),
            },
            insecure,
        }
    }

    #[test]
    fn reads_the_wait_from_retry_after_or_ratelimit_reset() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let wait = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(*k, v.parse().unwrap());
            }
            wait_from_headers(&headers, now)
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(wait(&[("Retry-After", "120")]), secs(120));
        assert_eq!(
            wait(&[("Retry-After", "Tue, 24 Nov 2026 14:01:30 GMT")]),
            secs(90)
        );
        assert_eq!(
            wait(&[("Retry-After", "Tue, 24 Nov 2026 13:00:00 GMT")]),
            secs(0)
        );
        assert_eq!(wait(&[("RateLimit-Reset", "3600")]), secs(3600));
        assert_eq!(
            wait(&[("Retry-After", "5"), ("RateLimit-Reset", "3600")]),
            secs(5)
        );
        assert_eq!(wait(&[("Retry-After", "soon")]), None);
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn plain_http_only_for_local_or_insecure_registries() {
        let opts = options(
            false,
            "insecure_registries = [\"lab.example:5000\", \"10.1.2.3\"]",
        );
        for host in [
            "localhost:5000",
            "localhost",
            "127.0.0.1:5000",
            "127.8.9.10",
            "[::1]:5000",
        ] {
            assert!(may_use_plain_http(&opts, host), "{host}");
        }
        for host in ["lab.example:5000", "10.1.2.3:443", "10.1.2.3"] {
            assert!(may_use_plain_http(&opts, host), "{host}");
        }
        for host in [
            "lab.example:5001",
            "registry-1.docker.io",
            "10.1.2.4",
            "[::2]:5000",
            "localhost.example",
        ] {
            assert!(!may_use_plain_http(&opts, host), "{host}");
        }
        assert!(may_use_plain_http(
            &options(true, ""),
            "registry-1.docker.io"
        ));
    }
}
