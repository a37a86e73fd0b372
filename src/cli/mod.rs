//! Command-line layer: parses arguments and calls the stages. No logic of its own lives here.

use clap::{Parser, Subcommand};

mod down;
mod images;
mod login;
mod logout;
mod prune;
mod ps;
mod pull;
mod rm;
mod rmi;
mod run;
mod up;

#[derive(Parser)]
#[command(
    name = "eskrun",
    version,
    about = "Daemonless, rootless container runner",
    propagate_version = true
)]
struct Cli {
    /// Log what eskrun does (same as ESKRUN_LOG=debug).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

// Deferred: clap builds a subcommand's arguments only when it is the one given, instead of
// all of them before parsing (a good part of the ~0.4 ms clap took in every `eskrun run`).
// So each command's description is here, on its variant, not on its arguments' struct.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Fetch an image from its registry into the rootfs cache, verified and unpacked.
    Pull(pull::Args),
    /// List the images in the cache.
    Images(images::Args),
    /// Remove images from the cache; layers other images still use are kept.
    Rmi(rmi::Args),
    /// Remove layers and documents no image or container uses, and leftovers of interrupted pulls.
    Prune(prune::Args),
    /// Log in to a registry; credentials go to ~/.docker/config.json (or its credential helper).
    Login(login::Args),
    /// Remove the stored credentials of a registry.
    Logout(logout::Args),
    /// Run a command in a new container (foreground; the exit code is the container's).
    Run(Box<run::Args>),
    /// Start (or re-enter) the development container of a directory; its writable layer is kept
    /// until `eskrun down`. The image's exposed ports are published on the same host ports.
    Up(up::Args),
    /// Remove a project's container and its writable layer.
    Down(down::Args),
    /// List containers: those running and those kept (`run --name` without `--rm`, `up`).
    Ps(ps::Args),
    /// Remove stopped containers and their writable layers.
    Rm(rm::Args),
}

/// Runs the command line and returns the process exit code. Errors are printed as one line:
/// the whole context chain, outermost first.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.debug);
    let result = match cli.command {
        Command::Pull(args) => pull::run(args),
        Command::Images(args) => images::run(args),
        Command::Rmi(args) => rmi::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Login(args) => login::run(args),
        Command::Logout(args) => logout::run(args),
        Command::Run(args) => run::run(*args),
        Command::Up(args) => up::run(args),
        Command::Down(args) => down::run(args),
        Command::Ps(args) => ps::run(args),
        Command::Rm(args) => rm::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("eskrun: {err:#}");
            125
        }
    }
}

fn init_logging(debug: bool) {
    let filter = if debug {
        tracing_subscriber::EnvFilter::new("eskrun=debug")
    } else {
        // Only eskrun's own warnings: libraries log what eskrun then reports as its one error
        // line (rustls logs every rejected certificate, once per retry).
        tracing_subscriber::EnvFilter::try_from_env("ESKRUN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("eskrun=warn"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}
