//! The registry client: oci-client plus what eskrun's users expect from Docker — credentials
//! from `~/.docker/config.json` and its helpers, CAs from `certs.d`, plain HTTP for local and
//! insecure registries, Docker Hub mirrors, retries, resumed downloads, one-line errors.
//!
//! [`RegistryClient::resolve`] turns a reference into one platform's manifest and config;
//! [`RegistryClient::blob_stream`] gives a layer's bytes. Checking layer digests is the
//! consumer's job (it hashes the stream it unpacks anyway).

mod auth;
mod blob;
mod error;
mod manifest;
mod platform;
mod tls;
mod token;
mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use oci_client::manifest::OciDescriptor;
use oci_client::Reference;

pub use auth::{Credentials, DockerConfig};
pub use error::RegistryError;
pub use manifest::ResolvedImage;
pub use platform::Platform;
pub use tls::default_certs_dirs;

use crate::config::Config;
use crate::reference::ImageRef;
use error::Context;
use transport::Endpoint;

/// Tries for a request the registry answers with a 5xx.
const TRIES: u32 = 3;
/// The longest `Retry-After` of a 429 that is waited for; a longer one is reported.
const SHORT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(10);

/// Everything the client reads from the user's environment, gathered in one place so that
/// it can be given explicitly (tests, a site-wide setup).
#[derive(Clone, Debug)]
pub struct Options {
    /// eskrun's config file: insecure registries and mirrors.
    pub config: Config,
    /// `certs.d` directories, searched in order for `<host[:port]>/*.crt`.
    pub certs_dirs: Vec<PathBuf>,
    /// Docker's `config.json` and credential helpers.
    pub docker: DockerConfig,
    /// `--insecure`: every registry of this run may be reached over plain HTTP.
    pub insecure: bool,
}

impl Options {
    /// The user's settings: eskrun's config file and `certs.d`, Docker's and podman's
    /// `certs.d`, `$DOCKER_CONFIG`.
    pub fn from_env(insecure: bool) -> anyhow::Result<Options> {
        Ok(Options {
            config: Config::load()?,
            certs_dirs: default_certs_dirs(&crate::dirs::config_dir()),
            docker: DockerConfig::from_env(),
            insecure,
        })
    }
}

/// A client for any number of registries. Cheap to clone; clones share connections and
/// tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    options: Options,
    endpoints: tokio::sync::Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl RegistryClient {
    pub fn new(options: Options) -> RegistryClient {
        RegistryClient {
            inner: Arc::new(Inner {
                options,
                endpoints: Default::default(),
            }),
        }
    }

    /// The digest the reference points at now (one HEAD request): the index's digest for a
    /// multi-platform image. What a re-pull compares with the cached `source_digest`.
    pub async fn head_digest(&self, image: &ImageRef) -> Result<String, RegistryError> {
        self.on_each_host(image, |endpoint, wire, ctx| async move {
            endpoint.ready(&wire, &ctx).await?;
            endpoint
                .oci
                .fetch_manifest_digest(&wire, &endpoint.auth)
                .await
                .map_err(|e| ctx.error(e).about("the manifest"))
        })
        .await
    }

    /// The image manifest and config for `platform`, digest-checked.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        self.on_each_host(image, |endpoint, wire, ctx| {
            let platform = platform.clone();
            async move {
                endpoint.ready(&wire, &ctx).await?;
                manifest::resolve(&endpoint, &wire, &platform, &ctx).await
            }
        })
        .await
    }

    /// The blob `desc` of `image` as one byte stream, resumed after breaks. Not
    /// digest-checked here: the consumer hashes what it reads.
    pub fn blob_stream(
        &self,
        image: &ImageRef,
        desc: &OciDescriptor,
    ) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send + 'static {
        blob::stream(self.clone(), image.clone(), desc.clone())
    }

    /// Checks `username`/`password` against `registry` (`docker.io` or `host[:port]`), then
    /// stores them where Docker does.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let host = api_host(registry);
        let ctx = self.context(registry, registry, &host);
        let endpoint = self.endpoint(&host, &ctx).await?;
        token::verify_login(&endpoint, username, password, &ctx).await?;
        self.inner
            .options
            .docker
            .store(registry, username, password)?;
        // Later requests of this client use the new credentials.
        self.inner.endpoints.lock().await.remove(&host);
        Ok(())
    }

    /// Forgets the stored credentials of `registry`. Returns whether there were any.
    pub fn logout(&self, registry: &str) -> Result<bool, RegistryError> {
        self.inner.options.docker.erase(registry)
    }

    /// Runs `op` against each host serving `image` in turn (Docker Hub's mirrors, then the
    /// registry itself) until one succeeds, each with retries on 5xx.
    pub(crate) async fn on_each_host<T, F, Fut>(
        &self,
        image: &ImageRef,
        op: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Arc<Endpoint>, Reference, Context) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let hosts = self.hosts(image);
        let mut result = None;
        for (i, host) in hosts.iter().enumerate() {
            let last = i + 1 == hosts.len();
            let ctx = self.context(&image.to_string(), image.registry(), host);
            let attempt = async {
                let endpoint = self.endpoint(host, &ctx).await?;
                let wire = image.on_host(host);
                retry(&endpoint, &wire, || {
                    op(endpoint.clone(), wire.clone(), ctx.clone())
                })
                .await
            };
            match attempt.await {
                Ok(value) => return Ok(value),
                Err(err) if !last && err.try_next_host() => {
                    tracing::warn!("mirror {host} failed, trying the next source: {err}");
                    result = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(result.expect("at least the registry itself is tried"))
    }

    fn hosts(&self, image: &ImageRef) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .inner
            .options
            .config
            .mirrors_for(image.registry())
            .to_vec();
        hosts.push(image.registry_host().to_string());
        hosts
    }

    fn context(&self, image: &str, registry: &str, host: &str) -> Context {
        let ca_path = self
            .inner
            .options
            .certs_dirs
            .first()
            .cloned()
            .unwrap_or_default()
            .join(host)
            .join("ca.crt");
        Context {
            image: image.to_string(),
            registry: registry.to_string(),
            host: host.to_string(),
            ca_path,
        }
    }

    async fn endpoint(&self, host: &str, ctx: &Context) -> Result<Arc<Endpoint>, RegistryError> {
        let mut endpoints = self.inner.endpoints.lock().await;
        if let Some(endpoint) = endpoints.get(host) {
            return Ok(endpoint.clone());
        }
        let credentials = self.inner.options.docker.credentials(host)?;
        let endpoint =
            Arc::new(Endpoint::connect(&self.inner.options, host, credentials, ctx).await?);
        endpoints.insert(host.to_string(), endpoint.clone());
        Ok(endpoint)
    }
}

/// The host serving a registry's API (`docker.io` is served by `registry-1.docker.io`).
fn api_host(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io".to_string(),
        other => other.to_string(),
    }
}

/// Runs `op` up to [`TRIES`] times while it fails with a 5xx, waiting longer each time.
/// A 429 is retried once only, after the registry's own short `Retry-After`; otherwise
/// it fails at once, saying when to retry.
pub(crate) async fn retry<T, F, Fut>(
    endpoint: &Endpoint,
    wire: &Reference,
    op: F,
) -> Result<T, RegistryError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let mut tries = 0;
    let mut waited = false;
    loop {
        tries += 1;
        match op().await {
            Err(err) if err.is_transient() && tries < TRIES => {
                tracing::debug!("retrying after: {err}");
                tokio::time::sleep(Duration::from_millis(250 << tries)).await;
            }
            Err(RegistryError::Server {
                host,
                status,
                message,
                ..
            }) => {
                return Err(RegistryError::Server {
                    host,
                    status,
                    tries,
                    message,
                })
            }
            Err(RegistryError::RateLimited {
                host,
                registry,
                url,
                ..
            }) => {
                let wait = endpoint.retry_after(wire, &url).await;
                match wait {
                    Some(wait) if wait <= SHORT_RATE_LIMIT_WAIT && !waited => {
                        tracing::debug!(?wait, "rate limited by {host}, waiting as asked");
                        waited = true;
                        tries -= 1;
                        tokio::time::sleep(wait).await;
                    }
                    _ => {
                        return Err(RegistryError::RateLimited {
                            host,
                            registry,
                            when: error::retry_when(wait, chrono::Utc::now()),
                            url,
                        })
                    }
                }
            }
            other => return other,
        }
    }
}
