//! `eskrun rm NAME...`: removes stopped containers, as `eskrun down NAME` does for one.

use anyhow::Result;

use crate::runtime;

#[derive(clap::Args)]
pub struct Args {
    /// Container names (see `eskrun ps`).
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    runtime::remove(&args.names, |name| println!("{name}"))?;
    Ok(0)
}
