//! Log output: logfmt (`tracing-logfmt`) or JSON, on standard error.
//!
//! Logging must never take the exporter down or hold it up. Lines go
//! through a bounded queue to a thread of their own (`tracing-appender`),
//! so a slow or blocked reader never stalls the async runtime; when the
//! queue is full, or standard error cannot be written at all (a closed log
//! pipe, a full disk), the line is dropped and counted in
//! `bookedbarber_exporter_log_lines_dropped_total` instead of panicking.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

/// Lines kept waiting for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 10_000;

/// Lines standard error refused.
static UNWRITABLE: AtomicU64 = AtomicU64::new(0);
/// Lines dropped because the queue was full.
static QUEUE_FULL: OnceLock<ErrorCounter> = OnceLock::new();

/// Standard error that never fails: a line it cannot write is counted.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(buf).is_err() {
            UNWRITABLE.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Log lines dropped so far (queue full or standard error unwritable).
pub fn dropped_lines() -> u64 {
    UNWRITABLE.load(Ordering::Relaxed) + QUEUE_FULL.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Installs the global subscriber. Keep the guard for the life of the
/// process: dropping it flushes the queue.
pub fn init(level: tracing::Level, format: LogFormat) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUE_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(Stderr);
    let _ = QUEUE_FULL.set(writer.error_counter());
    // Dependencies (sqlx, hyper) log per statement or connection at info;
    // only our own crate follows --log.level below warn.
    let filter = EnvFilter::new(format!("warn,bookedbarber_exporter={level}"));
    let layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_writer(writer)
            .log_internal_errors(false)
            .boxed(),
        LogFormat::Logfmt => tracing_logfmt::builder()
            .with_target(false)
            .with_span_name(false)
            .with_span_path(false)
            .layer()
            .with_writer(writer)
            .log_internal_errors(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
    guard
}
