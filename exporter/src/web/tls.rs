//! Turns the web config's TLS settings into a rustls server configuration,
//! and keeps it current when the certificate files change on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::crypto::{ring, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tracing::{error, info};

use super::config::{CipherSuite, ClientAuth, Curve, Tls12Suite, TlsSettings, TlsVersion};
use crate::reload::Reloaders;

/// How often the certificate, key and CA files are compared with what is
/// being served. cert-manager and similar tools rewrite them in place.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {key} {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{key} {path} is not valid PEM: {detail}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("key_file {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("client_ca_file {path}: {detail}")]
    Ca { path: PathBuf, detail: String },
    #[error("cert_file {cert} and key_file {key}: {detail}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// The bytes of the files, read once so that what is checked is what is
/// served, and so that a change can be noticed by comparing digests.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Files, TlsError> {
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                key,
                path: path.to_owned(),
                source,
            })
        };
        Ok(Files {
            cert: read("cert_file", &settings.cert_file)?,
            key: read("key_file", &settings.key_file)?,
            ca: settings
                .client_auth
                .ca_file()
                .map(|ca| read("client_ca_file", ca))
                .transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.ca.as_ref()] {
            let part = part.map(Vec::as_slice).unwrap_or_default();
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds the server configuration from the files as they are now.
/// Everything is checked: the certificate parses, the key matches it, the CA
/// is a certificate, the suites and versions are consistent.
pub fn server_config(settings: &TlsSettings, http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(build(settings, http2, &Files::read(settings)?)?.0)
}

fn build(
    settings: &TlsSettings,
    http2: bool,
    files: &Files,
) -> Result<(Arc<ServerConfig>, [u8; 32]), TlsError> {
    let certs = certificates("cert_file", &settings.cert_file, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: settings.key_file.clone(),
        },
        e => TlsError::Pem {
            key: "key_file",
            path: settings.key_file.clone(),
            detail: e.to_string(),
        },
    })?;
    let provider = Arc::new(provider(settings));
    let versions = versions(settings);
    let pair_error = |detail: String| TlsError::Pair {
        cert: settings.cert_file.clone(),
        key: settings.key_file.clone(),
        detail,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| pair_error(e.to_string()))?;
    let builder = match (&settings.client_auth, &files.ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(pem)) => {
            let path = auth.ca_file().unwrap_or(Path::new("")).to_owned();
            let mut roots = RootCertStore::empty();
            for cert in certificates("client_ca_file", &path, pem)? {
                roots.add(cert).map_err(|e| TlsError::Ca {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = match auth {
                ClientAuth::VerifyIfGiven { .. } => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| TlsError::Ca {
                path,
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Checks that the key is one rustls can sign with and that it belongs to
    // the certificate.
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| pair_error(e.to_string()))?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(config), files.digest()))
}

fn versions(settings: &TlsSettings) -> Vec<&'static SupportedProtocolVersion> {
    let mut versions = Vec::new();
    if settings.min_version <= TlsVersion::Tls13 && settings.max_version >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if settings.min_version <= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    versions
}

fn provider(settings: &TlsSettings) -> CryptoProvider {
    let mut provider = ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        // As in Go: the list orders and limits the TLS 1.2 suites; the
        // TLS 1.3 suites are not configurable and stay enabled.
        let mut suites: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version().version == rustls::ProtocolVersion::TLSv1_3)
            .copied()
            .collect();
        for suite in &settings.cipher_suites {
            if let CipherSuite::Tls12(s) = suite {
                let s = tls12_suite(*s);
                if !suites.contains(&s) {
                    suites.push(s);
                }
            }
        }
        provider.cipher_suites = suites;
    }
    if !settings.curve_preferences.is_empty() {
        provider.kx_groups = settings
            .curve_preferences
            .iter()
            .map(|c| kx_group(*c))
            .collect();
    }
    provider
}

pub fn tls12_suite(suite: Tls12Suite) -> SupportedCipherSuite {
    use ring::cipher_suite as cs;
    match suite {
        Tls12Suite::EcdheEcdsaAes128GcmSha256 => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        Tls12Suite::EcdheEcdsaAes256GcmSha384 => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        Tls12Suite::EcdheEcdsaChacha20Poly1305Sha256 => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        Tls12Suite::EcdheRsaAes128GcmSha256 => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        Tls12Suite::EcdheRsaAes256GcmSha384 => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        Tls12Suite::EcdheRsaChacha20Poly1305Sha256 => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
    }
}

fn kx_group(curve: Curve) -> &'static dyn SupportedKxGroup {
    match curve {
        Curve::X25519 => ring::kx_group::X25519,
        Curve::P256 => ring::kx_group::SECP256R1,
        Curve::P384 => ring::kx_group::SECP384R1,
    }
}

/// What is being served and from which files; shared by the file watcher
/// and the SIGHUP reload.
pub struct TlsState {
    pub rustls: RustlsConfig,
    current: Mutex<Current>,
}

struct Current {
    settings: TlsSettings,
    http2: bool,
    digest: [u8; 32],
    /// The last error reported by the watcher, so that a broken file is
    /// logged and counted once rather than every few seconds.
    last_error: Option<String>,
}

impl TlsState {
    pub fn load(settings: &TlsSettings, http2: bool) -> Result<Arc<TlsState>, TlsError> {
        let (config, digest) = build(settings, http2, &Files::read(settings)?)?;
        Ok(Arc::new(TlsState {
            rustls: RustlsConfig::from_config(config),
            current: Mutex::new(Current {
                settings: settings.clone(),
                http2,
                digest,
                last_error: None,
            }),
        }))
    }

    /// Checks and builds a configuration for new settings without applying
    /// it; `apply` puts it in service. Split so that a reload applies
    /// nothing unless every part of the new web config is valid.
    pub fn prepare(
        settings: &TlsSettings,
        http2: bool,
    ) -> Result<(Arc<ServerConfig>, [u8; 32]), TlsError> {
        build(settings, http2, &Files::read(settings)?)
    }

    pub fn apply(
        &self,
        settings: &TlsSettings,
        http2: bool,
        (config, digest): (Arc<ServerConfig>, [u8; 32]),
    ) {
        self.rustls.reload_from_config(config);
        if let Ok(mut current) = self.current.lock() {
            *current = Current {
                settings: settings.clone(),
                http2,
                digest,
                last_error: None,
            };
        }
    }

    /// One look at the files: reloads when their contents changed and are
    /// valid; keeps the old certificate (and says why, once) when not.
    fn check_files(&self, reloaders: &Reloaders) {
        let Ok(current) = self
            .current
            .lock()
            .map(|c| (c.settings.clone(), c.http2, c.digest))
        else {
            return;
        };
        let (settings, http2, digest) = current;
        let outcome = Files::read(&settings).and_then(|files| {
            if files.digest() == digest {
                Ok(None)
            } else {
                build(&settings, http2, &files).map(Some)
            }
        });
        match outcome {
            Ok(None) => {
                // Back to the files being served after a broken rotation.
                let recovered = self
                    .current
                    .lock()
                    .map(|mut c| c.last_error.take().is_some())
                    .unwrap_or(false);
                if recovered {
                    info!("TLS certificate files are valid again");
                    reloaders.record(super::RELOAD_NAME, Ok(()));
                }
            }
            Ok(Some(built)) => {
                self.apply(&settings, http2, built);
                info!(cert_file = %settings.cert_file.display(), "TLS certificate files changed: reloaded");
                reloaders.record(super::RELOAD_NAME, Ok(()));
            }
            Err(e) => {
                let message = e.to_string();
                let repeated = self
                    .current
                    .lock()
                    .map(|mut c| c.last_error.replace(message.clone()) == Some(message.clone()))
                    .unwrap_or(true);
                if !repeated {
                    error!(error = %message, "TLS certificate files changed but cannot be used; still serving the previous certificate");
                    reloaders.record(super::RELOAD_NAME, Err(message));
                }
            }
        }
    }

    /// Looks at the files every `WATCH_INTERVAL` for as long as the process
    /// runs. The reads are small and happen on a blocking thread.
    pub fn watch(self: Arc<Self>, reloaders: Arc<Reloaders>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let state = self.clone();
                let reloaders = reloaders.clone();
                let _ = tokio::task::spawn_blocking(move || state.check_files(&reloaders)).await;
            }
        });
    }
}
