//! The Redis connection shared by the Redis and Celery queue collectors.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo};
use thiserror::Error;
use tokio::sync::Mutex;

#[derive(Debug, Error)]
pub enum RedisUrlError {
    #[error("the Redis URL is not valid: {0}")]
    Invalid(String),
}

/// A parsed broker URL; the password stays inside `client`.
#[derive(Clone)]
pub struct RedisTarget {
    pub client: Client,
    /// The database number of the URL (`redis://host/3` → 3).
    pub db: i64,
    /// `host:port/db`, safe to log.
    pub description: String,
    /// `rediss://`: the connection speaks TLS.
    pub tls: bool,
    /// Where and as whom, for the event subscription, which opens its own
    /// connection (celery::subscription).
    pub addr: ConnectionAddr,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTarget({})", self.description)
    }
}

impl RedisTarget {
    /// Parses a `redis://` or `rediss://` URL. Errors never repeat the URL.
    pub fn from_url(url: &str) -> Result<Self, RedisUrlError> {
        let info = url
            .trim()
            .into_connection_info()
            .map_err(|e| RedisUrlError::Invalid(e.to_string().replace(url.trim(), "<url>")))?;
        let db = info.redis_settings().db();
        let description = format!("{}/{db}", info.addr());
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        let addr = info.addr().clone();
        let username = info.redis_settings().username().map(str::to_owned);
        let password = info.redis_settings().password().map(str::to_owned);
        // Keepalive probes close a connection whose peer vanished without a
        // word (a NAT or conntrack entry dropped, a failed-over host), which
        // would otherwise wait forever for its next reply or event.
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let info = info.set_tcp_settings(
            TcpSettings::default()
                .set_nodelay(true)
                .set_keepalive(keepalive)
                .set_user_timeout(Duration::from_secs(60)),
        );
        let client = Client::open(info).map_err(|e| RedisUrlError::Invalid(e.to_string()))?;
        Ok(RedisTarget {
            client,
            db,
            description,
            tls,
            addr,
            username,
            password,
        })
    }

    /// A failed connection, with a hint when it is the classic mistake: a
    /// `rediss://` URL pointing at a plain-text port, where the TLS handshake
    /// gets no answer (Redis waits for the end of a command line that never
    /// comes) or a garbled one.
    pub fn explain_connect_error(&self, error: redis::RedisError) -> redis::RedisError {
        if !self.tls || !(error.is_timeout() || error.is_io_error()) {
            return error;
        }
        redis::RedisError::from(std::io::Error::other(format!(
            "{error}; the URL is rediss:// (TLS): check that the server's port speaks TLS \
             (a plain-text port never completes the handshake), or use redis://"
        )))
    }
}

/// One multiplexed connection, opened on first use and opened again after
/// an error, so that a Redis restart heals by itself.
pub struct SharedConnection {
    target: RedisTarget,
    timeout: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl SharedConnection {
    pub fn new(target: RedisTarget, timeout: Duration) -> Self {
        SharedConnection {
            target,
            timeout,
            connection: Mutex::new(None),
        }
    }

    pub async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        // Waiting for another collector's connection attempt counts too:
        // the whole wait stays within the collection's own limit, so that
        // the reason a connection failed reaches the log, not only the
        // runner's "timed out".
        let limit = self.timeout * 3 / 4;
        match tokio::time::timeout(limit, self.get_or_connect()).await {
            Ok(result) => result,
            Err(_) => Err(self.target.explain_connect_error(redis::RedisError::from(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting timed out after {limit:?}"),
                ),
            ))),
        }
    }

    async fn get_or_connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .target
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.target.explain_connect_error(e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after an error; the next `get` reconnects.
    pub async fn reset(&self) {
        *self.connection.lock().await = None;
    }

    /// Runs `f` on the connection, dropping the connection if it fails.
    pub async fn with<T, F, Fut>(&self, f: F) -> redis::RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.get().await?;
        let result = f(conn).await;
        if let Err(e) = &result {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
            {
                self.reset().await;
            }
        }
        result
    }
}

/// Escapes Redis glob characters so a key prefix matches literally.
pub fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escaping() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn urls() {
        let t = RedisTarget::from_url("redis://:s3cret@broker:6380/3").unwrap();
        assert_eq!(t.db, 3);
        assert_eq!(t.description, "broker:6380/3");
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = RedisTarget::from_url("rediss://broker/0").unwrap();
        assert_eq!(t.db, 0);
        let e = RedisTarget::from_url("http://u:s3cret@broker/0")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
