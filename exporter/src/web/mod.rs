//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and a landing page,
//! optionally behind TLS (with client certificates) and basic auth, all set
//! by the exporter-toolkit web config file and reloaded on SIGHUP.

pub mod auth;
pub mod config;
pub mod server;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;
use thiserror::Error;

use crate::exposition::Exposition;
use crate::reload::{BoxError, Reloader, Reloaders};
use auth::{BasicAuth, VerifyGate};
use config::{Headers, WebConfig, WebConfigError};
use tls::{TlsError, TlsState};

/// The `config` label of the web config's reload metrics.
pub const RELOAD_NAME: &str = "web";

#[derive(Debug, Error)]
pub enum WebError {
    #[error(transparent)]
    Config(#[from] WebConfigError),
    #[error("web config file {file}: {source}")]
    Tls { file: String, source: TlsError },
    #[error("web config file {file}: turning TLS on or off needs a restart; keeping the current setting")]
    TlsToggled { file: String },
}

/// The web config as loaded and checked at start-up, certificates included,
/// so that `--check-config` catches what start-up would.
pub struct WebSetup {
    path: Option<PathBuf>,
    config: WebConfig,
    tls: Option<Arc<TlsState>>,
}

impl WebSetup {
    pub fn load(path: Option<&Path>) -> Result<WebSetup, WebError> {
        let Some(path) = path else {
            return Ok(WebSetup {
                path: None,
                config: WebConfig {
                    http2: true,
                    ..WebConfig::default()
                },
                tls: None,
            });
        };
        let config = WebConfig::load(path)?;
        let tls = config
            .tls
            .as_ref()
            .map(|settings| TlsState::load(settings, config.http2))
            .transpose()
            .map_err(|source| WebError::Tls {
                file: path.display().to_string(),
                source,
            })?;
        Ok(WebSetup {
            path: Some(path.to_owned()),
            config,
            tls,
        })
    }

    pub fn basic_auth_enabled(&self) -> bool {
        !self.config.basic_auth_users.is_empty()
    }

    pub fn client_certificates_required(&self) -> bool {
        self.config
            .tls
            .as_ref()
            .is_some_and(|t| matches!(t.client_auth, config::ClientAuth::RequireAndVerify { .. }))
    }

    /// The HTTP server, with the web config registered for reloads (SIGHUP,
    /// and the certificate files changing on disk).
    pub fn into_server(
        self,
        registry: Registry,
        exposition: Arc<Exposition>,
        telemetry_path: String,
        reloaders: &Arc<Reloaders>,
    ) -> server::Server {
        let state = Arc::new(server::AppState {
            registry,
            exposition,
            telemetry_path,
            policy: ArcSwap::from_pointee(Policy::new(self.config, None)),
            gate: VerifyGate::default(),
        });
        if let Some(path) = self.path {
            reloaders.add(Arc::new(WebReloader {
                path,
                state: state.clone(),
                tls: self.tls.clone(),
            }));
        }
        if let Some(tls) = &self.tls {
            tls.clone().watch(reloaders.clone());
        }
        server::Server {
            state,
            tls: self.tls,
        }
    }
}

/// What each request is checked against; swapped whole on reload.
#[derive(Debug)]
pub struct Policy {
    pub basic_auth: Arc<BasicAuth>,
    pub headers: Headers,
}

impl Policy {
    /// Keeps the previous users' caches when the users did not change, so a
    /// reload does not make every scraper pay bcrypt again.
    fn new(config: WebConfig, previous: Option<&Policy>) -> Policy {
        let basic_auth = match previous {
            Some(p) if p.basic_auth.users() == &config.basic_auth_users => p.basic_auth.clone(),
            _ => Arc::new(BasicAuth::new(config.basic_auth_users)),
        };
        Policy {
            basic_auth,
            headers: config.headers,
        }
    }
}

struct WebReloader {
    path: PathBuf,
    state: Arc<server::AppState>,
    tls: Option<Arc<TlsState>>,
}

impl WebReloader {
    /// Reads and checks everything first; applies only if all of it is good.
    fn reload_now(&self) -> Result<(), WebError> {
        let file = self.path.display().to_string();
        let config = WebConfig::load(&self.path)?;
        let tls = match (&self.tls, &config.tls) {
            (None, None) => None,
            (Some(state), Some(settings)) => {
                let built =
                    TlsState::prepare(settings, config.http2).map_err(|source| WebError::Tls {
                        file: file.clone(),
                        source,
                    })?;
                Some((state, settings.clone(), built))
            }
            _ => return Err(WebError::TlsToggled { file }),
        };
        let http2 = config.http2;
        let previous = self.state.policy.load();
        self.state
            .policy
            .store(Arc::new(Policy::new(config, Some(&previous))));
        if let Some((state, settings, built)) = tls {
            state.apply(&settings, http2, built);
        }
        Ok(())
    }
}

impl Reloader for WebReloader {
    fn name(&self) -> &str {
        RELOAD_NAME
    }

    fn reload(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            // File reads and certificate parsing: off the async threads.
            let this = WebReloader {
                path: self.path.clone(),
                state: self.state.clone(),
                tls: self.tls.clone(),
            };
            tokio::task::spawn_blocking(move || this.reload_now())
                .await
                .map_err(|e| -> BoxError { Box::new(e) })?
                .map_err(|e| -> BoxError { Box::new(e) })
        })
    }
}
