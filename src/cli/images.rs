//! `eskrun images`: what the cache holds.

use anyhow::Result;
use serde::Serialize;

use crate::store::Store;

#[derive(clap::Args)]
pub struct Args {
    /// Output format: `table` or `json` (one JSON array).
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(Serialize)]
struct Row {
    reference: String,
    platform: String,
    manifest_digest: String,
    layers: usize,
    /// Compressed size, as the registry reports it.
    size: u64,
}

pub fn run(args: Args) -> Result<i32> {
    let store = Store::open(&crate::dirs::cache_dir())?;
    let mut rows = Vec::new();
    for record in store.refs()? {
        let manifest = store.manifest(&record.manifest_digest)?;
        rows.push(Row {
            size: manifest.layers().iter().map(|l| l.size()).sum(),
            layers: manifest.layers().len(),
            reference: record.reference,
            platform: record.platform,
            manifest_digest: record.manifest_digest,
        });
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<50} {:<14} {:<19} {:>6} {:>10}",
        "REFERENCE", "PLATFORM", "DIGEST", "LAYERS", "SIZE"
    );
    for row in rows {
        println!(
            "{:<50} {:<14} {:<19} {:>6} {:>10}",
            row.reference,
            row.platform,
            &row.manifest_digest[..row.manifest_digest.len().min(19)],
            row.layers,
            indicatif::HumanBytes(row.size).to_string()
        );
    }
    Ok(0)
}
