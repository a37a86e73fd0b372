//! `eskrun ps`: the containers kept in eskrun's state directory.

use anyhow::Result;

use crate::runtime;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<i32> {
    let containers = runtime::list()?;
    let width = containers
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    println!("{:<width$}  {:<7}  IMAGE", "NAME", "STATUS");
    for c in containers {
        let status = if c.running { "running" } else { "stopped" };
        let image = c.image.as_deref().unwrap_or("-");
        println!("{:<width$}  {status:<7}  {image}", c.name);
    }
    Ok(0)
}
