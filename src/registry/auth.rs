//! Registry credentials, kept where Docker keeps them so that an existing `docker login`
//! works: `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`) with `auths`,
//! `credsStore` and `credHelpers` (the `docker-credential-<name>` programs).

use fs_err::os::unix::fs::OpenOptionsExt;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{Map, Value};

use super::RegistryError;

/// Docker Hub's key in `config.json` and for credential helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// What to authenticate with against one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged for an access token per use.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, even in debug logs.
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// The Docker client configuration file and how to find credential helpers.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// `config.json`.
    pub path: PathBuf,
    /// The `PATH` searched for `docker-credential-*` programs.
    pub helper_path: OsString,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; helpers found on `$PATH`.
    pub fn from_env() -> DockerConfig {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::dirs::home_dir().join(".docker"));
        DockerConfig {
            path: dir.join("config.json"),
            helper_path: std::env::var_os("PATH").unwrap_or_default(),
        }
    }

    /// The credentials stored for a registry (`docker.io` or `host[:port]`): its credential
    /// helper if one is configured, else `auths`, else anonymous.
    pub fn credentials(&self, registry: &str) -> Result<Credentials, RegistryError> {
        let file = self.read()?;
        let key = server_key(registry);
        if let Some(helper) = helper_for(&file, registry) {
            return self.helper_get(&helper, &key, registry);
        }
        let Some(auths) = file.get("auths").and_then(Value::as_object) else {
            return Ok(Credentials::Anonymous);
        };
        let entry = auths
            .iter()
            .find(|(k, _)| normalise(k) == normalise(&key))
            .map(|(_, v)| v);
        let Some(entry) = entry else {
            return Ok(Credentials::Anonymous);
        };
        let bad = |detail: &str| self.error(registry, detail);
        if let Some(token) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            return Ok(Credentials::IdentityToken(token.to_string()));
        }
        if let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("the \"auth\" entry is not base64"))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| bad("the \"auth\" entry is not UTF-8"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad("the \"auth\" entry is not user:password"))?;
            return Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
        match (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            (Some(username), Some(password)) => Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }),
            _ => Ok(Credentials::Anonymous),
        }
    }

    /// Stores credentials for `registry`: in its credential helper if one is configured,
    /// else in `auths` (other keys of the file are kept; written atomically, mode 0600).
    pub fn store(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let mut file = self.read()?;
        let key = server_key(registry);
        if let Some(helper) = helper_for(&file, registry) {
            let input =
                serde_json::json!({"ServerURL": key, "Username": username, "Secret": password});
            self.run_helper(&helper, "store", &input.to_string(), registry)?;
            return Ok(());
        }
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let auths = file
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(auths) = auths.as_object_mut() else {
            return Err(self.error(registry, "\"auths\" is not an object"));
        };
        auths.retain(|k, _| normalise(k) != normalise(&key));
        auths.insert(key, serde_json::json!({ "auth": auth }));
        self.write(&file, registry)
    }

    /// Removes the credentials of `registry` from its helper or from `auths`. Returns whether
    /// there were any.
    pub fn erase(&self, registry: &str) -> Result<bool, RegistryError> {
        let mut file = self.read()?;
        let key = server_key(registry);
        if let Some(helper) = helper_for(&file, registry) {
            return self
                .run_helper(&helper, "erase", &key, registry)
                .map(|_| true);
        }
        let Some(auths) = file.get_mut("auths").and_then(Value::as_object_mut) else {
            return Ok(false);
        };
        let before = auths.len();
        auths.retain(|k, _| normalise(k) != normalise(&key));
        if auths.len() == before {
            return Ok(false);
        }
        self.write(&file, registry)?;
        Ok(true)
    }

    fn read(&self) -> Result<Map<String, Value>, RegistryError> {
        let text = match fs_err::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => return Err(self.error("", &e.to_string())),
        };
        if text.trim().is_empty() {
            return Ok(Map::new());
        }
        serde_json::from_str(&text).map_err(|e| {
            self.error(
                "",
                &format!("{} is not valid JSON: {e}", self.path.display()),
            )
        })
    }

    /// Writes the file through a temporary file and a rename, so a crash never leaves a
    /// truncated credentials file, and never makes it readable by others.
    fn write(&self, file: &Map<String, Value>, registry: &str) -> Result<(), RegistryError> {
        let fail = |e: std::io::Error| self.error(registry, &e.to_string());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir).map_err(fail)?;
        let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
        let mut text = serde_json::to_string_pretty(file).expect("JSON values serialise");
        text.push('\n');
        let result = (|| {
            let mut out = fs_err::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))?;
            out.write_all(text.as_bytes())?;
            out.sync_all()?;
            fs_err::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(fail)
    }

    fn helper_get(
        &self,
        helper: &str,
        key: &str,
        registry: &str,
    ) -> Result<Credentials, RegistryError> {
        let Some(out) = self.run_helper(helper, "get", key, registry)? else {
            return Ok(Credentials::Anonymous);
        };
        let reply: Value = serde_json::from_str(&out).map_err(|e| {
            self.error(
                registry,
                &format!("docker-credential-{helper} gave bad JSON: {e}"),
            )
        })?;
        let field = |name: &str| reply.get(name).and_then(Value::as_str).unwrap_or("");
        let (username, secret) = (field("Username"), field("Secret"));
        Ok(match (username, secret) {
            (_, "") => Credentials::Anonymous,
            // Docker's convention: this user name means the secret is an identity token.
            ("<token>", token) => Credentials::IdentityToken(token.to_string()),
            (username, password) => Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
        })
    }

    /// Runs `docker-credential-<helper> <action>` with `input` on stdin. `Ok(None)` when the
    /// helper says it has no credentials for the server.
    fn run_helper(
        &self,
        helper: &str,
        action: &str,
        input: &str,
        registry: &str,
    ) -> Result<Option<String>, RegistryError> {
        let program = format!("docker-credential-{helper}");
        let fail = |detail: String| self.error(registry, &format!("{program} {action}: {detail}"));
        let mut child = Command::new(&program)
            .arg(action)
            .env("PATH", &self.helper_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot run it ({e}); install it or remove \"credsStore\"/\"credHelpers\" from {}",
                    self.path.display()
                ))
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            return Ok(Some(stdout));
        }
        // Helpers print this exact message (on stdout) when they hold nothing for the server.
        let said = format!("{stdout} {}", String::from_utf8_lossy(&out.stderr));
        if said.contains("credentials not found") {
            return Ok(None);
        }
        Err(fail(format!("failed ({}): {}", out.status, said.trim())))
    }

    fn error(&self, registry: &str, detail: &str) -> RegistryError {
        RegistryError::Credentials {
            host: if registry.is_empty() {
                self.path.display().to_string()
            } else {
                registry.to_string()
            },
            detail: detail.to_string(),
        }
    }
}

/// The key under which Docker stores credentials for a registry.
fn server_key(registry: &str) -> String {
    if DOCKER_HUB_ALIASES.contains(&normalise(registry).as_str()) {
        DOCKER_HUB_KEY.to_string()
    } else {
        normalise(registry)
    }
}

/// `https://host:port/v1/` -> `host:port`, Docker Hub's names -> `index.docker.io`, the form
/// keys are compared in (Docker's own matching is as lenient).
fn normalise(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        "index.docker.io".to_string()
    } else {
        host
    }
}

fn helper_for(file: &Map<String, Value>, registry: &str) -> Option<String> {
    let wanted = normalise(registry);
    let per_registry = file
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|helpers| {
            helpers
                .iter()
                .find(|(k, _)| normalise(k) == wanted)
                .and_then(|(_, v)| v.as_str())
        });
    per_registry
        .or_else(|| file.get("credsStore").and_then(Value::as_str))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, json: &str) -> DockerConfig {
        let path = dir.join("config.json");
        fs_err::write(&path, json).unwrap();
        DockerConfig {
            path,
            helper_path: dir.as_os_str().to_owned(),
        }
    }

    #[test]
    fn reads_auths_by_host_and_docker_hub_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "reg.example:5000": {"auth": "dXNlcjpwYTpzcw=="},
                "https://tok.example/v2/": {"identitytoken": "refresh-me"}
            }}"#,
        );
        assert_eq!(
            cfg.credentials("docker.io").unwrap(),
            Credentials::Basic {
                username: "hub".into(),
                password: "secret".into()
            }
        );
        assert_eq!(
            cfg.credentials("registry-1.docker.io").unwrap(),
            cfg.credentials("docker.io").unwrap()
        );
        assert_eq!(
            cfg.credentials("reg.example:5000").unwrap(),
            Credentials::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            cfg.credentials("tok.example").unwrap(),
            Credentials::IdentityToken("refresh-me".into())
        );
        assert_eq!(
            cfg.credentials("reg.example:5001").unwrap(),
            Credentials::Anonymous
        );
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DockerConfig {
            path: dir.path().join("nope/config.json"),
            helper_path: OsString::new(),
        };
        assert_eq!(
            cfg.credentials("x.example").unwrap(),
            Credentials::Anonymous
        );
        let cfg = config(dir.path(), "{not json");
        let msg = cfg.credentials("x.example").unwrap_err().to_string();
        assert!(msg.contains("config.json is not valid JSON"), "{msg}");
    }

    #[test]
    fn store_keeps_other_keys_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            r#"{"auths": {"other.example": {"auth": "YTpi"}}, "psFormat": "table"}"#,
        );
        cfg.store("docker.io", "me", "pw").unwrap();
        cfg.store("reg.example:5000", "u", "p").unwrap();
        let text = fs_err::read_to_string(&cfg.path).unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(file["psFormat"], "table");
        assert_eq!(file["auths"]["other.example"]["auth"], "YTpi");
        assert_eq!(
            file["auths"]["https://index.docker.io/v1/"]["auth"],
            "bWU6cHc="
        );
        let mode = fs_err::metadata(&cfg.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            cfg.credentials("reg.example:5000").unwrap(),
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );

        assert!(cfg.erase("reg.example:5000").unwrap());
        assert!(!cfg.erase("reg.example:5000").unwrap());
        assert_eq!(
            cfg.credentials("reg.example:5000").unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            cfg.credentials("docker.io").unwrap(),
            Credentials::Basic {
                username: "me".into(),
                password: "pw".into()
            }
        );
        let leftovers: Vec<_> = fs_err::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
    }

    #[test]
    fn helper_missing_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), r#"{"credHelpers": {"reg.example": "nosuch"}}"#);
        let msg = cfg.credentials("reg.example").unwrap_err().to_string();
        assert!(
            msg.contains("docker-credential-nosuch get: cannot run it"),
            "{msg}"
        );
        assert_eq!(
            cfg.credentials("other.example").unwrap(),
            Credentials::Anonymous
        );
    }
}
