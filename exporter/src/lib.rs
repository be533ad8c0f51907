//! bookedbarber-exporter: one process that exports PostgreSQL, Redis, Celery
//! and BookedBarber business metrics for Prometheus.
//!
//! Each source module has a configuration, a collect step that does the
//! I/O, and a pure function that turns what was read into metric families.

pub mod app;
pub mod business;
pub mod celery;
pub mod cli;
pub mod exposition;
pub mod logging;
pub mod monotonic;
pub mod pg_cancel;
pub mod postgres;
pub mod process;
pub mod redis_conn;
pub mod redis_server;
pub mod reload;
pub mod runner;
pub mod snapshot;
pub mod web;
