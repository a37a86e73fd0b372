//! `eskrun login`.

/// Not written yet.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("eskrun login is not implemented yet")
}
