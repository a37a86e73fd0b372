//! From a reference to one platform's image manifest and config, digest-checked.

use oci_client::manifest::{
    OciImageIndex, OciImageManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::Reference;
use serde::Deserialize;

use super::error::Context;
use super::transport::Endpoint;
use super::{Platform, RegistryError};

const SCHEMA1_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v1+json";
const SCHEMA1_SIGNED_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Everything a registry may answer for a tag. Schema 1 is asked for too, so that such an
/// image gets its own clear error instead of a 404 or a parse failure.
const ACCEPTED: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    SCHEMA1_SIGNED_MEDIA_TYPE,
    SCHEMA1_MEDIA_TYPE,
];

/// One platform's image, as fetched: the raw bytes (kept for the cache, digests are over
/// them) and the parsed manifest.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The digest of what the reference names: the index for a multi-platform image.
    pub source_digest: String,
    /// The digest of the platform's image manifest (equal to `source_digest` for a
    /// single-platform image).
    pub manifest_digest: String,
    pub manifest_raw: Vec<u8>,
    pub manifest: OciImageManifest,
    pub config_raw: Vec<u8>,
}

/// The fields that tell the kinds of manifest apart.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

enum Kind {
    Index,
    Image,
}

fn kind(raw: &[u8], ctx: &Context) -> Result<Kind, RegistryError> {
    let unsupported = |detail: String| RegistryError::Unsupported {
        image: ctx.image.clone(),
        host: ctx.host.clone(),
        detail,
    };
    let probe: Probe = serde_json::from_slice(raw)
        .map_err(|e| unsupported(format!("the manifest is not JSON: {e}")))?;
    let media_type = probe.media_type.as_deref();
    if probe.schema_version == Some(1)
        || matches!(
            media_type,
            Some(SCHEMA1_MEDIA_TYPE | SCHEMA1_SIGNED_MEDIA_TYPE)
        )
    {
        return Err(RegistryError::Schema1 {
            image: ctx.image.clone(),
        });
    }
    match media_type {
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE) => Ok(Kind::Index),
        Some(OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE) => Ok(Kind::Image),
        // The OCI spec makes mediaType optional: tell them apart by their fields.
        None if probe.manifests.is_some() => Ok(Kind::Index),
        None if probe.layers.is_some() => Ok(Kind::Image),
        None => Err(unsupported("neither an image manifest nor an index".into())),
        Some(other) => Err(unsupported(format!("media type {other} is not an image"))),
    }
}

/// Fetches a manifest and checks its digest (against the registry's `Docker-Content-Digest`
/// header and the digest in the reference, oci-client's `validate_digest`).
async fn fetch(
    endpoint: &Endpoint,
    image: &Reference,
    ctx: &Context,
) -> Result<(Vec<u8>, String), RegistryError> {
    let (raw, digest) = endpoint
        .oci
        .pull_manifest_raw(image, &endpoint.auth, ACCEPTED)
        .await
        .map_err(|e| ctx.error(e).about("the manifest"))?;
    Ok((raw.to_vec(), digest))
}

pub(crate) async fn resolve(
    endpoint: &Endpoint,
    image: &Reference,
    platform: &Platform,
    ctx: &Context,
) -> Result<ResolvedImage, RegistryError> {
    let (raw, source_digest) = fetch(endpoint, image, ctx).await?;
    let (manifest_raw, manifest_digest) = match kind(&raw, ctx)? {
        Kind::Image => (raw, source_digest.clone()),
        Kind::Index => {
            let index: OciImageIndex =
                serde_json::from_slice(&raw).map_err(|e| RegistryError::Unsupported {
                    image: ctx.image.clone(),
                    host: ctx.host.clone(),
                    detail: format!("bad image index: {e}"),
                })?;
            let chosen = platform.choose(&ctx.image, &index.manifests)?;
            let (child, digest) = fetch(endpoint, &image.clone_with_digest(chosen), ctx).await?;
            match kind(&child, ctx)? {
                Kind::Image => (child, digest),
                Kind::Index => {
                    return Err(RegistryError::Unsupported {
                        image: ctx.image.clone(),
                        host: ctx.host.clone(),
                        detail: format!("the entry for {platform} is itself an index"),
                    })
                }
            }
        }
    };
    let manifest: OciImageManifest =
        serde_json::from_slice(&manifest_raw).map_err(|e| RegistryError::Unsupported {
            image: ctx.image.clone(),
            host: ctx.host.clone(),
            detail: format!("bad image manifest: {e}"),
        })?;
    // pull_blob checks the config against its descriptor's digest.
    let mut config_raw = Vec::new();
    endpoint
        .oci
        .pull_blob(image, &manifest.config, &mut config_raw)
        .await
        .map_err(|e| ctx.error(e).about("the image config"))?;
    Ok(ResolvedImage {
        source_digest,
        manifest_digest,
        manifest_raw,
        manifest,
        config_raw,
    })
}
