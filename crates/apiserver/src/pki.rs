//! The server's certificate authority, serving certificate, admin token and read-only token
//! under `DIR/pki`, and the kubeconfigs that let kubectl and kube-rs use them
//! (`DIR/kubeconfig.yaml` for the admin, `DIR/kubeconfig-view.yaml` for read-only use).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};

use crate::error::{ApiError, Result};

/// Key material the server needs at run time.
pub struct Pki {
    /// PEM of the CA certificate clients trust.
    pub ca_pem: String,
    /// PEM of the serving certificate.
    pub cert_pem: String,
    /// PEM of the serving key.
    pub key_pem: String,
    /// The admin bearer token.
    pub token: String,
    /// The read-only bearer token.
    pub view_token: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and key are secrets: never printed.
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ApiError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a file readable by its owner only, atomically (temp file + rename).
pub(crate) fn write_private(path: &Path, data: &str) -> Result<()> {
    let io = |source| ApiError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "imc-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// The names the serving certificate must carry for `listen`, and the `extra` ones.
fn sans(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "::1".to_owned(),
    ];
    let ip = listen.ip().to_string();
    if !listen.ip().is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    for name in extra {
        if !name.is_empty() && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing. The serving certificate is
    /// re-issued (by the same CA) when the listen address (or `extra`) needs a name it lacks.
    pub fn load_or_create(dir: &Path, listen: SocketAddr, extra: &[String]) -> Result<Self> {
        let io = |source| ApiError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Keys and the token live here: owner only (files of older versions included).
        crate::data_dir::tighten_private_dir(dir)?;
        let ca_key_path = dir.join("ca.key");
        let ca_crt_path = dir.join("ca.crt");
        let token_path = dir.join("admin.token");
        let view_token_path = dir.join("view.token");
        let key_path = dir.join("server.key");
        let crt_path = dir.join("server.crt");
        let sans_path = dir.join("server.sans");

        if !ca_key_path.exists() || !ca_crt_path.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            write_private(&ca_crt_path, &cert.pem())?;
            // A new CA invalidates any serving certificate signed by an old one.
            let _ = std::fs::remove_file(&crt_path);
        }
        for path in [&token_path, &view_token_path] {
            if !path.exists() {
                let bytes: [u8; 32] = rand::rng().random();
                write_private(path, &hex_string(&bytes))?;
            }
        }
        let wanted = sans(listen, extra);
        let have = std::fs::read_to_string(&sans_path).unwrap_or_default();
        let covered = wanted.iter().all(|n| have.lines().any(|l| l == n));
        if !covered || !crt_path.exists() || !key_path.exists() {
            let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
            // Same DN and key as the stored CA, so the chain verifies against ca.crt.
            let issuer = ca_params()?.self_signed(&ca_key)?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "imc-apiserver");
            params.subject_alt_names = wanted
                .iter()
                .map(|n| match n.parse::<IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
                })
                .collect::<Result<Vec<_>, rcgen::Error>>()?;
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer, &ca_key)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&crt_path, &cert.pem())?;
            write_private(&sans_path, &wanted.join("\n"))?;
        }
        Ok(Pki {
            ca_pem: read(&ca_crt_path)?,
            cert_pem: read(&crt_path)?,
            key_pem: read(&key_path)?,
            token: read(&token_path)?.trim().to_owned(),
            view_token: read(&view_token_path)?.trim().to_owned(),
        })
    }

    /// Writes the admin kubeconfig kubectl and kube-rs use without further flags.
    pub fn write_kubeconfig(&self, path: &Path, listen: SocketAddr) -> Result<PathBuf> {
        self.write_kubeconfig_for(path, listen, "imc-admin", &self.token)
    }

    /// Writes the read-only kubeconfig (user `imc-view`: get, list and watch, Secrets
    /// excepted).
    pub fn write_view_kubeconfig(&self, path: &Path, listen: SocketAddr) -> Result<PathBuf> {
        self.write_kubeconfig_for(path, listen, "imc-view", &self.view_token)
    }

    fn write_kubeconfig_for(
        &self,
        path: &Path,
        listen: SocketAddr,
        user: &str,
        token: &str,
    ) -> Result<PathBuf> {
        let host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            match listen.ip() {
                IpAddr::V6(ip) => format!("[{ip}]"),
                IpAddr::V4(ip) => ip.to_string(),
            }
        };
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: imc
  cluster:
    server: https://{host}:{port}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: imc
  context:
    cluster: imc
    user: {user}
    namespace: default
current-context: imc
",
            port = listen.port(),
        );
        write_private(path, &text)?;
        Ok(path.to_path_buf())
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_include_listen_ip_once() {
        let s = sans("10.0.0.5:6443".parse().unwrap(), &[]);
        assert_eq!(s, ["127.0.0.1", "localhost", "::1", "10.0.0.5"]);
        let s = sans("127.0.0.1:6443".parse().unwrap(), &["10.88.0.1".to_owned()]);
        assert_eq!(s, ["127.0.0.1", "localhost", "::1", "10.88.0.1"]);
    }
}
