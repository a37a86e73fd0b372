//! Benchmark of eskrun's port forwarder: throughput and connection latency through a published
//! port into a network namespace, beside the same measurements over the host's own loopback in
//! the same run. Run it through `bench/forward.sh` (root, or any user allowed `unshare -Urn`).
//!
//! The same binary is the server on both paths (`forward_bench server PORT`), so the only
//! difference between the two rows is the forwarder.

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
    let mib: u64 = match args.get(1) {
        Some(n) => n
            .parse()
            .context("usage: forward_bench [MIB_PER_RUN [CONNECTIONS]]")?,
        None => 2048,
    };
    let connects: usize = match args.get(2) {
        Some(n) => n
            .parse()
            .context("usage: forward_bench [MIB_PER_RUN [CONNECTIONS]]")?,
        None => 2000,
    };

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

    println!("{mib} MiB per throughput run (best of 3), {connects} connections for latency");
    println!(
        "{:<10} {:>12} {:>16} {:>16}",
        "path", "Gbit/s", "connect+RTT p50", "p99"
    );
    let mut rows = Vec::new();
    for (name, addr) in [("loopback", direct_addr), ("forwarded", forwarded_addr)] {
        let gbits = (0..3)
            .map(|_| throughput(addr, mib << 20))
            .collect::<Result<Vec<f64>>>()?
            .into_iter()
            .fold(0.0, f64::max);
        let mut times = (0..connects)
            .map(|_| connect_round_trip(addr))
            .collect::<Result<Vec<Duration>>>()?;
        times.sort();
        let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
        println!(
            "{name:<10} {gbits:>12.2} {:>13.0} us {:>13.0} us",
            micros(p50),
            micros(p99)
        );
        rows.push((gbits, p50));
    }
    println!(
        "forwarded/loopback throughput: {:.0}%, added connection latency: {:.0} us",
        100.0 * rows[1].0 / rows[0].0,
        micros(rows[1].1) - micros(rows[0].1)
    );
    running.stop();
    child.kill()?;
    child.wait()?;
    Ok(())
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
