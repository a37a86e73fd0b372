//! Benchmark of eskrun's port forwarder: throughput and connection latency through a published
//! port into a network namespace, beside the same measurements over the host's own loopback in
//! the same run. Run it through `bench/forward.sh` (root, or any user allowed `unshare -Urn`).
//!
//! The same binary is the server on both paths (`forward_bench server PORT`), so the only
//! difference between the two rows is the forwarder. The machine is shared: throughput runs
//! alternate the two paths, and the median and range of each are printed with the load.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eskrun::network::{Forwarder, PortMapping, Protocol};

const SERVER_PORT: u16 = 5201;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("server") {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, SERVER_PORT))?;
        println!("ready");
        return serve(listener);
    }
    let number = |i: usize, default: usize| -> Result<usize> {
        match args.get(i) {
            Some(n) => n
                .parse()
                .context("usage: forward_bench [MIB_PER_RUN [CONNECTIONS [ROUNDS]]]"),
            None => Ok(default),
        }
    };
    let (mib, connects, rounds) = (number(1, 2048)? as u64, number(2, 2000)?, number(3, 7)?);

    let direct = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let direct_addr = direct.local_addr()?;
    std::thread::spawn(move || serve(direct));

    // The server in its own network namespace, as a container's would be.
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--map-root-user",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
        ])
        .arg(std::env::current_exe()?)
        .arg("server")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run unshare")?;
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        bail!("the server in the network namespace did not start");
    }
    let netns = File::open(format!("/proc/{}/ns/net", child.id()))?;
    let mapping = PortMapping {
        host_ip: Some(Ipv4Addr::LOCALHOST.into()),
        host_port: 0,
        container_port: SERVER_PORT,
        protocol: Protocol::Tcp,
    };
    let forwarder = Forwarder::bind(&[mapping])?;
    let forwarded_addr =
        SocketAddr::from((Ipv4Addr::LOCALHOST, forwarder.published()[0].host_port));
    let running = forwarder.serve(netns.into())?;

    let load = loadavg();
    // Each round runs both paths, in turns (and each first in turn), so that a change of load
    // during the run touches both alike.
    let addrs = [direct_addr, forwarded_addr];
    let mut gbits = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in [round % 2, 1 - round % 2] {
            gbits[k].push(throughput(addrs[k], mib << 20)?);
        }
    }
    println!("{rounds} rounds of {mib} MiB per path, {connects} connections for latency");
    println!(
        "{:<10} {:>24} {:>16} {:>9}",
        "path", "Gbit/s median (range)", "connect+RTT p50", "p99"
    );
    let mut rows = Vec::new();
    for (k, name) in ["loopback", "forwarded"].into_iter().enumerate() {
        let runs = &mut gbits[k];
        runs.sort_by(f64::total_cmp);
        let median = runs[runs.len() / 2];
        let mut times = (0..connects)
            .map(|_| connect_round_trip(addrs[k]))
            .collect::<Result<Vec<Duration>>>()?;
        times.sort();
        let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
        println!(
            "{name:<10} {median:>9.1} ({:>5.1} - {:>5.1}) {:>13.0} us {:>6.0} us",
            runs[0],
            runs[runs.len() - 1],
            micros(p50),
            micros(p99)
        );
        rows.push((median, p50));
    }
    println!(
        "forwarded/loopback throughput: {:.0}% (medians), added connection latency: {:.0} us",
        100.0 * rows[1].0 / rows[0].0,
        micros(rows[1].1) - micros(rows[0].1)
    );
    println!("load average before: {load}, after: {}", loadavg());
    running.stop();
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews the figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sends `bytes` on one connection and waits for the server's count: Gbit/s.
fn throughput(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let buf = vec![0x5a; 1 << 20];
    let mut stream = TcpStream::connect(addr)?;
    let start = Instant::now();
    stream.write_all(b"S")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let elapsed = start.elapsed();
    if u64::from_le_bytes(count) != bytes {
        bail!(
            "the server counted {} bytes, {bytes} were sent",
            u64::from_le_bytes(count)
        );
    }
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// A new connection and one request/response byte: what a browser pays per request.
fn connect_round_trip(addr: SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(b"P")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    Ok(start.elapsed())
}

/// First byte `S`: count bytes until EOF and reply with the count; `P`: reply one byte.
fn serve(listener: TcpListener) -> Result<()> {
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || -> Result<()> {
            stream.set_nodelay(true)?;
            let mut mode = [0u8; 1];
            stream.read_exact(&mut mode)?;
            if mode[0] == b'P' {
                return Ok(stream.write_all(b"p")?);
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            Ok(stream.write_all(&total.to_le_bytes())?)
        });
    }
    Ok(())
}
