//! A Redis pub/sub subscription read straight off the socket.
//!
//! The event stream can bring a hundred thousand messages a second. A
//! general-purpose client reads the socket as fast as the network allows
//! and queues every message, unbounded, for the consumer: whenever the
//! consumer falls behind for a moment, the exporter's memory swells by the
//! backlog. Here the consumer reads from a fixed buffer and decodes each
//! message before reading the next: a backlog stays in the kernel's socket
//! buffer and in Redis's output buffer for the client (which disconnects a
//! subscriber that falls too far behind; the exporter counts that as a
//! reconnect), never in the exporter's memory. It also spares one
//! allocation per message.
//!
//! Only what a subscriber needs of RESP2: AUTH, PSUBSCRIBE, PING, and the
//! `pmessage`/`message`/`pong` pushes.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::ConnectionAddr;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

use crate::redis_conn::RedisTarget;

/// Bytes read from the socket at a time; messages larger than it grow the
/// buffer up to [`MAX_FRAME`].
const READ_BUFFER: usize = 64 * 1024;
/// The largest message accepted: Celery's batched event messages are a few
/// kilobytes; anything far larger is not an event worth the memory.
const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum SubscribeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("Redis refused: {0}")]
    Refused(String),
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unsupported(String),
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxStream = Pin<Box<dyn Stream>>;

/// What one read brought.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A published message; its payload is [`Reader::payload`].
    Message(Range<usize>),
    /// The answer to a PING.
    Pong,
    /// Subscription confirmations and other replies the consumer ignores.
    Other,
}

/// The reading half of a subscription.
pub struct Reader {
    stream: ReadHalf<BoxStream>,
    buf: Vec<u8>,
    /// Start of the bytes not yet parsed.
    start: usize,
}

/// The writing half, for PING.
pub struct Writer(WriteHalf<BoxStream>);

impl Writer {
    pub async fn ping(&mut self) -> std::io::Result<()> {
        self.0.write_all(b"*1\r\n$4\r\nPING\r\n").await
    }
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn connect(target: &RedisTarget) -> Result<BoxStream, SubscribeError> {
    Ok(match &target.addr {
        ConnectionAddr::Tcp(host, port) => Box::pin(tcp(host, *port).await?),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        } => {
            if *insecure || tls_params.is_some() {
                return Err(SubscribeError::Unsupported(
                    "the event subscription verifies the server's certificate against the \
                     system's roots (SSL_CERT_FILE to add a private CA); #insecure and \
                     certificates in the URL are not supported"
                        .into(),
                ));
            }
            let tcp = tcp(host, *port).await?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| SubscribeError::Unsupported(format!("server name {host:?}: {e}")))?;
            Box::pin(tls_connector()?.connect(name, tcp).await?)
        }
        ConnectionAddr::Unix(path) => Box::pin(UnixStream::connect(path).await?),
        other => {
            return Err(SubscribeError::Unsupported(format!(
                "cannot subscribe to events over {other}"
            )))
        }
    })
}

async fn tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    // Keepalive probes close a connection whose peer vanished without a word.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    Ok(stream)
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, SubscribeError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(SubscribeError::Unsupported(
            "no trusted root certificates found (install ca-certificates, or point SSL_CERT_FILE at your CA)".into(),
        ));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Connects, authenticates and subscribes to `patterns`.
pub async fn subscribe(
    target: &RedisTarget,
    patterns: &[String],
) -> Result<(Reader, Writer), SubscribeError> {
    let stream = connect(target).await?;
    let (read, write) = tokio::io::split(stream);
    let mut reader = Reader {
        stream: read,
        buf: Vec::with_capacity(READ_BUFFER),
        start: 0,
    };
    let mut writer = Writer(write);
    if let Some(password) = &target.password {
        let auth = match &target.username {
            Some(user) => command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => command(&[b"AUTH", password.as_bytes()]),
        };
        writer.0.write_all(&auth).await?;
        reader.expect_ok().await?;
    }
    let mut psubscribe: Vec<&[u8]> = vec![b"PSUBSCRIBE"];
    psubscribe.extend(patterns.iter().map(|p| p.as_bytes()));
    writer.0.write_all(&command(&psubscribe)).await?;
    // One confirmation per pattern; messages may follow at once.
    for _ in patterns {
        match reader.next().await? {
            Frame::Other => {}
            other => {
                return Err(SubscribeError::Protocol(format!(
                    "expected a psubscribe confirmation, got {other:?}"
                )))
            }
        }
    }
    Ok((reader, writer))
}

impl Reader {
    /// The payload of the last [`Frame::Message`].
    pub fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    async fn expect_ok(&mut self) -> Result<(), SubscribeError> {
        loop {
            if let Some(used) = parse_ok(&self.buf[self.start..])? {
                self.start += used;
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// The next frame. Cancel-safe: a read interrupted (by the liveness
    /// timer) loses nothing, as bytes only move from the socket into the
    /// buffer.
    pub async fn next(&mut self) -> Result<Frame, SubscribeError> {
        loop {
            if let Some((frame, used)) = parse_push(&self.buf, self.start)? {
                self.start += used;
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), SubscribeError> {
        // Parsed bytes go before reading more: the buffer only ever holds
        // one partial frame and what one read brought.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() >= MAX_FRAME {
            return Err(SubscribeError::Protocol(format!(
                "a message larger than {} MiB",
                MAX_FRAME >> 20
            )));
        }
        self.buf.reserve(READ_BUFFER);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(SubscribeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }
}

/// Reads a `\r\n`-terminated line at `at`: (line, bytes used).
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], end + 2))
}

fn number(text: &[u8]) -> Result<i64, SubscribeError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            SubscribeError::Protocol(format!("bad length {:?}", String::from_utf8_lossy(text)))
        })
}

/// The length of a `+OK` reply, `None` while incomplete; `-ERR` is refused.
fn parse_ok(buf: &[u8]) -> Result<Option<usize>, SubscribeError> {
    let Some((l, used)) = line(buf, 0) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(l.get(1..).unwrap_or_default()).into_owned();
    match l.first() {
        Some(b'+') => Ok(Some(used)),
        Some(b'-') => Err(SubscribeError::Refused(text())),
        _ => Err(SubscribeError::Protocol(
            String::from_utf8_lossy(l).into_owned(),
        )),
    }
}

/// One push frame starting at `start` of `buf`: (frame, bytes used), or
/// `None` when the buffer does not hold all of it yet. Payload ranges are
/// absolute positions in `buf`.
pub fn parse_push(buf: &[u8], start: usize) -> Result<Option<(Frame, usize)>, SubscribeError> {
    let Some((header, mut at)) = line(buf, start).map(|(l, n)| (l, start + n)) else {
        return Ok(None);
    };
    match header.first() {
        Some(b'*') => {}
        Some(b'-') => {
            return Err(SubscribeError::Refused(
                String::from_utf8_lossy(&header[1..]).into_owned(),
            ))
        }
        _ => {
            return Err(SubscribeError::Protocol(format!(
                "expected an array, got {:?}",
                String::from_utf8_lossy(header)
            )))
        }
    }
    let count = number(&header[1..])?;
    if !(0..=8).contains(&count) {
        return Err(SubscribeError::Protocol(format!(
            "array of {count} elements"
        )));
    }
    let mut elements: Vec<Range<usize>> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let Some((head, used)) = line(buf, at) else {
            return Ok(None);
        };
        at += used;
        match head.first() {
            Some(b'$') => {
                let len = number(&head[1..])?;
                if len < 0 {
                    elements.push(at..at);
                    continue;
                }
                let len = len as usize;
                if len > MAX_FRAME {
                    return Err(SubscribeError::Protocol(format!(
                        "a message larger than {} MiB",
                        MAX_FRAME >> 20
                    )));
                }
                if buf.len() < at + len + 2 {
                    return Ok(None);
                }
                elements.push(at..at + len);
                at += len + 2;
            }
            // Integers (subscription counts) and simple strings.
            Some(b':') | Some(b'+') => elements.push(at - used + 1..at - 2),
            _ => {
                return Err(SubscribeError::Protocol(format!(
                    "unexpected element {:?}",
                    String::from_utf8_lossy(head)
                )))
            }
        }
    }
    let kind = elements
        .first()
        .map(|r| &buf[r.clone()])
        .unwrap_or_default();
    let frame = match (kind, elements.len()) {
        (b"pmessage", 4) => Frame::Message(elements[3].clone()),
        (b"message", 3) => Frame::Message(elements[2].clone()),
        (b"pong", _) => Frame::Pong,
        _ => Frame::Other,
    };
    Ok(Some((frame, at - start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<(Frame, Vec<u8>)> {
        let mut out = Vec::new();
        let mut start = 0;
        while let Some((frame, used)) = parse_push(bytes, start).unwrap() {
            let payload = match &frame {
                Frame::Message(r) => bytes[r.clone()].to_vec(),
                _ => Vec::new(),
            };
            out.push((frame, payload));
            start += used;
        }
        assert_eq!(start, bytes.len(), "bytes left over");
        out
    }

    #[test]
    fn pushes_of_a_subscriber() {
        let bytes = b"*3\r\n$10\r\npsubscribe\r\n$12\r\n/0.celeryev*\r\n:1\r\n\
*4\r\n$8\r\npmessage\r\n$12\r\n/0.celeryev*\r\n$21\r\n/0.celeryev/task.sent\r\n$5\r\nhe\r\no\r\n\
*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n\
*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let frames = all(bytes);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].0, Frame::Other);
        assert!(matches!(frames[1].0, Frame::Message(_)));
        // A payload holding CR LF is taken by its length, not its lines.
        assert_eq!(frames[1].1, b"he\r\no");
        assert_eq!(frames[2].1, b"");
        assert_eq!(frames[3].0, Frame::Pong);
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes() {
        let full = b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert!(
                parse_push(&full[..cut], 0).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        assert!(parse_push(full, 0).unwrap().is_some());
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        assert!(matches!(
            parse_push(b"-NOAUTH Authentication required.\r\n", 0),
            Err(SubscribeError::Refused(_))
        ));
        assert!(parse_push(b"hello\r\n", 0).is_err());
        assert!(parse_push(b"*99\r\n", 0).is_err());
        assert!(parse_push(b"*1\r\n$99999999999\r\n", 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut start = 0;
            while let Ok(Some((_, used))) = parse_push(&bytes, start) {
                proptest::prop_assert!(used > 0);
                start += used;
            }
        }
    }

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(
            command(&[b"AUTH", b"pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
        );
    }
}
