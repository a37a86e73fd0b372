//! `eskrun pull`.

/// Not written yet.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("eskrun pull is not implemented yet")
}
