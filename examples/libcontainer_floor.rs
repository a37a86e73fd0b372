//! The floor under `eskrun run`: one container started through libcontainer with the least
//! around it, so `bench/run.sh` can show what eskrun adds on the same machine.
//!
//! It enters the same namespaces as eskrun (one id, or a subordinate range when the user has
//! one) and hands libcontainer the spec eskrun would write, but on a plain root directory: no
//! image lookup, no overlay, no container record, no writable layer to remove. Run it as the
//! unprivileged user: `libcontainer_floor ROOTFS STATE_DIR COMMAND...`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use eskrun::runtime::userns::{self, UsernsMode};
use eskrun::spec::{self, RunOptions};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rootfs, state, command @ ..] = args.as_slice() else {
        bail!("usage: libcontainer_floor ROOTFS STATE_DIR COMMAND...");
    };
    if command.is_empty() {
        bail!("usage: libcontainer_floor ROOTFS STATE_DIR COMMAND...");
    }
    let rootfs = PathBuf::from(rootfs);
    let options = RunOptions {
        command: command.to_vec(),
        ..RunOptions::default()
    };
    let image = oci_spec::image::ImageConfiguration::default();
    let plan = spec::plan(&image, std::slice::from_ref(&rootfs), &options, "floor")?;
    let identity = userns::plan(plan.user.uid, plan.user.gid, UsernsMode::Auto)?;
    userns::enter(&identity)?;

    // The bundle and libcontainer's state, as eskrun keeps them: on a tmpfs, nothing to
    // remove afterwards.
    let bundle = PathBuf::from(state).join("bundle");
    fs_err::create_dir_all(&bundle)?;
    nix::mount::mount(
        Some("tmpfs"),
        &bundle,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting the bundle's tmpfs")?;
    let id = format!("floor-{}", std::process::id());
    let oci = spec::to_oci(
        &plan,
        &options,
        &spec::Host {
            rootless: identity.is_rootless(),
            can_setgroups: identity.can_setgroups(),
            mapped_gids: identity.mapped_gids(),
            rootfs: &rootfs,
            cgroups_path: format!("/eskrun/{id}"),
            netns: None,
            etc_files: &[],
        },
    )?;
    oci.save(bundle.join("config.json"))?;

    let mut container = ContainerBuilder::new(id, SyscallType::default())
        .with_root_path(&bundle)?
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(false)
        .build()?;
    // As eskrun does: a fast container's SIGCHLD must not arrive before the wait.
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&nix::sys::signal::SigSet::all()),
        None,
    )?;
    let pid = container.pid().context("no init pid")?;
    container.start()?;
    let code = match waitpid(pid, None)? {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        other => bail!("unexpected wait status {other:?}"),
    };
    container.delete(true)?;
    std::process::exit(code);
}
