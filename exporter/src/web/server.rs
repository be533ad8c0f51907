//! Routes, the auth and header middleware, the listening socket and graceful
//! shutdown.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use prometheus_client::registry::Registry;
use tower_http::compression::CompressionLayer;
use tracing::{info, warn};

use super::auth::{Verdict, VerifyGate};
use super::tls::TlsState;
use super::Policy;
use crate::cli::ListenAddress;
use crate::exposition::{render, Exposition};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send a request's headers (and, on a new
/// connection, its whole first request). Prometheus sends a scrape request
/// in one packet; a client holding a half-sent request is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AppState {
    pub registry: Registry,
    pub exposition: Arc<Exposition>,
    pub telemetry_path: String,
    pub policy: ArcSwap<Policy>,
    pub gate: VerifyGate,
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
        .route("/", get(landing))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    // /healthz and /readyz stay open: kubelet probes carry no credentials,
    // and neither reveals a metric value.
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .layer(middleware::from_fn_with_state(state.clone(), add_headers))
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

/// The web config's `http_server_config.headers`, on every response.
async fn add_headers(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let policy = state.policy.load();
    for (name, value) in &policy.headers.0 {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

async fn require_auth(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let policy = state.policy.load_full();
    if !policy.basic_auth.enabled() {
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
    let verdict = match credentials.as_deref().and_then(|c| c.split_once(':')) {
        Some((user, password)) => policy.basic_auth.check(&state.gate, user, password).await,
        None => Verdict::Refused,
    };
    match verdict {
        Verdict::Allowed => next.run(request).await,
        Verdict::Refused => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"bookedbarber-exporter\"",
            )],
            "Unauthorized\n",
        )
            .into_response(),
        Verdict::Busy => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "Too many password checks in progress; retry later\n",
        )
            .into_response(),
    }
}

/// Binds the listening socket. `:port` means every interface of both
/// families: an IPv6 socket that also accepts IPv4 (as IPv4-mapped
/// addresses), or IPv4 alone where the host has no IPv6.
pub fn bind(address: &ListenAddress) -> std::io::Result<TcpListener> {
    let listener = match address {
        ListenAddress::Socket(address) => TcpListener::bind(address)?,
        ListenAddress::AllInterfaces(port) => match bind_dual_stack(*port) {
            Ok(listener) => listener,
            // Errors IPv4 would share: report them as they are.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                return Err(e)
            }
            Err(e) => {
                warn!(error = %e, "IPv6 is unavailable; listening on IPv4 only");
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port))?
            }
        },
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    // Explicit, rather than relying on the net.ipv6.bindv6only sysctl.
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

pub struct Server {
    pub(super) state: Arc<AppState>,
    pub(super) tls: Option<Arc<TlsState>>,
}

impl Server {
    /// Serves until SIGTERM or SIGINT, then lets requests in flight finish.
    pub async fn serve(self, address: &ListenAddress) -> anyhow::Result<()> {
        let listener =
            bind(address).map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        let handle = axum_server::Handle::new();
        tokio::spawn(shutdown_on_signal(handle.clone()));
        let service = router(self.state).into_make_service();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let announce = {
            let handle = handle.clone();
            async move {
                if let Some(bound) = handle.listening().await {
                    info!(address = %bound, %scheme, "listening");
                }
            }
        };
        tokio::spawn(announce);
        let server = limits(axum_server::from_tcp(listener)?).handle(handle);
        match &self.tls {
            Some(tls) => {
                server
                    .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(
                        tls.rustls.clone(),
                    ))
                    .serve(service)
                    .await
            }
            None => server.serve(service).await,
        }
        .map_err(|e| anyhow::anyhow!("cannot serve on {address}: {e}"))
    }
}

/// A connection must deliver a complete first request, and later requests
/// their headers, within `HEADER_TIMEOUT`; otherwise it is closed. (The TLS
/// handshake has its own 10 s limit in the acceptor.)
fn limits<A: axum_server::Address, Acc>(
    mut server: axum_server::Server<A, Acc>,
) -> axum_server::Server<A, Acc> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(HEADER_TIMEOUT);
    server.first_request_timeout(HEADER_TIMEOUT)
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
