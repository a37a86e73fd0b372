//! Extra CA certificates per registry host, from the `certs.d/<host[:port]>/*.crt` directories
//! that Docker and podman users already have.

use std::path::{Path, PathBuf};

use super::RegistryError;

/// The `certs.d` directories searched, in order: eskrun's own, then Docker's and podman's.
pub fn default_certs_dirs(config_dir: &Path) -> Vec<PathBuf> {
    vec![
        config_dir.join("certs.d"),
        PathBuf::from("/etc/docker/certs.d"),
        PathBuf::from("/etc/containers/certs.d"),
    ]
}

/// The PEM CA certificates listed for `host` (`host` or `host:port`, as in references).
/// A file that is not PEM is an error naming it, rather than a silently ignored CA.
pub(crate) fn ca_certificates(
    certs_dirs: &[PathBuf],
    host: &str,
) -> Result<Vec<Vec<u8>>, RegistryError> {
    let mut pems = Vec::new();
    for dir in certs_dirs {
        let dir = dir.join(host);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "crt"))
            .collect();
        files.sort();
        for file in files {
            let bad = |detail: String| RegistryError::BadCertificate {
                path: file.clone(),
                detail,
            };
            let pem = fs_err::read(&file).map_err(|e| bad(e.to_string()))?;
            match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() => {}
                Ok(_) => return Err(bad("no PEM certificate in it".into())),
                Err(e) => return Err(bad(e.to_string())),
            }
            pems.push(pem);
        }
    }
    Ok(pems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_crt_files_of_the_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        let pem = include_str!("testdata/ca.pem");
        fs_err::create_dir_all(certs.join("reg.example:5000")).unwrap();
        fs_err::create_dir_all(certs.join("other.example")).unwrap();
        fs_err::write(certs.join("reg.example:5000/ca.crt"), pem).unwrap();
        fs_err::write(certs.join("reg.example:5000/client.key"), "not a cert").unwrap();
        fs_err::write(certs.join("other.example/ca.crt"), pem).unwrap();
        let dirs = vec![certs.clone(), dir.path().join("missing")];
        assert_eq!(ca_certificates(&dirs, "reg.example:5000").unwrap().len(), 1);
        assert!(ca_certificates(&dirs, "reg.example").unwrap().is_empty());

        fs_err::write(certs.join("other.example/broken.crt"), "garbage").unwrap();
        let msg = ca_certificates(&dirs, "other.example")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "bad CA certificate file {}: no PEM certificate in it",
                certs.join("other.example/broken.crt").display()
            )
        );
    }
}
