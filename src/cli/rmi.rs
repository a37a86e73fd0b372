//! `eskrun rmi`: forget images and free the layers only they used.

use anyhow::{bail, Result};

use crate::reference::ImageRef;
use crate::store::{Mode, Store};

#[derive(clap::Args)]
pub struct Args {
    /// Image references, as given to pull.
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    // Layers given their image owners hold files of the user's subordinate ids.
    crate::runtime::userns::enter_to_remove()?;
    let store = Store::open(&crate::dirs::cache_dir())?;
    let _cache = store.lock(Mode::Exclusive)?;
    let mut missing = Vec::new();
    for image in &args.images {
        let reference = ImageRef::parse(image)?.to_string();
        if store.remove_ref(&reference)? {
            println!("Untagged: {reference}");
        } else {
            missing.push(reference);
        }
    }
    let freed = store.collect(&crate::runtime::layers_in_use()?)?;
    super::prune::report(&freed);
    if !missing.is_empty() {
        bail!(
            "no such image in the cache: {} (see `eskrun images`)",
            missing.join(", ")
        );
    }
    Ok(0)
}
