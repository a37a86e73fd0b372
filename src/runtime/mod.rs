//! Runs one container in the foreground through youki's libcontainer (unpatched 0.7).
//!
//! The order matters and is the point of this module: everything that needs no namespace is
//! decided first (spec, ids), then, while eskrun is still single-threaded, it enters its own
//! namespaces ([`userns`]), cleans up after killed eskruns ([`stale`]), mounts the overlay
//! root ([`rootfs`]), hands libcontainer a bundle and waits in the foreground ([`io`]).

mod image;
mod io;
mod owners;
pub mod project;
mod record;
mod rootfs;
mod spare;
mod stale;
pub mod userns;

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as LcContainer;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::image::ImageConfiguration;

use crate::network::{outbound, PortMapping};
use crate::spec::{self, Network, RunOptions};
pub use image::{cached, CachedImage, Lookup};
pub use record::{layers_in_use, list, Container};
use record::{ContainerDir, Record};
pub use userns::UsernsMode;

/// One container to run.
pub struct Request {
    pub image: ImageConfiguration,
    /// The image's layer trees, lowest first.
    pub layers: Vec<PathBuf>,
    /// The image's name, recorded for `eskrun ps`.
    pub image_name: String,
    pub options: RunOptions,
    /// `--name`; a random id when absent.
    pub name: Option<String>,
    /// `-i`: the container reads eskrun's stdin.
    pub interactive: bool,
    /// `--rm`: nothing is left when the container ends.
    pub remove: bool,
    /// Reuse the writable layer of an earlier container of this name (`eskrun up`).
    pub reuse: bool,
    pub userns: UsernsMode,
    /// `-p`: ports published from the host (forwarded with `--network private`).
    pub publish: Vec<PortMapping>,
    /// `--network` was given: `options.network` is kept even when the host network cannot
    /// publish a port as asked (see [`choose_network`]).
    pub network_given: bool,
}

/// The directory holding all containers' directories.
pub fn containers_dir() -> PathBuf {
    crate::dirs::state_dir().join("containers")
}

/// Runs the container in the foreground and returns its exit code (128+N when signal N
/// killed it). Must be called while the process is single-threaded.
pub fn run(mut req: Request) -> Result<i32> {
    let switched = choose_network(&mut req)?;
    let id = random_id()?;
    let name = req.name.clone().unwrap_or_else(|| id.clone());
    check_name(&name)?;
    let default_hostname = match req.options.network {
        Network::Host => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
        _ => id.clone(),
    };
    let plan = spec::plan(&req.image, &req.layers, &req.options, &default_hostname)?;
    let identity = userns::plan(plan.user.uid, plan.user.gid, req.userns)?;
    if identity.is_rootless() && req.options.limits.any() {
        bail!("--memory, --cpus and --pids-limit need a cgroup eskrun may write, and this host delegates none to you: run without them (or as root)");
    }
    if let Some(mapped) = identity.mapped_gids() {
        let unmapped: Vec<String> = plan
            .user
            .additional_gids
            .iter()
            .filter(|g| !mapped.iter().any(|(s, n)| **g >= *s && **g - s < *n))
            .map(u32::to_string)
            .collect();
        if !unmapped.is_empty() && !req.options.group_add.is_empty() {
            eprintln!("eskrun: supplementary groups {} are left out: without a subordinate gid range only the container's own group exists", unmapped.join(","));
        }
    }

    let containers = containers_dir();
    fs_err::create_dir_all(&containers)?;
    let stale = stale::find_and_kill(&containers);
    // Outside the user namespace, where /proc still lets eskrun name a busy port's holder.
    let ports = Ports::bind(req.options.network, &req.publish, !stale.is_empty())?;
    userns::enter(&identity)?;
    stale::finish(stale);
    let net = ports.into_net(
        req.options.network,
        &req.publish,
        switched,
        !identity.is_rootless(),
    )?;

    let scratch = rootfs::scratch()?;
    let path = containers.join(&name);
    let record = Record {
        id: id.clone(),
        remove: req.remove,
        layers: req.layers.clone(),
        image: Some(req.image_name.clone()),
    };
    let spare = if path.exists() {
        None
    } else {
        spare::take(&path, &record)?
    };
    let dir = match spare {
        Some(dir) => dir,
        None => {
            let dir = ContainerDir::create_and_lock(&path)?.with_context(|| {
                format!("the container name {name:?} is in use by a running eskrun: choose another --name")
            })?;
            if dir.read()?.is_some() && !req.reuse {
                bail!("a container named {name:?} already exists: remove it with `eskrun down {name}` or choose another --name");
            }
            dir.write(&record)?;
            dir
        }
    };

    // The record keeps the pulled trees: they name the layers a container holds on to.
    let result = owners::owned_layers(&req.layers, &identity).and_then(|lowers| {
        req.layers = lowers;
        run_in(&req, &plan, &identity, &dir, &record, &scratch, net)
    });
    let started = dir.started().is_some();
    if let (Err(_), Some(pid)) = (&result, dir.started()) {
        // Built but never waited for: it is our child, so the pid is still its own.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    delete_state(
        &scratch.join(LIBCONTAINER).join(&id),
        &id,
        identity.is_rootless(),
    );
    // A container that never started leaves nothing either, unless `up` keeps its layer.
    if req.remove || (!started && !req.reuse) {
        spare::give_back(dir).context("removing the container")?;
    } else {
        dir.clear_init()?;
    }
    result
}

/// Removes stopped containers and their writable layers (`eskrun rm`, `eskrun down`), each
/// name in turn, calling `removed` for each one gone. The names that could not be removed
/// (missing, running) make one error naming them all.
pub fn remove(names: &[String], mut removed: impl FnMut(&str)) -> Result<()> {
    let containers = containers_dir();
    let stale = stale::find_and_kill(&containers);
    userns::enter_to_remove()?;
    stale::finish(stale);
    let mut failed = Vec::new();
    for name in names {
        match remove_one(&containers, name) {
            Ok(()) => removed(name),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn remove_one(containers: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let path = containers.join(name);
    if !path.join("container.json").exists() {
        bail!("there is no container named {name:?}");
    }
    let dir = ContainerDir::lock_existing(&path)?.with_context(|| {
        format!("the container {name:?} is running: end the eskrun that runs it first")
    })?;
    fs_err::remove_dir_all(&dir.path).with_context(|| format!("removing the container {name:?}"))
}

fn run_in(
    req: &Request,
    plan: &spec::Plan,
    identity: &userns::Identity,
    dir: &ContainerDir,
    record: &Record,
    scratch: &Path,
    net: Net,
) -> Result<i32> {
    let p = |s: &str| dir.path.join(s);
    let fresh = !p("upper").exists();
    for d in ["upper", "work"] {
        fs_err::create_dir_all(p(d))?;
    }
    if fresh {
        // The container's `/`: not left to the user's umask.
        fs_err::set_permissions(
            p("upper"),
            std::os::unix::fs::PermissionsExt::from_mode(spare::ROOT_MODE),
        )?;
    }
    let etc_files = write_etc_files(
        scratch,
        &plan.hostname,
        req.options.network,
        net.outbound.is_some(),
    )?;
    let mut root = scratch.join("rootfs");
    let mut oci = spec::to_oci(
        plan,
        &req.options,
        &spec::Host {
            rootless: identity.is_rootless(),
            can_setgroups: identity.can_setgroups(),
            mapped_gids: identity.mapped_gids(),
            rootfs: &root,
            cgroups_path: format!("/eskrun/{}", record.id),
            netns: net
                .netns
                .as_ref()
                .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd())),
            etc_files: &etc_files,
        },
    )?;
    let mounts = oci.mounts().clone().unwrap_or_default();
    let provided: Vec<PathBuf> = etc_files.iter().map(|(f, _)| f.clone()).collect();
    let (init, in_layer) = rootfs::init_layer(scratch, &req.layers, &mounts, &provided)?;
    let mut lowers = req.layers.clone();
    lowers.push(init);
    oci.set_mounts(Some(
        mounts
            .iter()
            .filter(|m| m.source().as_ref().is_none_or(|s| !in_layer.contains(s)))
            .cloned()
            .collect(),
    ));
    // A `--rm` container's writable layer is thrown away: nothing in it is worth a sync of
    // the disk (done at unmount otherwise).
    if let Err(e) = rootfs::mount_overlay(&lowers, &p("upper"), &p("work"), req.remove, &root) {
        eprintln!("eskrun: {e:#}: copying the image's layers instead, which is slower and takes space for each container");
        // On disk, not in memory; `up` keeps a copied root like a writable layer.
        root = p("rootfs");
        if !p("rootfs.copied").exists() {
            fs_err::create_dir_all(&root)?;
            rootfs::copy_layers(&req.layers, &root)?;
            fs_err::write(p("rootfs.copied"), "")?;
        }
        if let Some(r) = oci.root_mut() {
            r.set_path(root.clone());
        }
        // No init layer: every provided file is bind-mounted.
        oci.set_mounts(Some(mounts));
    }
    rootfs::ensure_dir(&root, &plan.cwd)?;
    oci.save(scratch.join("config.json"))
        .context("writing the container's config.json")?;

    let tty = req.options.tty;
    let mut builder = ContainerBuilder::new(record.id.clone(), SyscallType::default())
        .with_root_path(scratch.join(LIBCONTAINER))
        .context("libcontainer's state directory")?;
    let console = if tty {
        let (socket, path) = io::ConsoleSocket::bind(scratch)?;
        builder = builder.with_console_socket(Some(path));
        Some(socket)
    } else {
        let stdio = io::passthrough(req.interactive)?;
        builder = builder
            .with_stdin(stdio.stdin)
            .with_stdout(stdio.stdout)
            .with_stderr(stdio.stderr);
        None
    };
    let container = builder
        .as_init(scratch)
        .with_systemd(false)
        .with_detach(tty)
        .build();
    let mut container = match container {
        Ok(c) => c,
        Err(e) => return start_failure(&e.to_string(), &plan.args[0]),
    };
    io::block_signals()?;
    let pid = container
        .pid()
        .context("libcontainer did not report the container's init")?;
    dir.set_init(pid)?;

    let master = console.map(io::ConsoleSocket::receive).transpose()?;
    if let Some(m) = &master {
        io::sync_winsize(m.as_fd());
    }
    // Raw only when eskrun relays the keys: otherwise its terminal keeps turning Ctrl-C into
    // a signal, which `io::wait` passes on.
    let _raw = match master {
        Some(_) if req.interactive => io::RawTerminal::enter(),
        _ => None,
    };
    container
        .start()
        .map_err(|e| anyhow::anyhow!("starting the container: {e}"))?;
    // Threads only now: the container is cloned, and they inherit the blocked signals.
    let forwarding = match (net.forwarder, net.netns) {
        (Some(f), Some(ns)) => Some(f.serve(ns)?),
        _ => None,
    };
    let cleaner = spare::Cleaner::start();
    let code = io::wait(pid, master, req.interactive);
    if let Some(f) = forwarding {
        f.stop();
    }
    if let Some(c) = cleaner {
        c.stop();
    }
    code
}

/// libcontainer's state directory, under the scratch tmpfs: it goes with eskrun, so a killed
/// eskrun leaves none of it behind, and writing and removing it costs no disk operations.
const LIBCONTAINER: &str = "libcontainer";

/// Deletes libcontainer's state of a container whose init is gone (and so its cgroups).
/// Rootless, libcontainer's only cgroup would be `/eskrun/<id>` in eskrun's own cgroup2
/// mount, where the host delegates a cgroup to the user; without one there is nothing to
/// delete (~0.2 ms saved): the state is on the scratch tmpfs that goes with eskrun, and the
/// kernel killed whatever was left in the container's pid namespace with its init.
fn delete_state(state: &Path, id: &str, rootless: bool) {
    let cgroup = Path::new("/sys/fs/cgroup/eskrun").join(id);
    if !state.exists() || (rootless && !cgroup.exists()) {
        return;
    }
    let deleted = LcContainer::load(state.to_path_buf()).and_then(|mut c| c.delete(true));
    if let Err(e) = deleted {
        tracing::debug!("libcontainer could not delete {}: {e}", state.display());
    }
}

/// Moves a container to `--network private` when the host network (the default, `--network`
/// not given) cannot publish its ports as asked: a remapped port or a host address other than
/// all of them. Returns the mapping that made it switch, for the notice.
fn choose_network(req: &mut Request) -> Result<Option<PortMapping>> {
    if req.options.network == Network::None && !req.publish.is_empty() {
        bail!("-p/--publish needs a network to publish from: use --network private (or host)");
    }
    if req.options.network != Network::Host {
        return Ok(None);
    }
    let Some(m) = req.publish.iter().find(|m| !m.host_network_can_publish()) else {
        return Ok(None);
    };
    if req.network_given {
        bail!(
            "--network host cannot publish {m}: the container's server listens on the host's own ports and addresses; publish -p {port}:{port} or leave out --network host (eskrun then forwards the port with --network private)",
            port = m.container_port
        );
    }
    req.options.network = Network::Private;
    Ok(Some(*m))
}

/// The container's network when it is not the host's: a namespace made by eskrun with `lo`
/// up (the container's own is out of reach before it execs), the forwarder of `-p` ports and
/// pasta or slirp4netns for outbound connections where one can run.
struct Net {
    netns: Option<std::os::fd::OwnedFd>,
    forwarder: Option<crate::network::Forwarder>,
    /// Kept until the container ends.
    outbound: Option<outbound::Outbound>,
}

/// The host side of `-p`, settled before anything else: a busy port is an error up front.
enum Ports {
    /// Nothing to forward: with the host network the ports were free a moment ago and the
    /// container binds them itself; with `none` there are none.
    Checked,
    Forwarded(crate::network::Forwarder),
}

impl Ports {
    /// `killed_stale`: containers of killed eskruns were just killed, and their servers (on
    /// the host network) may hold the ports for the moment they take to exit.
    fn bind(network: Network, publish: &[PortMapping], killed_stale: bool) -> Result<Ports> {
        let mut tries = if killed_stale { 100 } else { 1 };
        loop {
            tries -= 1;
            match Ports::try_bind(network, publish) {
                Err(crate::network::NetworkError::PortInUse { .. }) if tries > 0 => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                result => return Ok(result?),
            }
        }
    }

    fn try_bind(
        network: Network,
        publish: &[PortMapping],
    ) -> Result<Ports, crate::network::NetworkError> {
        Ok(match network {
            Network::Host => {
                crate::network::check_free(publish)?;
                Ports::Checked
            }
            Network::None => Ports::Checked,
            Network::Private => Ports::Forwarded(crate::network::Forwarder::bind(publish)?),
        })
    }

    /// Makes the container's network namespace (in eskrun's user namespace, so after entering
    /// it) and says in one line what that network is when it is not what was asked for
    /// (`switched`) or has no way out. `real_root`: eskrun has no user namespace of its own.
    fn into_net(
        self,
        network: Network,
        publish: &[PortMapping],
        switched: Option<PortMapping>,
        real_root: bool,
    ) -> Result<Net> {
        let forwarder = match (network, self) {
            (Network::Host, _) => {
                return Ok(Net {
                    netns: None,
                    forwarder: None,
                    outbound: None,
                })
            }
            (_, Ports::Forwarded(f)) => Some(f),
            (_, Ports::Checked) => None,
        };
        let netns = crate::network::create_netns()?;
        if network == Network::None {
            return Ok(Net {
                netns: Some(netns),
                forwarder,
                outbound: None,
            });
        }
        let outbound = outbound::start(netns.as_fd(), real_root);
        let ports = if publish.is_empty() {
            ""
        } else {
            ", ports forwarded by eskrun"
        };
        match (&switched, &outbound) {
            (Some(m), Ok(o)) => eprintln!("eskrun: the host's network cannot publish {m}, so this container gets its own (--network private{ports}, outbound through {})", o.helper()),
            (Some(m), Err(why)) => eprintln!("eskrun: the host's network cannot publish {m}, so this container gets its own (--network private{ports}) without outbound connections ({why}); publish -p {p}:{p} to keep the host's network", p = m.container_port),
            (None, Err(why)) => eprintln!("eskrun: this container has no outbound network ({why}): use --network host for that"),
            (None, Ok(_)) => {}
        }
        Ok(Net {
            netns: Some(netns),
            forwarder,
            outbound: outbound.ok(),
        })
    }
}

/// A container that could not start: Docker's 127 (command not found) and 126 (not
/// executable) with one line saying so, anything else as an error.
fn start_failure(error: &str, command: &str) -> Result<i32> {
    if error.contains("not found in $PATH") {
        eprintln!(
            "eskrun: {command}: executable file not found in the container (nor in its $PATH)"
        );
        return Ok(127);
    }
    if error.contains("does not have correct permissions") {
        eprintln!("eskrun: {command}: not an executable file in the container");
        return Ok(126);
    }
    // libcontainer's message is a chain of "failed to ..." ending in the cause.
    bail!(
        "the container could not be created: {error} (ESKRUN_LOG=libcontainer=debug shows its log)"
    )
}

/// /etc/hosts, /etc/hostname and /etc/resolv.conf for the container, as Docker provides them:
/// the host's hosts and resolv.conf with the host network, a minimal hosts file otherwise, and
/// the DNS forwarder of pasta or slirp4netns when one gives the container its network (the
/// host's servers may be on its loopback, out of the container's reach).
fn write_etc_files(
    dir: &Path,
    hostname: &str,
    network: Network,
    has_outbound: bool,
) -> Result<Vec<(PathBuf, &'static str)>> {
    let hosts = match network {
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        _ => format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"),
    };
    let resolv = if has_outbound {
        format!("nameserver {}\n", outbound::DNS)
    } else {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    };
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        ("hostname", format!("{hostname}\n"), "/etc/hostname"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (file, content, dst) in files {
        let path = dir.join(file);
        fs_err::write(&path, content)?;
        // Readable by every container user, whatever the user's umask.
        fs_err::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        out.push((path, dst));
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("invalid container name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit");
    }
    Ok(())
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 6];
    // getrandom(2), not /dev/urandom: one system call instead of three, a few times a start.
    // SAFETY: `b` is writable for its length.
    let n = unsafe { nix::libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        bail!(
            "reading random bytes for a container id: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
