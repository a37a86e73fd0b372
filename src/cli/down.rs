//! `eskrun down [NAME]`: removes what `eskrun up` keeps.

use anyhow::{Context, Result};

use crate::runtime::{self, project};

#[derive(clap::Args)]
pub struct Args {
    /// Container name (default: the current directory's, as `eskrun up` names it).
    name: Option<String>,
}

pub fn run(args: Args) -> Result<i32> {
    let name = match args.name {
        Some(n) => n,
        None => project::container_name(
            &std::env::current_dir().context("reading the current directory")?,
        ),
    };
    runtime::remove(&[name], |_| {})?;
    Ok(0)
}
