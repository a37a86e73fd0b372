//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) started on a free
//! 127.0.0.1 port in a temporary directory, in one of four modes (plain HTTP, TLS with a test
//! CA, htpasswd basic auth, bearer tokens from a token server of our own), plus a proxy that
//! can put failures in front of it. Everything is removed/killed on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::HeaderValue;

pub use super::layers::sha256;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The user the basic-auth and token-auth registries know, and the one allowed to push.
pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret pass";
/// The refresh token the token server accepts for [`USER`] (Docker's `identitytoken`).
pub const IDENTITY_TOKEN: &str = "refresh-token-for-tester";
/// In token mode, repositories under this prefix need credentials even to pull.
pub const PRIVATE_PREFIX: &str = "private/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tls,
    Basic,
    Token,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A test CA and a server certificate it signed, for localhost and 127.0.0.1 (rustls
/// refuses a self-signed CA certificate used as the server's own).
fn make_tls_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.join("ca.key"),
        dir.join("ca.crt"),
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.crt"),
        dir.join("server.ext"),
    );
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=eskrun test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}

/// A running `docker-registry`.
pub struct TestRegistry {
    pub mode: Mode,
    /// `127.0.0.1:PORT`, the registry part of references.
    pub host: String,
    /// The test CA (TLS mode): trust it through a `certs.d` directory.
    pub ca: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Child,
    token_server: Option<TokenServer>,
}

impl TestRegistry {
    pub fn start(mode: Mode) -> TestRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = (mode == Mode::Tls).then(|| make_tls_certs(dir.path()));
        let token_server = (mode == Mode::Token).then(|| TokenServer::start(dir.path()));
        let mut auth = String::new();
        if mode == Mode::Basic {
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success());
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: eskrun-test\n    path: {}\n",
                path.display()
            );
        }
        if let Some(ts) = &token_server {
            auth = format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                ts.addr,
                TOKEN_SERVICE,
                TOKEN_ISSUER,
                ts.cert.display()
            );
        }
        let tls = match &ca {
            Some((_, cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        // Another process may take the port between our probe and the registry's bind:
        // then start again on another one.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: eskrun-test-secret\n{tls}{auth}",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start /usr/bin/docker-registry (Debian package docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(20);
            let up = loop {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break true;
                }
                assert!(Instant::now() < deadline, "registry did not start");
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                return TestRegistry {
                    mode,
                    host: format!("127.0.0.1:{port}"),
                    ca: ca.map(|(ca, _, _)| ca),
                    dir,
                    child,
                    token_server,
                };
            }
        }
        panic!(
            "docker-registry would not start: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.host.parse().unwrap()
    }

    /// A scratch directory that lives as long as the registry.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An oci-client that may push here (as [`USER`] where auth is on).
    async fn pusher(&self, repo: &str) -> (oci_client::Client, Reference) {
        let config = ClientConfig {
            protocol: match self.mode {
                Mode::Tls => ClientProtocol::Https,
                _ => ClientProtocol::Http,
            },
            extra_root_certificates: self
                .ca
                .iter()
                .map(|ca| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: std::fs::read(ca).unwrap(),
                })
                .collect(),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config).unwrap();
        let reference: Reference = format!("{}/{repo}:push", self.host).parse().unwrap();
        let auth = match self.mode {
            Mode::Basic | Mode::Token => RegistryAuth::Basic(USER.into(), PASSWORD.into()),
            _ => RegistryAuth::Anonymous,
        };
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .expect("authenticate to push");
        (client, reference)
    }

    /// Uploads a blob; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let (client, reference) = self.pusher(repo).await;
        let digest = sha256(data);
        client
            .push_blob(&reference, data.to_vec(), &digest)
            .await
            .expect("push blob");
        digest
    }

    /// Uploads a manifest under `tag_or_digest` as it is, with `media_type` as its
    /// Content-Type; returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        tag_or_digest: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let (client, _) = self.pusher(repo).await;
        let reference: Reference = if tag_or_digest.starts_with("sha256:") {
            format!("{}/{repo}@{tag_or_digest}", self.host)
        } else {
            format!("{}/{repo}:{tag_or_digest}", self.host)
        }
        .parse()
        .unwrap();
        client
            .push_manifest_raw(
                &reference,
                body.to_vec(),
                HeaderValue::from_str(media_type).unwrap(),
            )
            .await
            .expect("push manifest");
        sha256(body)
    }

    /// Pushes a single-platform image and tags it (`tag` may also be a digest-less name
    /// such as "latest").
    pub async fn push_image(&self, repo: &str, tag: &str, image: &ImageSpec) -> PushedImage {
        let mut config = serde_json::json!({
            "architecture": image.architecture,
            "os": "linux",
            "config": image.config,
            "rootfs": {
                "type": "layers",
                "diff_ids": image.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        });
        if let Some(variant) = &image.variant {
            config["variant"] = variant.as_str().into();
        }
        let config_raw = serde_json::to_vec(&config).unwrap();
        let config_type = match image.format {
            Format::Docker => DOCKER_CONFIG,
            Format::Oci | Format::OciNoMediaType => OCI_CONFIG,
        };
        let config_digest = self.push_blob(repo, &config_raw).await;
        let mut layers = Vec::new();
        for layer in &image.layers {
            let digest = self.push_blob(repo, &layer.blob).await;
            layers.push(serde_json::json!({
                "mediaType": layer.media_type(image.format),
                "digest": digest,
                "size": layer.blob.len(),
            }));
        }
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config_raw.len()},
            "layers": layers,
        });
        let media_type = match image.format {
            Format::Docker => DOCKER_MANIFEST,
            Format::Oci | Format::OciNoMediaType => OCI_MANIFEST,
        };
        if image.format != Format::OciNoMediaType {
            manifest["mediaType"] = media_type.into();
        }
        let manifest_raw = serde_json::to_vec_pretty(&manifest).unwrap();
        let manifest_digest = self
            .push_manifest(repo, tag, media_type, &manifest_raw)
            .await;
        PushedImage {
            manifest_digest,
            manifest_raw,
            media_type: media_type.to_string(),
            config_digest,
            config_raw,
            layer_digests: image.layers.iter().map(|l| sha256(&l.blob)).collect(),
        }
    }

    /// Pushes a manifest list (Docker) or an index (OCI) of images already pushed, each with
    /// its `os/arch[/variant]`, and tags it. Returns its digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        docker: bool,
        entries: &[(&str, &PushedImage)],
    ) -> String {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(platform, image)| {
                let parts: Vec<&str> = platform.split('/').collect();
                let mut platform = serde_json::json!({"os": parts[0], "architecture": parts[1]});
                if let Some(variant) = parts.get(2) {
                    platform["variant"] = (*variant).into();
                }
                serde_json::json!({
                    "mediaType": image.media_type,
                    "digest": image.manifest_digest,
                    "size": image.manifest_raw.len(),
                    "platform": platform,
                })
            })
            .collect();
        let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media_type, "manifests": manifests,
        }))
        .unwrap();
        self.push_manifest(repo, tag, media_type, &body).await
    }

    /// Changes one byte of a stored blob, keeping its size: the registry then serves content
    /// that does not match its digest.
    pub fn tamper_blob(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = self
            .dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut data = std::fs::read(&path).expect("stored blob");
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, data).unwrap();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`TestRegistry::push_image`] builds. The test layers' digests are what the registry
/// knows; diff_ids come from the uncompressed tar.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub format: Format,
    pub architecture: String,
    pub variant: Option<String>,
    /// The image config's `config` object (Env, Entrypoint, Cmd, User, WorkingDir, ...).
    pub config: serde_json::Value,
    pub layers: Vec<Layer>,
}

impl ImageSpec {
    /// An amd64 image whose layers are uncompressed blobs (the registry does not look
    /// inside them; use [`ImageSpec::with_layers`] for compressed tar layers).
    pub fn new(format: Format, layers: Vec<Vec<u8>>) -> ImageSpec {
        Self::with_layers(format, layers.into_iter().map(Layer::plain).collect())
    }

    pub fn with_layers(format: Format, layers: Vec<Layer>) -> ImageSpec {
        ImageSpec {
            format,
            architecture: "amd64".into(),
            variant: None,
            config: serde_json::json!({"Cmd": ["/bin/sh"]}),
            layers,
        }
    }

    /// `amd64`, or with a variant: `arm64/v8`.
    pub fn arch(mut self, architecture: &str) -> ImageSpec {
        let (arch, variant) = match architecture.split_once('/') {
            Some((arch, variant)) => (arch, Some(variant.to_string())),
            None => (architecture, None),
        };
        self.architecture = arch.into();
        self.variant = variant;
        self
    }

    pub fn config(mut self, config: serde_json::Value) -> ImageSpec {
        self.config = config;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer blob as pushed, with the digest of its uncompressed tar (the config's diff_id).
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub compression: Compression,
    /// Replaces the media type chosen from the format and compression (foreign layers...).
    pub media_type: Option<String>,
}

impl Layer {
    /// An uncompressed layer.
    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            diff_id: sha256(&tar),
            blob: tar,
            compression: Compression::None,
            media_type: None,
        }
    }

    pub fn gzip(tar: &[u8]) -> Layer {
        Layer {
            blob: super::layers::gzip(tar),
            diff_id: sha256(tar),
            compression: Compression::Gzip,
            media_type: None,
        }
    }

    pub fn zstd(tar: &[u8]) -> Layer {
        Layer {
            blob: super::layers::zstd(tar),
            diff_id: sha256(tar),
            compression: Compression::Zstd,
            media_type: None,
        }
    }

    pub fn media_type_override(mut self, media_type: &str) -> Layer {
        self.media_type = Some(media_type.into());
        self
    }

    /// Docker has no zstd media type: images built by BuildKit use OCI's, as here.
    fn media_type(&self, format: Format) -> String {
        if let Some(media_type) = &self.media_type {
            return media_type.clone();
        }
        match (format, self.compression) {
            (Format::Docker, Compression::None) => DOCKER_LAYER_TAR,
            (Format::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (_, Compression::Zstd) => OCI_LAYER_ZSTD,
            (_, Compression::None) => OCI_LAYER_TAR,
            (_, Compression::Gzip) => OCI_LAYER_GZIP,
        }
        .to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
    /// An OCI manifest without its optional `mediaType` field.
    OciNoMediaType,
}

#[derive(Clone, Debug)]
pub struct PushedImage {
    pub manifest_digest: String,
    pub manifest_raw: Vec<u8>,
    pub media_type: String,
    pub config_digest: String,
    pub config_raw: Vec<u8>,
    /// The layers' blob digests, in order.
    pub layer_digests: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Minimal HTTP/1.1 for the token server and the proxy (one request per connection).

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The head as received, to forward.
    raw_head: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request. `None` on EOF or on a TLS ClientHello (answered with a 400, as Go's
/// server does, so that a client probing for TLS learns this is plain HTTP).
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    if reader.fill_buf().ok()?.first() == Some(&0x16) {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        return None;
    }
    let mut raw_head = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        raw_head.extend_from_slice(line.as_bytes());
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut request_line = lines.first()?.split_whitespace();
    let (method, target) = (
        request_line.next()?.to_string(),
        request_line.next()?.to_string(),
    );
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
        raw_head,
    })
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn query_params(target: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Accepts connections on a thread, one handler thread per connection, until dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                std::thread::spawn(move || handler(stream));
            }
        });
        Server { addr, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and ends.
        let _ = TcpStream::connect(self.addr);
    }
}

// ---------------------------------------------------------------------------------------
// Token server: Docker's token protocol, RS256 JWTs signed with the openssl CLI.

const TOKEN_SERVICE: &str = "eskrun-test-registry";
const TOKEN_ISSUER: &str = "eskrun-test-issuer";

struct TokenServer {
    addr: SocketAddr,
    cert: PathBuf,
    _server: Server,
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        let (key, cert) = (dir.join("token.key"), dir.join("token.crt"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=eskrun test token signer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = {
            let out = Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert)
                .output()
                .unwrap();
            assert!(out.status.success());
            out.stdout
        };
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let server = Server::start(move |mut stream| {
            if let Some(request) = read_request(&mut stream) {
                token_reply(&mut stream, &request, &key, &x5c);
            }
        });
        TokenServer {
            addr: server.addr,
            cert,
            _server: server,
        }
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn token_reply(stream: &mut TcpStream, request: &Request, key: &Path, x5c: &str) {
    let mut params = query_params(&request.target);
    if request.method == "POST" {
        params.extend(query_params(&format!(
            "/?{}",
            String::from_utf8_lossy(&request.body)
        )));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // Who is asking: basic auth, a refresh token, or nobody.
    let basic = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let user = match (basic, param("grant_type").as_deref()) {
        (Some(pair), _) if pair == format!("{USER}:{PASSWORD}") => Some(USER),
        (Some(_), _) => return respond(stream, 401, &[], b"{\"details\":\"bad credentials\"}"),
        (None, Some("refresh_token"))
            if param("refresh_token").as_deref() == Some(IDENTITY_TOKEN) =>
        {
            Some(USER)
        }
        (None, Some(_)) => {
            return respond(stream, 401, &[], b"{\"details\":\"bad refresh token\"}")
        }
        (None, None) => None,
    };
    let mut access = Vec::new();
    for (_, scope) in params.iter().filter(|(k, _)| k == "scope") {
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| match user {
                Some(_) => true,
                None => *a == "pull" && !name.starts_with(PRIVATE_PREFIX),
            })
            .collect();
        access.push(serde_json::json!({"type": "repository", "name": name, "actions": granted}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": user.unwrap_or(""), "aud": TOKEN_SERVICE,
        "exp": now + 600, "nbf": now - 60, "iat": now - 60,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut openssl = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let signature = openssl.wait_with_output().unwrap().stdout;
    let token = format!("{signing_input}.{}", b64url(&signature));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 600});
    respond(
        stream,
        200,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
}

// ---------------------------------------------------------------------------------------
// Fault-injecting proxy.

/// What the proxy does to the next request whose path contains `path`.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status, headers and body instead of asking the registry.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Forward, but close the connection after this many bytes of the response body.
    CutAfter(usize),
    /// Forward this many bytes of the response body, then send nothing more for a minute
    /// while keeping the connection open: a transfer that hangs, to kill a client mid-pull.
    StallAfter(usize),
}

/// A plain-HTTP proxy in front of a plain-HTTP registry that applies queued faults. It also
/// serves as an HTTP(S) proxy for clients configured with `HTTP_PROXY`/`HTTPS_PROXY`
/// (absolute-form requests and `CONNECT` tunnels), logging what went through it.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`: use it as the registry part of references.
    pub host: String,
    faults: Arc<Mutex<VecDeque<(String, Fault)>>>,
    /// The paths of the requests seen, in order ("GET /v2/..."), to check what happened.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Beside each request of `log`, the scheme of its `Authorization` ("Bearer"), or "".
    schemes: Arc<Mutex<Vec<String>>>,
    _server: Server,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let faults: Arc<Mutex<VecDeque<(String, Fault)>>> = Default::default();
        let log: Arc<Mutex<Vec<String>>> = Default::default();
        let schemes: Arc<Mutex<Vec<String>>> = Default::default();
        let (f, l, sc) = (faults.clone(), log.clone(), schemes.clone());
        let server = Server::start(move |mut client| {
            let Some(request) = read_request(&mut client) else {
                return;
            };
            let scheme = request.header("authorization").unwrap_or("");
            sc.lock()
                .unwrap()
                .push(scheme.split(' ').next().unwrap_or("").to_string());
            l.lock().unwrap().push(format!(
                "{} {} {}",
                request.method,
                request.target,
                request.header("range").unwrap_or("")
            ));
            if request.method == "CONNECT" {
                return tunnel(client, &request.target);
            }
            let fault = {
                let mut faults = f.lock().unwrap();
                let pos = faults
                    .iter()
                    .position(|(path, _)| request.target.contains(path.as_str()));
                pos.and_then(|i| faults.remove(i)).map(|(_, fault)| fault)
            };
            match fault {
                Some(Fault::Respond {
                    status,
                    headers,
                    body,
                }) => {
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let body = if request.method == "HEAD" {
                        &[][..]
                    } else {
                        &body
                    };
                    respond(&mut client, status, &headers, body);
                }
                Some(Fault::CutAfter(n)) => forward(&mut client, &request, upstream, Some(n)),
                Some(Fault::StallAfter(n)) => {
                    forward_then(&mut client, &request, upstream, Some(n), || {
                        std::thread::sleep(Duration::from_secs(60))
                    })
                }
                None => forward(&mut client, &request, upstream, None),
            }
        });
        FaultProxy {
            host: server.addr.to_string(),
            faults,
            log,
            schemes,
            _server: server,
        }
    }

    /// Queues a fault for the next request whose path contains `path`.
    pub fn inject(&self, path: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .push_back((path.to_string(), fault));
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The `Authorization` schemes of the requests whose log line starts with `prefix`.
    pub fn authorization(&self, prefix: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        let schemes = self.schemes.lock().unwrap();
        log.iter()
            .zip(schemes.iter())
            .filter(|(line, _)| line.starts_with(prefix))
            .map(|(_, scheme)| scheme.clone())
            .collect()
    }
}

/// Forwards one request and its answer, with `Connection: close` on both sides; with `cut`,
/// closes after that many body bytes.
fn forward(client: &mut TcpStream, request: &Request, upstream: SocketAddr, cut: Option<usize>) {
    forward_then(client, request, upstream, cut, || {})
}

/// [`forward`], calling `before_close` once the body (or its cut part) has been sent.
fn forward_then(
    client: &mut TcpStream,
    request: &Request,
    upstream: SocketAddr,
    cut: Option<usize>,
    before_close: impl FnOnce(),
) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return respond(client, 502, &[], b"upstream down");
    };
    let head = String::from_utf8_lossy(&request.raw_head);
    let mut head: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    head.push_str("Connection: close\r\n\r\n");
    if server.write_all(head.as_bytes()).is_err() || server.write_all(&request.body).is_err() {
        return;
    }
    let mut reader = BufReader::new(server);
    let mut response_head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line.trim_end().is_empty() {
            break;
        }
        if !line.to_ascii_lowercase().starts_with("connection:") {
            response_head.push_str(&line);
        }
    }
    response_head.push_str("Connection: close\r\n\r\n");
    if client.write_all(response_head.as_bytes()).is_err() {
        return;
    }
    let mut remaining = cut.unwrap_or(usize::MAX);
    let mut buf = [0u8; 16 * 1024];
    while remaining > 0 {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(remaining),
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        remaining -= n;
    }
    let _ = client.flush();
    before_close();
    let _ = client.shutdown(Shutdown::Both);
}

/// A `CONNECT host:port` tunnel: bytes copied both ways until either side closes.
fn tunnel(mut client: TcpStream, target: &str) {
    let Ok(server) = TcpStream::connect(target) else {
        return respond(&mut client, 502, &[], b"cannot connect");
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (mut client_in, mut server_out) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let upload = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let _ = std::io::copy(&mut server_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = upload.join();
}
