//! Image configuration + run options -> what the container runs ([`Plan`], Docker's rules) ->
//! OCI runtime spec ([`to_oci`], eskrun's security defaults and the host's constraints).

mod mounts;
mod user;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use mounts::{parse_mount, parse_tmpfs, parse_volume, UserMount};
pub use user::{
    image_entry, is_opaque, read_image_file, resolve as resolve_user, LayerLookups, User,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network namespace (the default: no daemon to build a bridge).
    #[default]
    Host,
    /// A new network namespace with only a loopback interface.
    None,
    /// A new network namespace, ports published by eskrun's forwarder.
    Private,
}

/// The `run` flags that shape the container, already parsed.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--entrypoint`: `Some("")` clears the image's ENTRYPOINT.
    pub entrypoint: Option<String>,
    /// `COMMAND [ARG...]` after the image.
    pub command: Vec<String>,
    /// `-e K=V` / `-e K` (from eskrun's own environment) and `--env-file` lines, in order.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub mounts: Vec<UserMount>,
    pub read_only: bool,
    pub hostname: Option<String>,
    /// `--group-add`: more supplementary groups (names or gids).
    pub group_add: Vec<String>,
    pub tty: bool,
    pub network: Network,
    pub limits: Limits,
}

/// `--memory`, `--cpus`, `--pids-limit`: they need a cgroup eskrun may write.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some() || self.pids.is_some()
    }
}

/// Parses Docker's memory sizes: a number with an optional b, k, m or g suffix.
pub fn parse_memory(text: &str) -> Result<i64> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let scale: i64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => bail!("invalid memory size {text:?}: use a number with b, k, m or g (e.g. 512m)"),
    };
    let n: i64 = digits.parse().map_err(|_| {
        anyhow::anyhow!("invalid memory size {text:?}: use a number with b, k, m or g (e.g. 512m)")
    })?;
    n.checked_mul(scale)
        .with_context(|| format!("memory size {text:?} is too large"))
}

/// What the container runs, after Docker's rules were applied to the image and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub hostname: String,
}

/// Applies Docker's rules: ENTRYPOINT + CMD (`--entrypoint` resets CMD, a COMMAND replaces
/// CMD), Env with PATH defaulted, `-e` overrides, HOSTNAME/HOME/TERM, WorkingDir, User.
pub fn plan(
    image: &ImageConfiguration,
    layers: &[PathBuf],
    opts: &RunOptions,
    default_hostname: &str,
) -> Result<Plan> {
    let config = image.config().clone().unwrap_or_default();
    let entrypoint = match &opts.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => config.entrypoint().clone().unwrap_or_default(),
    };
    let cmd = if !opts.command.is_empty() {
        opts.command.clone()
    } else if opts.entrypoint.is_some() {
        vec![]
    } else {
        config.cmd().clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!(
            "no command given and the image has no ENTRYPOINT or CMD: add one after the image name"
        );
    }

    let user_spec = opts
        .user
        .clone()
        .or_else(|| config.user().clone())
        .unwrap_or_default();
    let mut user = user::resolve(&user_spec, layers)?;
    for gid in user::resolve_groups(&opts.group_add, layers)? {
        if gid != user.gid && !user.additional_gids.contains(&gid) {
            user.additional_gids.push(gid);
        }
    }
    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| default_hostname.to_string());

    let mut env: Vec<String> = Vec::new();
    let set = |env: &mut Vec<String>, kv: String| {
        let key = kv.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    set(&mut env, format!("PATH={DEFAULT_PATH}"));
    set(&mut env, format!("HOSTNAME={hostname}"));
    for kv in config.env().iter().flatten().chain(&opts.env) {
        set(&mut env, kv.clone());
    }
    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        set(&mut env, "TERM=xterm".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        set(&mut env, format!("HOME={}", user.home));
    }

    let cwd = opts
        .workdir
        .clone()
        .or_else(|| config.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        bail!("the working directory {cwd:?} must be an absolute path");
    }
    Ok(Plan {
        args,
        env,
        cwd,
        user,
        hostname,
    })
}

/// Expands `-e K` (from eskrun's environment; dropped when unset, as Docker does) and reads
/// `--env-file` files (`K=V` or `K` lines, `#` comments).
pub fn collect_env(env_files: &[PathBuf], env_args: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut push = |item: &str| {
        if item.contains('=') {
            out.push(item.to_string());
        } else if let Ok(v) = std::env::var(item) {
            out.push(format!("{item}={v}"));
        }
    };
    for file in env_files {
        let text = fs_err::read_to_string(file).context("reading --env-file")?;
        for line in text
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            push(line);
        }
    }
    for item in env_args {
        if item.is_empty() || item.starts_with('=') {
            bail!("invalid environment variable {item:?}: expected KEY=VALUE or KEY");
        }
        push(item);
    }
    Ok(out)
}

/// What the host side decided, which the spec must follow.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    /// eskrun runs in its own user namespace (so sysfs needs a bind, ids may be unmapped).
    pub rootless: bool,
    /// setgroups(2) works (not denied in eskrun's user namespace).
    pub can_setgroups: bool,
    /// Container gids that exist in eskrun's user namespace (all, when `None`).
    pub mapped_gids: Option<Vec<(u32, u32)>>,
    /// The mounted overlay that becomes `/`.
    pub rootfs: &'a Path,
    /// Absolute cgroups path, unique per container.
    pub cgroups_path: String,
    /// The network namespace to join (a path), when not the host's.
    pub netns: Option<String>,
    /// Files bind-mounted over /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_files: &'a [(PathBuf, &'static str)],
}

/// Docker's default capability set (oci-spec's default is too small for `chown` and friends).
const DOCKER_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the OCI runtime spec. No user namespace in it (eskrun is already in its own), no
/// `linux.resources` (limits fail without a delegated cgroup), rlimits inherited.
pub fn to_oci(plan: &Plan, opts: &RunOptions, host: &Host) -> Result<Spec> {
    let gid_mapped = |g: u32| {
        host.mapped_gids
            .as_ref()
            .is_none_or(|m| m.iter().any(|(start, len)| g >= *start && g - start < *len))
    };
    let caps: HashSet<Capability> = DOCKER_CAPS.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let mut groups: Vec<u32> = plan
        .user
        .additional_gids
        .iter()
        .copied()
        .filter(|g| gid_mapped(*g))
        .collect();
    // An empty list leaves eskrun's own supplementary groups to the container: name the
    // primary group so they are replaced, where setgroups is allowed at all.
    if groups.is_empty() && host.can_setgroups {
        groups.push(plan.user.gid);
    }
    let user = UserBuilder::default()
        .uid(plan.user.uid)
        .gid(plan.user.gid)
        .additional_gids(groups)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(opts.tty)
        .args(plan.args.clone())
        .env(plan.env.clone())
        .cwd(plan.cwd.clone())
        .user(user)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;
    let mut process = process;
    process.set_rlimits(None);

    let ns = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ];
    let mut namespaces = ns
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if let Some(path) = &host.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&host.cgroups_path))
        .masked_paths(MASKED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?;
    // The builder starts from Linux::default(), which has (empty) resources.
    linux.set_resources(None);
    if opts.limits.any() {
        let l = opts.limits;
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(m) = l.memory {
            resources = resources.memory(LinuxMemoryBuilder::default().limit(m).build()?);
        }
        if let Some(c) = l.cpus {
            if c.is_nan() || c <= 0.0 {
                bail!("--cpus must be more than 0");
            }
            const PERIOD: u64 = 100_000;
            let quota = (c * PERIOD as f64).round() as i64;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(PERIOD)
                    .build()?,
            );
        }
        if let Some(p) = l.pids {
            resources = resources.pids(LinuxPidsBuilder::default().limit(p).build()?);
        }
        linux.set_resources(Some(resources.build()?));
    }

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
    ];
    // devpts' gid=5 is refused when gid 5 (tty) is not mapped.
    let mut pts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if gid_mapped(5) {
        pts.push("gid=5");
    }
    mounts.push(mount("/dev/pts", "devpts", "devpts", &pts)?);
    mounts.push(mount(
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    )?);
    mounts.push(mount(
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    )?);
    if host.rootless && opts.network == Network::Host {
        // sysfs can only be mounted by the owner of the network namespace: eskrun's user
        // namespace owns a new one, not the host's.
        mounts.push(mount(
            "/sys",
            "none",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        )?);
    } else {
        mounts.push(mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?);
    }
    for (file, dst) in host.etc_files {
        // Read-only with the root, as Docker has them.
        let ro = if opts.read_only { "ro" } else { "rw" };
        mounts.push(mount(
            dst,
            "bind",
            &file.to_string_lossy(),
            &["rbind", "rprivate", ro],
        )?);
    }
    for m in &opts.mounts {
        mounts.push(match m {
            UserMount::Bind {
                source,
                destination,
                readonly,
            } => {
                let mut o = vec!["rbind", "rprivate"];
                if *readonly {
                    o.push("ro");
                }
                mount(destination, "bind", &source.to_string_lossy(), &o)?
            }
            UserMount::Tmpfs {
                destination,
                options,
            } => {
                let mut o: Vec<&str> = vec!["nosuid", "nodev", "noexec"];
                o.extend(options.iter().map(String::as_str));
                mount(destination, "tmpfs", "tmpfs", &o)?
            }
        });
    }

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(host.rootfs)
                .readonly(opts.read_only)
                .build()?,
        )
        .hostname(plan.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

fn mount(dst: &str, typ: &str, src: &str, options: &[&str]) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    fn image(
        entrypoint: &[&str],
        cmd: &[&str],
        env: &[&str],
        workdir: &str,
        user: &str,
    ) -> ImageConfiguration {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut c = ConfigBuilder::default()
            .env(v(env))
            .working_dir(workdir)
            .user(user);
        if !entrypoint.is_empty() {
            c = c.entrypoint(v(entrypoint));
        }
        if !cmd.is_empty() {
            c = c.cmd(v(cmd));
        }
        ImageConfigurationBuilder::default()
            .config(c.build().unwrap())
            .build()
            .unwrap()
    }

    fn opts(entrypoint: Option<&str>, command: &[&str]) -> RunOptions {
        RunOptions {
            entrypoint: entrypoint.map(str::to_string),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn entrypoint_and_cmd_rules() {
        let img = image(&["/ep", "a"], &["c1", "c2"], &[], "", "");
        let args = |o: RunOptions| plan(&img, &[], &o, "h").unwrap().args;
        assert_eq!(args(opts(None, &[])), ["/ep", "a", "c1", "c2"]);
        assert_eq!(args(opts(None, &["x", "y"])), ["/ep", "a", "x", "y"]);
        assert_eq!(args(opts(Some("/other"), &[])), ["/other"]);
        assert_eq!(args(opts(Some("/other"), &["z"])), ["/other", "z"]);
        assert_eq!(args(opts(Some(""), &["sh"])), ["sh"]);
        let err = plan(&img, &[], &opts(Some(""), &[]), "h")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no command given"), "{err}");
        let cmd_only = image(&[], &["sh"], &[], "", "");
        assert_eq!(
            plan(&cmd_only, &[], &opts(None, &["ls"]), "h")
                .unwrap()
                .args,
            ["ls"]
        );
    }

    #[test]
    fn env_workdir_hostname() {
        let img = image(&[], &["sh"], &["A=1", "B=2"], "/srv", "");
        let mut o = opts(None, &[]);
        o.env = vec!["B=3".into(), "C=4".into()];
        o.tty = true;
        let p = plan(&img, &[], &o, "abc").unwrap();
        assert_eq!(
            p.env,
            [
                &format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=abc",
                "A=1",
                "B=3",
                "C=4",
                "TERM=xterm",
                "HOME=/"
            ]
        );
        assert_eq!(p.cwd, "/srv");
        let img = image(&[], &["sh"], &["PATH=/x"], "", "");
        o.hostname = Some("named".into());
        o.workdir = Some("/w".into());
        let p = plan(&img, &[], &o, "abc").unwrap();
        assert_eq!(p.env[0], "HOSTNAME=named");
        assert!(p.env.contains(&"PATH=/x".to_string()));
        assert_eq!((p.cwd.as_str(), p.hostname.as_str()), ("/w", "named"));
        o.workdir = Some("rel".into());
        assert!(plan(&img, &[], &o, "abc").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("2GB").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1k").unwrap(), 1024);
        assert!(parse_memory("12x").is_err());
        assert!(parse_memory("m").is_err());
    }

    #[test]
    fn env_from_host_and_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("env");
        std::fs::write(&f, "# comment\nX=1\n\nESKRUN_TEST_UNSET_VAR\n").unwrap();
        let env = collect_env(&[f], &["PATH".into(), "Y=2".into()]).unwrap();
        assert_eq!(env[0], "X=1");
        assert!(env[1].starts_with("PATH=/"));
        assert_eq!(env[2], "Y=2");
        assert_eq!(env.len(), 3);
        assert!(collect_env(&[], &["=x".into()]).is_err());
    }

    #[test]
    fn oci_spec_defaults() {
        let img = image(&[], &["sh"], &[], "", "");
        let o = opts(None, &[]);
        let p = plan(&img, &[], &o, "h").unwrap();
        let host = Host {
            rootless: true,
            can_setgroups: false,
            mapped_gids: Some(vec![(0, 1)]),
            rootfs: Path::new("/r"),
            cgroups_path: "/eskrun/x".into(),
            netns: None,
            etc_files: &[],
        };
        let spec = to_oci(&p, &o, &host).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.resources().is_none());
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/eskrun/x"))
        );
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(
            !ns.contains(&LinuxNamespaceType::User) && !ns.contains(&LinuxNamespaceType::Network)
        );
        let mounts = spec.mounts().as_ref().unwrap();
        let pts = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/dev/pts"))
            .unwrap();
        assert!(!pts
            .options()
            .as_ref()
            .unwrap()
            .contains(&"gid=5".to_string()));
        let sys = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("none"));
    }
}
