//! `eskrun pull`: fetch an image into the rootfs cache.

use anyhow::Result;

use crate::pull::{self, PullOptions, DEFAULT_JOBS};
use crate::reference::ImageRef;
use crate::registry::Platform;

#[derive(clap::Args)]
pub struct Args {
    /// Image reference, e.g. kave/eskapade-env:0.7 or localhost:5000/app@sha256:...
    image: String,
    /// Platform to pick from a multi-platform image: os/arch[/variant] (default: this host's).
    #[arg(long)]
    platform: Option<String>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Layers fetched at once.
    #[arg(long, default_value_t = DEFAULT_JOBS)]
    jobs: usize,
    /// Allow plain HTTP to the registry (localhost and 127.0.0.0/8 always may fall back to it).
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let reference = ImageRef::parse(&args.image)?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text)?,
        None => Platform::host(),
    };
    let options = PullOptions {
        platform,
        quiet: args.quiet,
        jobs: args.jobs,
        insecure: args.insecure,
    };
    pull::pull(&crate::dirs::cache_dir(), &reference, &options)?;
    Ok(0)
}
