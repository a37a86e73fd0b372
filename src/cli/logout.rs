//! `eskrun logout`: forget a registry's stored credentials.

use anyhow::Result;

use crate::registry::{Options, RegistryClient};

#[derive(clap::Args)]
pub struct Args {
    /// Registry host (default: docker.io).
    #[arg(default_value = "docker.io")]
    registry: String,
}

pub fn run(args: Args) -> Result<i32> {
    let client = RegistryClient::new(Options::from_env(false)?);
    if client.logout(&args.registry)? {
        println!("Removed login credentials for {}", args.registry);
    } else {
        println!("Not logged in to {}", args.registry);
    }
    Ok(0)
}
