//! `eskrun prune`: free layers that no image uses.

use anyhow::Result;

use crate::store::{Freed, Mode, Store};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<i32> {
    // Layers given their image owners hold files of the user's subordinate ids.
    crate::runtime::userns::enter_to_remove()?;
    let store = Store::open(&crate::dirs::cache_dir())?;
    let _cache = store.lock(Mode::Exclusive)?;
    let freed = store.collect(&crate::runtime::layers_in_use()?)?;
    report(&freed);
    Ok(0)
}

pub(super) fn report(freed: &Freed) {
    println!(
        "Freed {} ({} layers, {} manifests/configs)",
        indicatif::HumanBytes(freed.bytes),
        freed.layers,
        freed.documents
    );
}
