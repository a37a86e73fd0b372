//! `eskrun login`: check credentials against a registry and store them where Docker does.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};

use crate::registry::{Options, RegistryClient};

#[derive(clap::Args)]
pub struct Args {
    /// Registry host, e.g. docker.io or localhost:5000 (default: docker.io).
    #[arg(default_value = "docker.io")]
    registry: String,
    #[arg(long, short)]
    username: Option<String>,
    /// Password on the command line (visible to other users: prefer --password-stdin).
    #[arg(long, short, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Allow plain HTTP to the registry.
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let stdin = std::io::stdin();
    let username = match args.username {
        Some(name) => name,
        None if !args.password_stdin && stdin.is_terminal() => prompt("Username: ", true)?,
        None => bail!("give the user name with --username"),
    };
    let password = match args.password {
        Some(password) => password,
        None if args.password_stdin => {
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        None if stdin.is_terminal() => prompt("Password: ", false)?,
        None => bail!("give the password with --password-stdin"),
    };
    let client = RegistryClient::new(Options::from_env(args.insecure)?);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(client.login(&args.registry, &username, &password))?;
    println!("Login Succeeded");
    Ok(0)
}

/// Reads one line from the terminal, without echo for passwords.
fn prompt(label: &str, echo: bool) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    eprint!("{label}");
    std::io::stderr().flush()?;
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("cannot read the terminal settings")?;
    if !echo {
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet)?;
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if !echo {
        tcsetattr(&stdin, SetArg::TCSANOW, &saved)?;
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
