//! One image from the registry into the rootfs cache.
//!
//! Each layer makes one pass: download -> sha256 of the compressed bytes -> decompress ->
//! diff_id -> untar into a claimed tmp directory, all while the bytes arrive. Only a layer whose
//! two digests matched is renamed into the cache; the ref is written after everything it names.

mod progress;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::io;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use nix::errno::Errno;
use oci_client::manifest::OciDescriptor;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::digest::HashingReader;
use crate::reference::ImageRef;
use crate::registry::{Options, Platform, RegistryClient};
use crate::store::{BlobKind, LayerMeta, LayerSlot, Mode, RefRecord, Store, WAITING_FOR_CACHE};
use crate::unpack::{self, UnpackError, UnpackOptions};

pub use progress::Progress;
use stream::{ChannelReader, CHANNEL_CHUNKS};

/// Layers fetched at once unless the user says otherwise.
pub const DEFAULT_JOBS: usize = 4;

pub struct PullOptions {
    pub platform: Platform,
    pub quiet: bool,
    pub jobs: usize,
    /// Allow plain HTTP to every registry of this pull.
    pub insecure: bool,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The cache already held the image the registry serves; nothing was written.
    UpToDate,
    Pulled {
        fetched: usize,
        reused: usize,
    },
}

/// Pulls `reference` into the cache at `cache_dir`. Blocking: runs its own tokio runtime.
pub fn pull(cache_dir: &Path, reference: &ImageRef, options: &PullOptions) -> Result<Outcome> {
    keep_buffers_off_the_heap();
    let store = Arc::new(Store::open(cache_dir)?);
    // Held for the whole pull: rmi/prune wait rather than collect layers we are about to name.
    let progress = Progress::new(options.quiet);
    let _cache = store.lock_or_else(Mode::Shared, || {
        progress.say(&format!("eskrun: {WAITING_FOR_CACHE}"))
    })?;
    let client = Arc::new(RegistryClient::new(Options::from_env(options.insecure)?));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(pull_image(store, client, reference, options, progress))
        .map_err(|err| {
            if is_disk_full(&err) {
                anyhow!(
                    "disk full while writing the cache at {}: free space or set ESKRUN_CACHE",
                    cache_dir.display()
                )
            } else {
                err
            }
        })
}

/// A pull allocates and frees buffers of 128-400 KiB on several threads. glibc raises its mmap
/// threshold after the first big free (parsing the reference frees 8 MiB), after which those
/// buffers come from per-thread heaps that keep their freed memory: peak RSS of a 4-layer pull
/// was 57 MiB, 40 MiB with the threshold fixed here (a few hundred extra mmap calls per GiB).
fn keep_buffers_off_the_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc parameter; called before this process starts threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Whether `err` comes from a full disk or an exhausted quota, wherever in the chain: the
/// user needs to know that, not which file was being written.
fn is_disk_full(err: &anyhow::Error) -> bool {
    let full = |error: &io::Error| {
        matches!(
            error.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    };
    err.chain().any(|cause| {
        if let Some(error) = cause.downcast_ref::<io::Error>() {
            return full(error);
        }
        match cause.downcast_ref::<UnpackError>() {
            Some(UnpackError::Entry { error, .. } | UnpackError::Dest { error, .. }) => full(error),
            Some(UnpackError::Link { reason, .. }) => {
                matches!(reason.os_error(), Some(e) if e == Errno::ENOSPC as i32 || e == Errno::EDQUOT as i32)
            }
            _ => false,
        }
    })
}

async fn pull_image(
    store: Arc<Store>,
    client: Arc<RegistryClient>,
    reference: &ImageRef,
    options: &PullOptions,
    progress: Progress,
) -> Result<Outcome> {
    let platform = options.platform.to_string();
    if let Some(record) = store.read_ref(reference)? {
        if record.platform == platform && store.image(&record).is_ok() {
            // A digest names immutable content: no need to ask the registry at all.
            if reference.digest().is_some()
                || client.head_digest(reference).await? == record.source_digest
            {
                progress.say(&format!("{reference}: image is up to date"));
                return Ok(Outcome::UpToDate);
            }
        }
    }

    let resolved = client.resolve(reference, &options.platform).await?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&resolved.config_raw)
        .with_context(|| format!("image {reference}: its config is not a valid image config"))?;
    let layers = resolved.manifest.layers.clone();
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != layers.len() {
        bail!(
            "image {reference}: the manifest lists {} layers but the config {} diff_ids; the image is broken",
            layers.len(),
            diff_ids.len()
        );
    }

    let limit = Arc::new(Semaphore::new(options.jobs.max(1)));
    // Each layer says when it is in the cache; a layer with hard links into lower layers waits
    // for those before completing the links. Waiting only ever goes downwards, so pulls of
    // images sharing layers cannot wait on each other in a cycle.
    let (done, in_cache): (Vec<_>, Vec<_>) = layers.iter().map(|_| watch::channel(false)).unzip();
    let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    let mut tasks = JoinSet::new();
    for (index, ((layer, diff_id), done)) in layers.into_iter().zip(diff_ids).zip(done).enumerate()
    {
        let job = LayerJob {
            store: store.clone(),
            client: client.clone(),
            reference: reference.clone(),
            layer,
            diff_id,
            progress: progress.clone(),
            limit: limit.clone(),
            lowers: digests[..index]
                .iter()
                .cloned()
                .zip(in_cache[..index].iter().cloned())
                .collect(),
            // A layer listed twice (empty layers often are) is fetched by its first listing;
            // two claims of it in one process would wait on each other.
            same_as: digests[..index]
                .iter()
                .position(|d| *d == digests[index])
                .map(|first| in_cache[first].clone()),
            done,
        };
        tasks.spawn(job.run());
    }
    let (mut fetched, mut reused) = (0, 0);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let layer = match joined {
            Err(err) if err.is_cancelled() => continue, // after the failure below
            joined => joined.context("a layer task failed")?,
        };
        match layer {
            Ok(Fetched::Present) => reused += 1,
            Ok(Fetched::Stored) => fetched += 1,
            Err(err) if failure.is_none() => {
                failure = Some(err);
                // Stop the other downloads; each drops its claim, which removes its tmp dir.
                tasks.abort_all();
            }
            Err(_) => {}
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }

    store.put_blob(
        BlobKind::Manifest,
        &resolved.manifest_digest,
        &resolved.manifest_raw,
    )?;
    store.put_blob(
        BlobKind::Config,
        &resolved.manifest.config.digest,
        &resolved.config_raw,
    )?;
    store.write_ref(&RefRecord {
        reference: reference.to_string(),
        platform,
        source_digest: resolved.source_digest.clone(),
        manifest_digest: resolved.manifest_digest.clone(),
    })?;
    progress.say(&format!(
        "{reference}: pulled {} ({fetched} layers fetched, {reused} already cached)",
        resolved.manifest_digest
    ));
    Ok(Outcome::Pulled { fetched, reused })
}

/// How a layer came to be in the cache.
enum Fetched {
    /// It was there already (perhaps just stored by a concurrent pull).
    Present,
    /// This pull downloaded and stored it.
    Stored,
}

struct LayerJob {
    store: Arc<Store>,
    client: Arc<RegistryClient>,
    reference: ImageRef,
    layer: OciDescriptor,
    diff_id: String,
    progress: Progress,
    /// Bounds the downloads running at once.
    limit: Arc<Semaphore>,
    /// The layers below this one, bottom first, each with its "in the cache" signal.
    lowers: Vec<(String, watch::Receiver<bool>)>,
    /// The signal of the same layer listed lower in the image, if it is.
    same_as: Option<watch::Receiver<bool>>,
    /// Set once this layer is in the cache.
    done: watch::Sender<bool>,
}

impl LayerJob {
    async fn run(mut self) -> Result<Fetched> {
        let fetched = self.fetch().await?;
        self.done.send_replace(true);
        Ok(fetched)
    }

    async fn fetch(&mut self) -> Result<Fetched> {
        let digest = self.layer.digest.clone();
        if let Some(first) = &mut self.same_as {
            first
                .wait_for(|done| *done)
                .await
                .map_err(|_| anyhow!("image {}, layer {digest} failed", self.reference))?;
            return Ok(Fetched::Present);
        }
        let short = short_digest(&digest).to_string();
        let store = self.store.clone();
        let claim_digest = digest.clone();
        let progress = self.progress.clone();
        let waiting = format!("{short}: waiting for another eskrun that is fetching this layer");
        let slot = tokio::task::spawn_blocking(move || {
            store.claim_layer(&claim_digest, || progress.say(&waiting))
        })
        .await
        .context("layer claim task failed")??;
        let writer = match slot {
            LayerSlot::Present(_) => return Ok(Fetched::Present),
            LayerSlot::Fresh(writer) => writer,
        };
        // Taken only now and released before waiting for lower layers: a download slot is
        // never held by a task that waits on another process.
        let download = self.limit.clone().acquire_owned().await?;
        let context = || format!("image {}, layer {digest}", self.reference);
        let compression = unpack::compression_for(&self.layer.media_type).with_context(context)?;
        let bar = self.progress.layer(&short, self.layer.size.max(0) as u64);

        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let name = digest.clone();
        // The claim travels with the unpacker: when this task is aborted (another layer
        // failed), the unpacker runs on until the closed channel stops it, and only then is
        // the claim dropped and its tmp directory removed, not while files still land in it.
        let unpacker = tokio::task::spawn_blocking(move || {
            let options = UnpackOptions::for_current_process();
            let mut reader = HashingReader::new(ChannelReader::new(rx));
            let unpacked =
                unpack::unpack_layer(&mut reader, compression, &writer.tree(), &name, &options);
            let hashed = reader.drain().map(|()| reader.finish());
            (writer, unpacked, hashed)
        });

        let mut blob = std::pin::pin!(self.client.blob_stream(&self.reference, &self.layer));
        let mut broken = None;
        while let Some(chunk) = blob.next().await {
            match chunk {
                Ok(chunk) => {
                    bar.advance(chunk.len() as u64);
                    if tx.send(chunk).await.is_err() {
                        break; // the unpacker gave up; its error says why
                    }
                }
                Err(err) => {
                    broken = Some(err);
                    break;
                }
            }
        }
        drop(tx);
        let (writer, unpacked, hashed) = unpacker.await.context("unpack task failed")?;
        if let Some(err) = broken {
            return Err(err).with_context(context);
        }
        let (actual, size) = hashed.with_context(context)?;
        if actual != digest {
            bail!(
                "image {}, layer {digest}: the downloaded content hashes to {actual}; \
                 the registry sent corrupt data, nothing was stored (try again)",
                self.reference
            );
        }
        if size != self.layer.size as u64 {
            bail!(
                "image {}, layer {digest}: got {size} bytes, the manifest says {}",
                self.reference,
                self.layer.size
            );
        }
        // Unpack errors name the layer themselves.
        let unpacked = unpacked.with_context(|| format!("image {}", self.reference))?;
        if unpacked.diff_id != self.diff_id {
            bail!(
                "image {}, layer {digest}: its uncompressed content hashes to {} but the image \
                 config says {}; the image is broken",
                self.reference,
                unpacked.diff_id,
                self.diff_id
            );
        }
        let meta = LayerMeta {
            digest: digest.clone(),
            diff_id: unpacked.diff_id,
            media_type: self.layer.media_type.clone(),
            size,
            owners: unpacked.owners,
            skipped_devices: unpacked.skipped_devices,
            skipped_xattrs: unpacked.skipped_xattrs,
        };
        if meta.skipped_devices > 0 {
            self.progress.say(&format!(
                "{short}: skipped {} device nodes/FIFOs (only real root can create them)",
                meta.skipped_devices
            ));
        }
        bar.finish("done");
        drop(download);
        if !unpacked.pending_links.is_empty() {
            let mut lowers = Vec::new();
            for (lower, in_cache) in self.lowers.iter_mut().rev() {
                if in_cache.wait_for(|done| *done).await.is_err() {
                    bail!(
                        "image {}, layer {digest}: layer {lower} below it failed",
                        self.reference
                    );
                }
                lowers.push(self.store.layer_dir(lower)?.join("tree"));
            }
            let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
            tokio::task::block_in_place(|| {
                unpack::complete_links(&writer.tree(), &unpacked.pending_links, &lowers)
            })
            .with_context(|| format!("image {}", self.reference))?;
        }
        tokio::task::block_in_place(|| writer.commit(&meta))?;
        Ok(Fetched::Stored)
    }
}

/// The 12 hex digits users know layers by.
fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    &hex[..hex.len().min(12)]
}
