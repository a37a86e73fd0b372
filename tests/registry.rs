//! The registry client against a real registry (Debian's docker-registry) in each mode:
//! plain HTTP, TLS with a CA from certs.d, basic auth, token auth, and with a proxy in front
//! that injects 5xx/429 answers, legacy manifests and broken transfers.

mod common;

use std::path::{Path, PathBuf};

use common::registry::*;
use eskrun::config::Config;
use eskrun::reference::ImageRef;
use eskrun::registry::{DockerConfig, Options, Platform, RegistryClient, RegistryError};
use futures_util::StreamExt;
use oci_client::manifest::OciDescriptor;

/// Options that read nothing of this machine's user: config, certs.d and docker config all
/// in `dir`.
fn options(dir: &Path) -> Options {
    Options {
        config: Config::default(),
        certs_dirs: vec![dir.join("certs.d")],
        docker: DockerConfig {
            path: dir.join("docker/config.json"),
            helper_path: std::env::var_os("PATH").unwrap_or_default(),
        },
        insecure: false,
    }
}

fn client(dir: &Path) -> RegistryClient {
    RegistryClient::new(options(dir))
}

fn image(host: &str, name: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/{name}")).unwrap()
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// Layer-like content: distinct, not compressible, deterministic.
fn layer(seed: u8, len: usize) -> Vec<u8> {
    common::layers::noise(u32::from(seed), len)
}

async fn read_blob(
    client: &RegistryClient,
    image: &ImageRef,
    digest: &str,
    size: usize,
) -> Vec<u8> {
    let desc = OciDescriptor {
        digest: digest.to_string(),
        size: size as i64,
        ..Default::default()
    };
    let mut stream = Box::pin(client.blob_stream(image, &desc));
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("blob stream: {e}")));
    }
    out
}

fn write_docker_config(dir: &Path, json: serde_json::Value) {
    std::fs::create_dir_all(dir.join("docker")).unwrap();
    std::fs::write(dir.join("docker/config.json"), json.to_string()).unwrap();
}

fn basic_auth_entry() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
}

#[tokio::test]
async fn plain_http_docker_image_resolves_and_streams() {
    let reg = TestRegistry::start(Mode::Plain);
    let layers = vec![layer(1, 70_000), layer(2, 1234)];
    let pushed = reg
        .push_image(
            "team/app",
            "1.0",
            &ImageSpec::new(Format::Docker, layers.clone()),
        )
        .await;
    let client = client(reg.dir());
    let img = image(&reg.host, "team/app:1.0");

    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    assert_eq!(resolved.source_digest, pushed.manifest_digest);
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    assert_eq!(resolved.manifest_raw, pushed.manifest_raw);
    assert_eq!(resolved.config_raw, pushed.config_raw);
    assert_eq!(resolved.manifest.config.digest, pushed.config_digest);
    assert_eq!(resolved.manifest.layers.len(), 2);
    assert_eq!(
        client.head_digest(&img).await.unwrap(),
        pushed.manifest_digest
    );

    for (desc, bytes) in resolved.manifest.layers.iter().zip(&layers) {
        let got = read_blob(&client, &img, &desc.digest, bytes.len()).await;
        assert!(got == *bytes, "layer {} differs", desc.digest);
    }

    // A digest reference resolves to the same thing; tag + digest: the digest wins.
    let by_digest = image(&reg.host, &format!("team/app@{}", pushed.manifest_digest));
    assert_eq!(
        client
            .resolve(&by_digest, &amd64())
            .await
            .unwrap()
            .manifest_raw,
        pushed.manifest_raw
    );
    let both = image(
        &reg.host,
        &format!("team/app:nosuchtag@{}", pushed.manifest_digest),
    );
    assert_eq!(
        client.head_digest(&both).await.unwrap(),
        pushed.manifest_digest
    );
}

#[tokio::test]
async fn oci_manifest_without_media_type() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = reg
        .push_image(
            "oci/bare",
            "v1",
            &ImageSpec::new(Format::OciNoMediaType, vec![layer(3, 500)]),
        )
        .await;
    assert!(!String::from_utf8_lossy(&pushed.manifest_raw)
        .contains("mediaType\": \"application/vnd.oci.image.manifest"));
    let resolved = client(reg.dir())
        .resolve(&image(&reg.host, "oci/bare:v1"), &amd64())
        .await
        .unwrap();
    assert_eq!(resolved.manifest.media_type, None);
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    assert_eq!(resolved.config_raw, pushed.config_raw);
}

#[tokio::test]
async fn manifest_list_and_oci_index_choose_the_platform() {
    let reg = TestRegistry::start(Mode::Plain);
    for (docker, format, repo) in [
        (true, Format::Docker, "multi/list"),
        (false, Format::Oci, "multi/index"),
    ] {
        let amd = reg
            .push_image(
                repo,
                "amd",
                &ImageSpec::new(format, vec![layer(10, 100)]).arch("amd64"),
            )
            .await;
        let arm = reg
            .push_image(
                repo,
                "arm",
                &ImageSpec::new(format, vec![layer(11, 100)]).arch("arm64/v8"),
            )
            .await;
        let index = reg
            .push_index(
                repo,
                "latest",
                docker,
                &[("linux/amd64", &amd), ("linux/arm64/v8", &arm)],
            )
            .await;
        let client = client(reg.dir());
        let img = image(&reg.host, repo);

        let got = client.resolve(&img, &amd64()).await.unwrap();
        assert_eq!(got.source_digest, index);
        assert_eq!(got.manifest_digest, amd.manifest_digest);
        assert_eq!(got.config_raw, amd.config_raw);

        let got = client
            .resolve(&img, &Platform::parse("linux/arm64/v8").unwrap())
            .await
            .unwrap();
        assert_eq!(got.source_digest, index);
        assert_eq!(got.manifest_digest, arm.manifest_digest);
        assert_eq!(got.manifest_raw, arm.manifest_raw);

        assert_eq!(client.head_digest(&img).await.unwrap(), index);

        let err = client
            .resolve(&img, &Platform::parse("linux/s390x").unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "image {}/{repo}:latest has no variant for platform linux/s390x; it has: linux/amd64, linux/arm64/v8",
                reg.host
            )
        );
    }
}

#[tokio::test]
async fn tls_registry_trusted_only_through_certs_d() {
    let reg = TestRegistry::start(Mode::Tls);
    let pushed = reg
        .push_image(
            "secure/app",
            "1",
            &ImageSpec::new(Format::Oci, vec![layer(4, 4096)]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let img = image(&reg.host, "secure/app:1");

    // Without the CA: a TLS error naming the host and where to put its CA.
    let err = client(dir.path())
        .resolve(&img, &amd64())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    let ca_path = dir.path().join("certs.d").join(&reg.host).join("ca.crt");
    assert!(
        msg.contains(&format!("TLS failure talking to {}", reg.host)),
        "{msg}"
    );
    assert!(msg.contains(&ca_path.display().to_string()), "{msg}");

    // With the CA in certs.d/HOST/: works, over HTTPS.
    std::fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    std::fs::copy(reg.ca.as_ref().unwrap(), &ca_path).unwrap();
    let client = client(dir.path());
    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    let layer_desc = &resolved.manifest.layers[0];
    assert_eq!(
        read_blob(&client, &img, &layer_desc.digest, 4096).await,
        layer(4, 4096)
    );
}

#[tokio::test]
async fn basic_auth_from_docker_config_and_denied_without() {
    let reg = TestRegistry::start(Mode::Basic);
    let pushed = reg
        .push_image(
            "locked/app",
            "1",
            &ImageSpec::new(Format::Docker, vec![layer(5, 300)]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let img = image(&reg.host, "locked/app:1");

    let msg = client(dir.path())
        .resolve(&img, &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "access to {img} denied by {0}: check the name, or run `eskrun login {0}` if it needs credentials",
            reg.host
        )
    );

    write_docker_config(
        dir.path(),
        serde_json::json!({"auths": {reg.host.clone(): {"auth": basic_auth_entry()}}}),
    );
    let client = client(dir.path());
    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    let d = &resolved.manifest.layers[0];
    assert_eq!(
        read_blob(&client, &img, &d.digest, 300).await,
        layer(5, 300)
    );
}

#[tokio::test]
async fn credentials_from_a_creds_store_helper() {
    let reg = TestRegistry::start(Mode::Basic);
    reg.push_image(
        "helped/app",
        "1",
        &ImageSpec::new(Format::Oci, vec![layer(6, 10)]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-test");
    // Answers `get` only for this registry, as helpers do; accepts `store` and `erase`;
    // logs what it was asked.
    let script = r#"#!/bin/sh
read input
echo "$1 $input" >> LOG
case "$1" in
  get) if [ "$input" = "HOST" ]; then
         echo '{"ServerURL":"HOST","Username":"USER","Secret":"PASSWORD"}'
         exit 0
       fi
       echo 'credentials not found in native keychain'
       exit 1 ;;
esac
"#;
    let script = script
        .replace("LOG", &dir.path().join("helper.log").display().to_string())
        .replace("HOST", &reg.host)
        .replace("USER", USER)
        .replace("PASSWORD", PASSWORD);
    std::fs::write(&helper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_docker_config(dir.path(), serde_json::json!({"credsStore": "test"}));

    let mut opts = options(dir.path());
    opts.docker.helper_path = std::env::join_paths(
        std::iter::once(bin.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let client = RegistryClient::new(opts);
    client
        .resolve(&image(&reg.host, "helped/app:1"), &amd64())
        .await
        .unwrap();
    let log = std::fs::read_to_string(dir.path().join("helper.log")).unwrap();
    assert!(log.contains(&format!("get {}", reg.host)), "{log}");

    // login and logout go to the helper too, not to config.json.
    client.login(&reg.host, USER, PASSWORD).await.unwrap();
    assert!(client.logout(&reg.host).unwrap());
    let log = std::fs::read_to_string(dir.path().join("helper.log")).unwrap();
    let store = log
        .lines()
        .find(|l| l.starts_with("store "))
        .expect("store call");
    let stored: serde_json::Value = serde_json::from_str(&store["store ".len()..]).unwrap();
    assert_eq!(stored["ServerURL"], reg.host.as_str());
    assert_eq!(stored["Username"], USER);
    assert_eq!(stored["Secret"], PASSWORD);
    assert!(log.contains(&format!("erase {}", reg.host)), "{log}");
    let config = std::fs::read_to_string(dir.path().join("docker/config.json")).unwrap();
    assert!(!config.contains("auths"), "{config}");
}

#[tokio::test]
async fn token_auth_anonymous_credentials_and_identity_token() {
    let reg = TestRegistry::start(Mode::Token);
    let public = reg
        .push_image(
            "pub/app",
            "1",
            &ImageSpec::new(Format::Docker, vec![layer(7, 2000)]),
        )
        .await;
    let private = reg
        .push_image(
            "private/app",
            "1",
            &ImageSpec::new(Format::Oci, vec![layer(8, 2000)]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (pub_img, priv_img) = (
        image(&reg.host, "pub/app:1"),
        image(&reg.host, "private/app:1"),
    );

    // Anonymous: a token for public repositories, refused for private ones.
    let anonymous = client(dir.path());
    let got = anonymous.resolve(&pub_img, &amd64()).await.unwrap();
    assert_eq!(got.manifest_digest, public.manifest_digest);
    assert_eq!(
        read_blob(&anonymous, &pub_img, &got.manifest.layers[0].digest, 2000).await,
        layer(7, 2000)
    );
    let msg = anonymous
        .resolve(&priv_img, &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("denied") && msg.contains(&format!("eskrun login {}", reg.host)),
        "{msg}"
    );

    // User name and password from config.json.
    write_docker_config(
        dir.path(),
        serde_json::json!({"auths": {reg.host.clone(): {"auth": basic_auth_entry()}}}),
    );
    let got = client(dir.path())
        .resolve(&priv_img, &amd64())
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, private.manifest_digest);

    // An identity (refresh) token, as `docker login` stores for OAuth registries.
    write_docker_config(
        dir.path(),
        serde_json::json!({"auths": {reg.host.clone(): {"identitytoken": IDENTITY_TOKEN}}}),
    );
    let with_token = client(dir.path());
    let got = with_token.resolve(&priv_img, &amd64()).await.unwrap();
    assert_eq!(got.manifest_digest, private.manifest_digest);
    assert_eq!(
        read_blob(&with_token, &priv_img, &got.manifest.layers[0].digest, 2000).await,
        layer(8, 2000)
    );
}

#[tokio::test]
async fn login_checks_credentials_then_stores_them_and_logout_removes_them() {
    for mode in [Mode::Basic, Mode::Token] {
        let reg = TestRegistry::start(mode);
        reg.push_image(
            "private/login",
            "1",
            &ImageSpec::new(Format::Oci, vec![layer(9, 64)]),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        write_docker_config(
            dir.path(),
            serde_json::json!({"auths": {}, "detachKeys": "ctrl-x"}),
        );
        let client = client(dir.path());

        let err = client.login(&reg.host, USER, "wrong").await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("login to {} failed", reg.host)),
            "{mode:?}: {err}"
        );
        let config_path = dir.path().join("docker/config.json");
        assert!(!std::fs::read_to_string(&config_path)
            .unwrap()
            .contains(&reg.host));

        client.login(&reg.host, USER, PASSWORD).await.unwrap();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        assert_eq!(file["auths"][&reg.host]["auth"], basic_auth_entry());
        assert_eq!(file["detachKeys"], "ctrl-x");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&config_path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        client
            .resolve(&image(&reg.host, "private/login:1"), &amd64())
            .await
            .unwrap();

        assert!(client.logout(&reg.host).unwrap());
        assert!(!client.logout(&reg.host).unwrap());
        assert!(!std::fs::read_to_string(&config_path)
            .unwrap()
            .contains(&reg.host));
    }
}

#[tokio::test]
async fn not_found_names_the_image_and_the_registry() {
    let reg = TestRegistry::start(Mode::Plain);
    reg.push_image(
        "there/app",
        "1",
        &ImageSpec::new(Format::Docker, vec![layer(12, 10)]),
    )
    .await;
    let client = client(reg.dir());
    for name in ["nosuch/app:latest", "there/app:2"] {
        let img = image(&reg.host, name);
        let expected = format!(
            "image {}/{name} not found on {}: check the name and tag",
            reg.host, reg.host
        );
        assert_eq!(
            client
                .resolve(&img, &amd64())
                .await
                .unwrap_err()
                .to_string(),
            expected
        );
        assert_eq!(
            client.head_digest(&img).await.unwrap_err().to_string(),
            expected
        );
    }
}

#[tokio::test]
async fn unreachable_registry_names_the_host() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let err = client(dir.path())
        .resolve(&image(&format!("127.0.0.1:{port}"), "x/y:1"), &amd64())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!("cannot reach registry 127.0.0.1:{port}: ")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");

    // A name that does not resolve (.invalid never does).
    let err = client(dir.path())
        .head_digest(&image("nosuch.invalid:5000", "x/y:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot reach registry nosuch.invalid:5000: "),
        "{msg}"
    );
}

#[tokio::test]
async fn schema1_manifest_is_a_clear_error() {
    let reg = TestRegistry::start(Mode::Plain);
    let proxy = FaultProxy::start(reg.addr());
    // distribution 2.8 no longer accepts schema 1 pushes: the proxy answers as an old
    // registry would.
    let body = br#"{"schemaVersion": 1, "name": "old/app", "tag": "1", "architecture": "amd64",
        "fsLayers": [], "history": [], "signatures": []}"#;
    proxy.inject(
        "/v2/old/app/manifests/1",
        Fault::Respond {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            )],
            body: body.to_vec(),
        },
    );
    let img = image(&proxy.host, "old/app:1");
    let msg = client(reg.dir())
        .resolve(&img, &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(&format!(
            "image {img} uses the legacy Docker schema 1 manifest format"
        )),
        "{msg}"
    );
    assert!(msg.contains("push the image again"), "{msg}");
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = reg
        .push_image(
            "flaky/app",
            "1",
            &ImageSpec::new(Format::Docker, vec![layer(13, 100)]),
        )
        .await;
    let proxy = FaultProxy::start(reg.addr());
    let img = image(&proxy.host, "flaky/app:1");
    let client = client(reg.dir());
    let fail = || Fault::Respond {
        status: 503,
        headers: vec![],
        body: b"busy".to_vec(),
    };

    // Two failures, then the registry answers: the third try succeeds.
    proxy.inject("/manifests/1", fail());
    proxy.inject("/manifests/1", fail());
    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    let manifest_gets = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /v2/flaky/app/manifests/1"))
        .count();
    assert_eq!(manifest_gets, 3);

    // Failing every time: an error after three tries.
    for _ in 0..3 {
        proxy.inject("/manifests/1", fail());
    }
    let msg = client
        .resolve(&img, &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "registry {} failed with HTTP 503 (tried 3 times): busy",
            proxy.host
        )
    );
}

fn too_many_requests(headers: &[(&str, &str)]) -> Fault {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    headers.push(("Content-Type".into(), "application/json".into()));
    Fault::Respond {
        status: 429,
        headers,
        body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit reached"}]}"#
            .to_vec(),
    }
}

fn count(proxy: &FaultProxy, prefix: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn rate_limit_says_when_to_retry_and_suggests_login() {
    let reg = TestRegistry::start(Mode::Plain);
    reg.push_image(
        "busy/app",
        "1",
        &ImageSpec::new(Format::Docker, vec![layer(14, 10)]),
    )
    .await;
    let proxy = FaultProxy::start(reg.addr());
    let host = &proxy.host;
    // The first for the manifest request, the second for eskrun's HEAD asking when.
    proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "120")]));
    proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "120")]));
    let msg = client(reg.dir())
        .resolve(&image(host, "busy/app:1"), &amd64())
        .await
        .unwrap_err()
        .to_string();
    let (head, tail) = msg
        .split_once(" (at ")
        .unwrap_or_else(|| panic!("no retry time in: {msg}"));
    assert_eq!(
        head,
        format!("rate limited by {host} (HTTP 429): retry after 120 s")
    );
    let (clock, tail) = tail.split_once(" UTC); ").unwrap();
    assert!(
        clock.len() == 8 && clock.split(':').all(|n| n.parse::<u8>().is_ok()),
        "{msg}"
    );
    assert_eq!(tail, format!("`eskrun login {host}` may raise the limit"));
    // A long wait is not waited for, nor the manifest asked for again.
    assert_eq!(count(&proxy, "GET /v2/busy/app/manifests/1"), 1);
    assert_eq!(count(&proxy, "HEAD /v2/busy/app/manifests/1"), 1);
}

/// With token auth, eskrun's HEAD needs a token too, or the registry would answer it 401
/// without saying when to retry.
#[tokio::test]
async fn rate_limit_is_asked_about_with_the_pull_token() {
    let reg = TestRegistry::start(Mode::Token);
    reg.push_image(
        "private/app",
        "1",
        &ImageSpec::new(Format::Docker, vec![layer(14, 10)]),
    )
    .await;
    let proxy = FaultProxy::start(reg.addr());
    let dir = tempfile::tempdir().unwrap();
    write_docker_config(
        dir.path(),
        serde_json::json!({"auths": {proxy.host.clone(): {"auth": basic_auth_entry()}}}),
    );
    proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "120")]));
    proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "120")]));
    let msg = client(dir.path())
        .resolve(&image(&proxy.host, "private/app:1"), &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HTTP 429): retry after 120 s (at "), "{msg}");
    assert_eq!(
        proxy.authorization("HEAD /v2/private/app/manifests/1"),
        ["Bearer"]
    );
}

#[tokio::test]
async fn rate_limit_without_a_hint_says_so() {
    let reg = TestRegistry::start(Mode::Plain);
    reg.push_image(
        "busy/app",
        "1",
        &ImageSpec::new(Format::Docker, vec![layer(14, 10)]),
    )
    .await;
    let proxy = FaultProxy::start(reg.addr());
    let host = &proxy.host;
    // eskrun's HEAD reaches the registry, which has no limit to tell about.
    proxy.inject("/manifests/1", too_many_requests(&[]));
    let msg = client(reg.dir())
        .resolve(&image(host, "busy/app:1"), &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "rate limited by {host} (HTTP 429): the registry did not say when; wait a few minutes; `eskrun login {host}` may raise the limit"
        )
    );
    assert_eq!(count(&proxy, "GET /v2/busy/app/manifests/1"), 1);
}

#[tokio::test]
async fn short_retry_after_is_waited_for_then_retried() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = reg
        .push_image(
            "busy/app",
            "1",
            &ImageSpec::new(Format::Docker, vec![layer(14, 10)]),
        )
        .await;
    let proxy = FaultProxy::start(reg.addr());
    proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "1")]));
    proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "1")]));
    let resolved = client(reg.dir())
        .resolve(&image(&proxy.host, "busy/app:1"), &amd64())
        .await
        .unwrap();
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    assert_eq!(count(&proxy, "GET /v2/busy/app/manifests/1"), 2);

    // Limited again after the wait: reported, not waited for a second time.
    for _ in 0..4 {
        proxy.inject("/manifests/1", too_many_requests(&[("Retry-After", "1")]));
    }
    let msg = client(reg.dir())
        .resolve(&image(&proxy.host, "busy/app:1"), &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HTTP 429): retry after 1 s (at "), "{msg}");
    assert_eq!(count(&proxy, "GET /v2/busy/app/manifests/1"), 4);
}

#[tokio::test]
async fn broken_blob_transfer_is_resumed_with_range_requests() {
    let reg = TestRegistry::start(Mode::Plain);
    let size = 1_500_000;
    let data = layer(15, size);
    reg.push_image(
        "big/app",
        "1",
        &ImageSpec::new(Format::Docker, vec![data.clone()]),
    )
    .await;
    let digest = sha256(&data);
    let proxy = FaultProxy::start(reg.addr());
    // Cut the first transfer, then the first resume too.
    proxy.inject(&format!("/blobs/{digest}"), Fault::CutAfter(400_000));
    proxy.inject(&format!("/blobs/{digest}"), Fault::CutAfter(300_000));
    let client = client(reg.dir());
    let got = read_blob(&client, &image(&proxy.host, "big/app:1"), &digest, size).await;
    assert_eq!(got.len(), size);
    assert!(got == data, "resumed bytes differ");
    let ranges: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains("/blobs/"))
        .collect();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert!(ranges[1].ends_with("bytes=400000-"), "{ranges:?}");
    assert!(ranges[2].ends_with("bytes=700000-"), "{ranges:?}");
}

#[tokio::test]
async fn tampered_config_blob_is_a_digest_mismatch() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = reg
        .push_image(
            "bad/app",
            "1",
            &ImageSpec::new(Format::Docker, vec![layer(16, 10)]),
        )
        .await;
    reg.tamper_blob(&pushed.config_digest);
    let err = client(reg.dir())
        .resolve(&image(&reg.host, "bad/app:1"), &amd64())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(msg.contains("the image config has digest"), "{msg}");
    assert!(
        msg.contains(&format!("expected {}", pushed.config_digest)),
        "{msg}"
    );
}

#[tokio::test]
async fn docker_hub_mirrors_are_tried_in_order() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = reg
        .push_image(
            "library/busybox",
            "1.36",
            &ImageSpec::new(Format::Docker, vec![layer(17, 99)]),
        )
        .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    let config_path: PathBuf = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[mirrors]\n\"docker.io\" = [\"{dead}\", \"http://{}\"]\n",
            reg.host
        ),
    )
    .unwrap();
    opts.config = Config::load_from(&config_path).unwrap();
    let client = RegistryClient::new(opts);
    // "busybox" is docker.io/library/busybox: served here by the second mirror.
    let img = ImageRef::parse("busybox:1.36").unwrap();
    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest, pushed.manifest_digest);
    assert_eq!(
        read_blob(&client, &img, &resolved.manifest.layers[0].digest, 99).await,
        layer(17, 99)
    );
}

/// Proxy variables are read from the environment: they are set only in a child process
/// (this test binary running [`proxy_child`]), never in this process where other tests run.
#[tokio::test]
async fn https_proxy_and_no_proxy_are_honoured() {
    let reg = TestRegistry::start(Mode::Tls);
    let pushed = reg
        .push_image(
            "proxied/app",
            "1",
            &ImageSpec::new(Format::Oci, vec![layer(18, 5000)]),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("certs.d").join(&reg.host);
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::copy(reg.ca.as_ref().unwrap(), ca_dir.join("ca.crt")).unwrap();
    // The proxy's own upstream is unused: CONNECT names the target.
    let proxy = FaultProxy::start(reg.addr());

    let run_child = |no_proxy: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "proxy_child", "--ignored", "--nocapture"])
            .env(
                "ESKRUN_TEST_CHILD",
                format!(
                    "{}|{}|{}",
                    reg.host,
                    dir.path().display(),
                    pushed.manifest_digest
                ),
            )
            .env("HTTPS_PROXY", format!("http://{}", proxy.host))
            .env("NO_PROXY", no_proxy)
            .env_remove("https_proxy")
            .env_remove("no_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    run_child("");
    let tunnels = proxy.requests();
    assert!(
        tunnels
            .iter()
            .any(|r| r.starts_with(&format!("CONNECT {}", reg.host))),
        "{tunnels:?}"
    );

    let before = proxy.requests().len();
    run_child("127.0.0.1");
    assert_eq!(
        proxy.requests().len(),
        before,
        "NO_PROXY host went through the proxy"
    );
}

#[tokio::test]
#[ignore = "run by https_proxy_and_no_proxy_are_honoured, in a child process with proxy variables"]
async fn proxy_child() {
    let spec =
        std::env::var("ESKRUN_TEST_CHILD").expect("run by https_proxy_and_no_proxy_are_honoured");
    let parts: Vec<&str> = spec.split('|').collect();
    let (host, dir, digest) = (parts[0], Path::new(parts[1]), parts[2]);
    let client = client(dir);
    let img = image(host, "proxied/app:1");
    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest, digest);
    let d = &resolved.manifest.layers[0];
    assert_eq!(
        read_blob(&client, &img, &d.digest, 5000).await,
        layer(18, 5000)
    );
}

#[tokio::test]
async fn compressed_layers_stream_as_pushed() {
    let reg = TestRegistry::start(Mode::Plain);
    let tar = layer(19, 30_000);
    let layers = vec![
        Layer::gzip(&tar),
        Layer::zstd(&tar),
        Layer::plain(tar.clone()),
    ];
    let pushed = reg
        .push_image(
            "comp/app",
            "1",
            &ImageSpec::with_layers(Format::Oci, layers.clone()),
        )
        .await;
    let client = client(reg.dir());
    let img = image(&reg.host, "comp/app:1");
    let resolved = client.resolve(&img, &amd64()).await.unwrap();
    let types: Vec<&str> = resolved
        .manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(types, [OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_TAR]);
    let config: serde_json::Value = serde_json::from_slice(&resolved.config_raw).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&tar));
    for ((desc, layer), digest) in resolved
        .manifest
        .layers
        .iter()
        .zip(&layers)
        .zip(&pushed.layer_digests)
    {
        assert_eq!(&desc.digest, digest);
        assert!(read_blob(&client, &img, &desc.digest, layer.blob.len()).await == layer.blob);
    }
}
