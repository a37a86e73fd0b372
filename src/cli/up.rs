//! `eskrun up`: the one-command development environment for a project directory.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::run::Userns;
use crate::runtime::{self, project::Project};
use crate::spec::{Network, RunOptions, UserMount};

#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Project directory, mounted in the container.
    #[arg(long = "mount", default_value = ".")]
    dir: PathBuf,
    /// Image (default: eskrun.toml's `image`, else kave/eskapade-env:0.7).
    #[arg(long)]
    image: Option<String>,
    /// Where the directory is mounted (default: eskrun.toml's `target`, else /opt/eskapade).
    #[arg(long)]
    target: Option<String>,
    /// Container name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (K=V), or pass K from eskrun's environment.
    #[arg(short = 'e', long = "env", value_name = "K[=V]")]
    env: Vec<String>,
    /// Publish a port, besides the image's exposed ones: [IP:][HOST:]CONTAINER[/PROTO].
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    publish: Vec<String>,
    /// User namespace.
    #[arg(long, value_enum, default_value_t = Userns::Auto)]
    userns: Userns,
    /// Command and arguments (default: eskrun.toml's `command`, else the image's).
    command: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    let dir = fs_err::canonicalize(&args.dir).context("the project directory")?;
    let project = Project::load(&dir)?;
    let image = args.image.unwrap_or(project.image);
    let target = args.target.unwrap_or(project.target);
    let name = args
        .name
        .unwrap_or_else(|| runtime::project::container_name(&dir));
    let interactive = std::io::stdin().is_terminal();
    let cached = match runtime::cached(&image)? {
        runtime::Lookup::Found(c) => c,
        runtime::Lookup::PullFailed(code) => return Ok(code),
    };
    let options = RunOptions {
        command: if args.command.is_empty() {
            project.command
        } else {
            args.command
        },
        env: crate::spec::collect_env(&[], &args.env)?,
        mounts: vec![UserMount::Bind {
            source: dir,
            destination: target,
            readonly: false,
        }],
        tty: interactive && std::io::stdout().is_terminal(),
        network: Network::Host,
        ..RunOptions::default()
    };
    let mut publish = Vec::new();
    for p in &args.publish {
        publish.extend(crate::network::parse_publish(p)?);
    }
    let publish =
        crate::network::with_exposed(publish, &super::run::exposed_ports(&cached.image.config))?;
    runtime::run(runtime::Request {
        image: cached.image.config.clone(),
        layers: cached.image.layers.clone(),
        image_name: cached.image.reference.clone(),
        options,
        name: Some(name),
        interactive,
        remove: false,
        reuse: true,
        publish,
        network_given: false,
        userns: args.userns.into(),
    })
}
