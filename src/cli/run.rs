//! `eskrun run [OPTIONS] IMAGE [COMMAND [ARG...]]`, with Docker's flags.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::runtime::{self, UsernsMode};
use crate::spec::{self, Network, RunOptions};

/// `--network`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum NetworkArg {
    /// Share the host's network: a published port is the container's own.
    Host,
    /// Loopback only.
    None,
    /// Own network namespace; -p ports forwarded by eskrun, outbound through pasta or
    /// slirp4netns where one can run.
    Private,
}

/// `--userns`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum Userns {
    /// Map you to the container's user (and a subordinate range, if any, to the rest).
    #[value(alias = "")]
    Auto,
    /// Keep your own ids inside (needs a subordinate range).
    KeepId,
}

impl From<Userns> for UsernsMode {
    fn from(u: Userns) -> UsernsMode {
        match u {
            Userns::Auto => UsernsMode::Auto,
            Userns::KeepId => UsernsMode::KeepId,
        }
    }
}

#[derive(clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Bind mount SRC:DST[:ro] (a relative SRC is from the current directory).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volumes: Vec<String>,
    /// Mount: type=bind,src=SRC,dst=DST[,readonly] or type=tmpfs,dst=DST.
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// Set an environment variable (K=V), or pass K from eskrun's environment.
    #[arg(short = 'e', long = "env", value_name = "K[=V]")]
    env: Vec<String>,
    /// Read environment variables from a file (K=V lines).
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User: NAME|UID[:GROUP|GID].
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Override the image's ENTRYPOINT ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Keep stdin open for the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Add a supplementary group (name from the image's /etc/group, or gid).
    #[arg(long = "group-add", value_name = "GROUP")]
    group_add: Vec<String>,
    /// Memory limit (e.g. 512m; needs a cgroup eskrun may write: real root here).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPUs the container may use (e.g. 1.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Most processes the container may have.
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    /// Name of the container.
    #[arg(long)]
    name: Option<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Mount the container's root read-only.
    #[arg(long)]
    read_only: bool,
    /// Network [default: host; private when a -p remaps a port or names a host address].
    #[arg(long, value_enum)]
    network: Option<NetworkArg>,
    /// Mount a tmpfs: DST[:OPTIONS].
    #[arg(long = "tmpfs", value_name = "DST[:OPTS]")]
    tmpfs: Vec<String>,
    /// User namespace.
    #[arg(long, value_enum, default_value_t = Userns::Auto)]
    userns: Userns,
    /// Publish a port: [IP:][HOST:]CONTAINER[/PROTO].
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    publish: Vec<String>,
    /// Publish all the image's exposed ports on the same host ports.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Run from these unpacked layer trees (lowest first) instead of a cached image.
    #[arg(long = "layer", value_name = "DIR", hide = true)]
    layers: Vec<PathBuf>,
    /// The image configuration (JSON) for --layer.
    #[arg(
        long = "image-config",
        value_name = "FILE",
        hide = true,
        requires = "layers"
    )]
    image_config: Option<PathBuf>,
    /// The image to run.
    image: String,
    /// Command and arguments (replace the image's CMD).
    command: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut mounts = Vec::new();
    for v in &args.volumes {
        mounts.push(spec::parse_volume(v, &cwd)?);
    }
    for m in &args.mounts {
        mounts.push(spec::parse_mount(m, &cwd)?);
    }
    for t in &args.tmpfs {
        mounts.push(spec::parse_tmpfs(t)?);
    }
    let options = RunOptions {
        entrypoint: args.entrypoint,
        command: args.command,
        env: spec::collect_env(&args.env_files, &args.env)?,
        workdir: args.workdir,
        user: args.user,
        mounts,
        read_only: args.read_only,
        hostname: args.hostname,
        group_add: args.group_add,
        limits: spec::Limits {
            memory: args.memory.as_deref().map(spec::parse_memory).transpose()?,
            cpus: args.cpus,
            pids: args.pids_limit,
        },
        tty: args.tty,
        network: match args.network {
            Some(NetworkArg::None) => Network::None,
            Some(NetworkArg::Private) => Network::Private,
            Some(NetworkArg::Host) | None => Network::Host,
        },
    };
    // Held until the container ends, so the image is not collected from under it.
    let cached;
    let mut publish = Vec::new();
    for p in &args.publish {
        publish.extend(crate::network::parse_publish(p)?);
    }
    let (image, layers, image_name) = if args.layers.is_empty() {
        cached = match runtime::cached(&args.image)? {
            runtime::Lookup::Found(c) => c,
            runtime::Lookup::PullFailed(code) => return Ok(code),
        };
        (
            cached.image.config.clone(),
            cached.image.layers.clone(),
            cached.image.reference.clone(),
        )
    } else {
        let config = match &args.image_config {
            Some(f) => serde_json::from_slice(&fs_err::read(f)?)
                .with_context(|| format!("reading image configuration {}", f.display()))?,
            None => oci_spec::image::ImageConfiguration::default(),
        };
        let layers = args
            .layers
            .iter()
            .map(fs_err::canonicalize)
            .collect::<Result<Vec<_>, _>>()?;
        (config, layers, args.image)
    };
    if args.publish_all {
        publish = crate::network::with_exposed(publish, &exposed_ports(&image))?;
    }
    runtime::run(runtime::Request {
        image,
        layers,
        image_name,
        options,
        name: args.name,
        interactive: args.interactive,
        remove: args.rm,
        reuse: false,
        publish,
        network_given: args.network.is_some(),
        userns: args.userns.into(),
    })
}

/// The image config's `ExposedPorts` keys (`8888/tcp`).
pub(super) fn exposed_ports(image: &oci_spec::image::ImageConfiguration) -> Vec<String> {
    image
        .config()
        .as_ref()
        .and_then(|c| c.exposed_ports().clone())
        .unwrap_or_default()
}
