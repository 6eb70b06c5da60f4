//! Native TLS (`[tls]`): the server certificate chain, its key and the
//! optional client CA, loaded into a rustls configuration that new handshakes
//! use; reloaded from the files when they change or on SIGHUP.
//!
//! A reload replaces the configuration for handshakes that start afterwards;
//! connections already open keep the session they negotiated. Files that do
//! not make a usable configuration (a key that does not match the
//! certificate, a half-written file) are refused with a logged error and the
//! configuration in use stays. This module knows files and rustls, not HTTP:
//! the accept loop (`connections.rs`) runs the handshakes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// The ALPN protocols offered, HTTP/2 first: clients that speak it (Go's, so
/// Docker, containerd, skopeo and podman) get one multiplexed connection.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// `[tls]`: serve HTTPS with a certificate and key from files (see
/// `docs/operations.md`); without this section the listener speaks plain HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the server certificate, followed by the intermediate
    /// certificates of its chain.
    #[schemars(example = &"/etc/berth/tls/cert.pem")]
    pub cert_file: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(example = &"/etc/berth/tls/key.pem")]
    pub key_file: PathBuf,
    /// PEM file of the CAs whose client certificates the admin API
    /// (`/api/v1/`) requires, in addition to an administrator's credentials.
    /// Other routes accept connections without a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are read to see whether they changed (0: only on
    /// SIGHUP).
    #[serde(default = "default_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// How long a new connection may take to complete its TLS handshake.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// A second, plain-HTTP address answering only the health and metrics
    /// routes (for probes and scrapers that have no certificate to trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_listen: Option<String>,
}

fn default_reload_interval_secs() -> u64 {
    60
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

/// Why the files of `[tls]` do not make a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate (BEGIN CERTIFICATE)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("the certificate of {} and the key of {} are not usable together: {source}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the client CAs of {} are not usable: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

/// Marks a request that came over a connection whose client certificate was
/// verified against `tls.client_ca_file`.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedClientCertificate;

/// The TLS configuration in use, and the files it is reloaded from.
pub struct ServerTls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The digest of the file contents last tried, so that a poll reloads
    /// (or logs a refusal) once per change, not once per interval.
    last_tried: Mutex<[u8; 32]>,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Replaced,
    Refused(TlsError),
}

impl ServerTls {
    /// Loads the files of `config`; fails when they do not make a usable
    /// configuration.
    pub fn load(config: &TlsConfig) -> Result<ServerTls, TlsError> {
        let material = Material::read(config)?;
        let server_config = material.server_config(config)?;
        Ok(ServerTls {
            files: config.clone(),
            current: RwLock::new(Arc::new(server_config)),
            last_tried: Mutex::new(material.digest()),
        })
    }

    /// The configuration for a handshake starting now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.files.handshake_timeout_secs.max(1))
    }

    /// Reads the files again and replaces the configuration when they
    /// changed since the last try (or always, when `forced`).
    pub fn reload(&self, forced: bool) -> Reload {
        let material = match Material::read(&self.files) {
            Ok(material) => material,
            Err(e) => return Reload::Refused(e),
        };
        let digest = material.digest();
        {
            let mut last = self.last_tried.lock().unwrap_or_else(|p| p.into_inner());
            if !forced && *last == digest {
                return Reload::Unchanged;
            }
            *last = digest;
        }
        match material.server_config(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                Reload::Replaced
            }
            Err(e) => Reload::Refused(e),
        }
    }

    /// Reloads every `reload_interval_secs` when the files changed, and on
    /// every `signal` (SIGHUP) whether they changed or not.
    pub fn spawn_reloads(self: Arc<Self>, mut signal: watch::Receiver<()>) {
        let interval = self.files.reload_interval_secs;
        tokio::spawn(async move {
            let period = Duration::from_secs(interval.max(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut signals_open = true;
            loop {
                let forced = tokio::select! {
                    _ = tick.tick(), if interval > 0 => false,
                    changed = signal.changed(), if signals_open => {
                        if changed.is_err() {
                            signals_open = false;
                            if interval == 0 {
                                return;
                            }
                            continue;
                        }
                        true
                    }
                };
                let tls = self.clone();
                // File reads and key parsing: off the async workers.
                let outcome = tokio::task::spawn_blocking(move || tls.reload(forced)).await;
                match outcome {
                    Ok(Reload::Unchanged) => {}
                    Ok(Reload::Replaced) => tracing::info!(
                        cert_file = %self.files.cert_file.display(),
                        "TLS certificate reloaded; new connections use it"
                    ),
                    Ok(Reload::Refused(e)) => tracing::error!(
                        error = %e,
                        "TLS files not reloaded; the certificate in use stays"
                    ),
                    Err(e) => tracing::error!(error = %e, "TLS reload failed"),
                }
            }
        });
    }
}

/// The contents of the files, read once so that what is checked is what
/// is used.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Material {
    fn read(config: &TlsConfig) -> Result<Material, TlsError> {
        Ok(Material {
            cert: read(&config.cert_file)?,
            key: read(&config.key_file)?,
            client_ca: config.client_ca_file.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            // Length-prefixed: moving bytes from one file to the next is a change.
            let part = part.map(Vec::as_slice).unwrap_or_default();
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    fn server_config(&self, files: &TlsConfig) -> Result<ServerConfig, TlsError> {
        let pem_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Pem { path, source }
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error(&files.cert_file))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: files.cert_file.clone(),
            });
        }
        let key = match PrivateKeyDer::from_pem_slice(&self.key) {
            Ok(key) => key,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoKey {
                    path: files.key_file.clone(),
                })
            }
            Err(e) => return Err(pem_error(&files.key_file)(e)),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair_error = |source| TlsError::Pair {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
            source,
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(pair_error)?;
        let builder = match (&self.client_ca, &files.client_ca_file) {
            (Some(pem), Some(path)) => builder.with_client_cert_verifier(client_verifier(pem, path, provider)?),
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(pair_error)?;
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// A verifier that checks a client certificate against the CAs of `pem`
/// when one is presented, and lets connections without one through: only
/// the admin API requires one, and it looks for [`VerifiedClientCertificate`].
fn client_verifier(
    pem: &[u8],
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_error = |reason: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| ca_error(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `127.0.0.1` and its key, as PEM.
    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn config_in(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client_ca_file: None,
            reload_interval_secs: 60,
            handshake_timeout_secs: 10,
            plain_listen: None,
        }
    }

    #[test]
    fn a_poll_reloads_once_per_change_and_refuses_a_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let (cert, key) = self_signed();
        std::fs::write(&config.cert_file, &cert).unwrap();
        std::fs::write(&config.key_file, &key).unwrap();
        let tls = ServerTls::load(&config).unwrap();
        let first = tls.current();
        assert_eq!(first.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);

        assert!(matches!(tls.reload(false), Reload::Unchanged));
        assert!(
            matches!(tls.reload(true), Reload::Replaced),
            "SIGHUP reloads unchanged files"
        );

        let (_, other_key) = self_signed();
        std::fs::write(&config.key_file, &other_key).unwrap();
        let before = tls.current();
        match tls.reload(false) {
            Reload::Refused(TlsError::Pair { .. }) => {}
            other => panic!("a key of another certificate: {other:?}"),
        }
        assert!(Arc::ptr_eq(&before, &tls.current()), "the configuration in use stays");
        assert!(
            matches!(tls.reload(false), Reload::Unchanged),
            "a refusal is not repeated by every poll"
        );

        std::fs::write(&config.key_file, "").unwrap();
        assert!(matches!(tls.reload(false), Reload::Refused(TlsError::NoKey { .. })));
        std::fs::write(&config.key_file, &key).unwrap();
        assert!(matches!(tls.reload(false), Reload::Replaced));
        assert!(!Arc::ptr_eq(&before, &tls.current()));
    }

    #[test]
    fn files_without_a_certificate_or_key_do_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        assert!(matches!(ServerTls::load(&config), Err(TlsError::Read { .. })));
        let (_, key) = self_signed();
        std::fs::write(&config.cert_file, &key).unwrap();
        std::fs::write(&config.key_file, &key).unwrap();
        assert!(matches!(ServerTls::load(&config), Err(TlsError::NoCertificate { .. })));
    }
}
