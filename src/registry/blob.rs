//! One blob as one uninterrupted byte stream: a transfer that breaks is resumed with a Range
//! request from the byte reached, so the consumer (which hashes everything) sees the whole
//! blob exactly once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use oci_client::Reference;

use super::error::Context;
use super::transport::Endpoint;
use super::{RegistryClient, RegistryError};
use crate::reference::ImageRef;

/// Resumes in a row without a single new byte before giving up.
const MAX_RESUMES: u32 = 5;

struct Transfer {
    client: RegistryClient,
    image: ImageRef,
    desc: OciDescriptor,
    /// Where the blob is served from, chosen when the first request succeeds.
    source: Option<(Arc<Endpoint>, Reference, Context)>,
    body: Option<BoxStream<'static, std::io::Result<Bytes>>>,
    /// Bytes handed to the consumer so far.
    offset: u64,
    /// Bytes still to drop because the server answered a Range request with the whole blob.
    skip: u64,
    failures: u32,
    done: bool,
}

pub(crate) fn stream(
    client: RegistryClient,
    image: ImageRef,
    desc: OciDescriptor,
) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send + 'static {
    let transfer = Transfer {
        client,
        image,
        desc,
        source: None,
        body: None,
        offset: 0,
        skip: 0,
        failures: 0,
        done: false,
    };
    futures_util::stream::unfold(transfer, |mut t| async move {
        let item = t.next().await?;
        if item.is_err() {
            t.done = true;
        }
        Some((item, t))
    })
}

impl Transfer {
    fn size(&self) -> Option<u64> {
        u64::try_from(self.desc.size).ok().filter(|&s| s > 0)
    }

    async fn next(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            if self.done {
                return None;
            }
            if self.body.is_none() {
                if let Err(err) = self.open().await {
                    return Some(Err(err));
                }
            }
            let body = self.body.as_mut().expect("opened above");
            let broke = match body.next().await {
                Some(Ok(mut bytes)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(bytes.len() as u64);
                        self.skip -= drop;
                        bytes = bytes.slice(drop as usize..);
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    self.offset += bytes.len() as u64;
                    self.failures = 0;
                    return Some(Ok(bytes));
                }
                Some(Err(err)) => super::error::root_cause(&err),
                None if self.size().is_some_and(|size| self.offset < size) => {
                    "the connection closed early".to_string()
                }
                None => {
                    self.done = true;
                    return None;
                }
            };
            self.body = None;
            self.failures += 1;
            tracing::debug!(digest = %self.desc.digest, offset = self.offset, %broke, "blob transfer broke, resuming");
            if self.failures > MAX_RESUMES {
                return Some(Err(self.broken(broke)));
            }
            tokio::time::sleep(backoff(self.failures)).await;
        }
    }

    /// Starts (or restarts, from `offset`) the transfer.
    async fn open(&mut self) -> Result<(), RegistryError> {
        let response = match self.source.clone() {
            None => {
                let desc = self.desc.clone();
                let (response, source) = self
                    .client
                    .on_each_host(&self.image, move |endpoint, wire, ctx| {
                        let desc = desc.clone();
                        async move {
                            let response = request(&endpoint, &wire, &desc, 0, &ctx).await?;
                            Ok((response, (endpoint, wire, ctx)))
                        }
                    })
                    .await?;
                self.source = Some(source);
                response
            }
            // A failed resume counts like a broken transfer: bounded, with backoff.
            Some((endpoint, wire, ctx)) => loop {
                let (desc, offset) = (&self.desc, self.offset);
                match super::retry(&endpoint, &wire, || {
                    request(&endpoint, &wire, desc, offset, &ctx)
                })
                .await
                {
                    Ok(response) => break response,
                    // `retry` waited already if the registry asked for a short wait.
                    Err(err @ RegistryError::RateLimited { .. }) => return Err(err),
                    Err(err) => {
                        self.failures += 1;
                        if self.failures > MAX_RESUMES {
                            return Err(self.broken(err.to_string()));
                        }
                        tokio::time::sleep(backoff(self.failures)).await;
                    }
                }
            },
        };
        let (stream, skip) = match response {
            BlobResponse::Partial(s) => (s, 0),
            BlobResponse::Full(s) => (s, self.offset),
        };
        self.skip = skip;
        self.body = Some(stream.stream);
        Ok(())
    }

    fn broken(&self, detail: String) -> RegistryError {
        let (host, image) = match &self.source {
            Some((_, _, ctx)) => (ctx.host.clone(), ctx.image.clone()),
            None => (
                self.image.registry_host().to_string(),
                self.image.to_string(),
            ),
        };
        RegistryError::Transfer {
            image,
            host,
            digest: self.desc.digest.clone(),
            offset: self.offset,
            detail,
        }
    }
}

/// A GET of the blob from `offset` (`Range: bytes=OFFSET-`; also from 0, which makes the
/// registry answer 206 and oci-client skip its own hashing: the consumer hashes).
async fn request(
    endpoint: &Endpoint,
    wire: &Reference,
    desc: &OciDescriptor,
    offset: u64,
    ctx: &Context,
) -> Result<BlobResponse, RegistryError> {
    endpoint.ready(wire, ctx).await?;
    endpoint
        .oci
        .pull_blob_stream_partial(wire, desc, offset, None)
        .await
        .map_err(|e| ctx.error(e))
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64 << failures.min(5)).min(Duration::from_secs(5))
}
