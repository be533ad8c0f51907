//! The HTTP side: `/metrics`, `/healthz`, `/readyz` and a landing page,
//! optionally behind TLS and basic auth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use prometheus_client::registry::Registry;
use tower_http::compression::CompressionLayer;
use tracing::info;

use crate::exposition::{render, Exposition};
use crate::web_config::{BasicAuth, TlsFiles};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct AppState {
    pub registry: Registry,
    pub exposition: Arc<Exposition>,
    pub telemetry_path: String,
    pub basic_auth: BasicAuth,
}

pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route(
            &state.telemetry_path,
            get(metrics).layer(
                CompressionLayer::new()
                    .gzip(true)
                    .no_br()
                    .no_deflate()
                    .no_zstd(),
            ),
        )
        .route("/readyz", get(readyz))
        .route("/", get(landing))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    // /healthz stays open: kubelet probes carry no credentials.
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = render(&state.registry);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT))],
        body,
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let pending = state.exposition.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "waiting for the first collection of: {}\n",
                pending.join(", ")
            ),
        )
            .into_response()
    }
}

async fn landing(State(state): State<Arc<AppState>>) -> Html<String> {
    let path = &state.telemetry_path;
    Html(format!(
        "<!doctype html>\n<html><head><title>BookedBarber exporter</title></head><body>\n\
<h1>BookedBarber exporter</h1>\n<p>Version {version}.</p>\n<ul>\n\
<li><a href=\"{path}\">{path}</a>: metrics</li>\n\
<li><a href=\"/healthz\">/healthz</a>: the process is alive</li>\n\
<li><a href=\"/readyz\">/readyz</a>: every collector has run once</li>\n</ul>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    ))
}

async fn require_auth(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if !state.basic_auth.enabled() {
        return next.run(request).await;
    }
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    let allowed = credentials
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .is_some_and(|(user, password)| state.basic_auth.check(user, password));
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"bookedbarber-exporter\"",
            )],
            "Unauthorized\n",
        )
            .into_response()
    }
}

/// Serves until SIGTERM or SIGINT, then lets requests in flight finish.
pub async fn serve(address: SocketAddr, app: Router, tls: Option<&TlsFiles>) -> anyhow::Result<()> {
    let handle = axum_server::Handle::new();
    tokio::spawn(shutdown_on_signal(handle.clone()));
    let service = app.into_make_service();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let announce = {
        let handle = handle.clone();
        async move {
            if let Some(bound) = handle.listening().await {
                info!(address = %bound, %scheme, "listening");
            }
        }
    };
    tokio::spawn(announce);
    match tls {
        Some(tls) => {
            let config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot load TLS certificate {} and key {}: {e}",
                            tls.cert_file.display(),
                            tls.key_file.display()
                        )
                    })?;
            axum_server::bind_rustls(address, config)
                .handle(handle)
                .serve(service)
                .await
        }
        None => {
            axum_server::bind(address)
                .handle(handle)
                .serve(service)
                .await
        }
    }
    .map_err(|e| anyhow::anyhow!("cannot serve on {address}: {e}"))
}

async fn shutdown_on_signal(handle: axum_server::Handle<SocketAddr>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down"),
    }
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
}
