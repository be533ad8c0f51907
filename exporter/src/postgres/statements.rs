//! Query performance from `pg_stat_statements`, when the extension is
//! installed: the top N statements by execution time since the previous
//! collection, everything else summed per database into `__other__`.
//!
//! `pg_stat_statements` keeps counters per statement since its last reset;
//! the exporter reads all of them every interval (without the query texts,
//! which live in a file) and keeps its own counters from their increases:
//!
//! - the N statements whose execution time grew most since the previous
//!   collection add their increase to their own series; every other
//!   statement's increase goes to its database's `__other__` series, so the
//!   increases of all series of a database add up to the database's total;
//! - a statement's series appears at 0 the first time it ranks in the top N,
//!   and what it did in that interval is added one collection later, so
//!   `rate()` sees all of it (the first collection after the exporter starts
//!   serves the full values instead, like every other counter);
//! - a statement that leaves the top N keeps its series at its last value
//!   (its later increases go to `__other__`) while it is among the 2×N most
//!   recently ranked; older ones leave `/metrics`;
//! - `pg_stat_statements_reset()`, an entry evicted and added again, or a
//!   server restart makes the view's values drop: the exporter counts what
//!   came after as the increase, so no counter ever goes down.
//!
//! The query text is not a label of the counters: `pg_stat_statements_query_id`
//! maps each served `queryid` to its text, truncated, fetched once.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use sqlx::postgres::PgPool;
use sqlx::Row;
use tracing::{info, warn};

use super::PostgresError;
use crate::runner::Source;
use crate::snapshot::Family;

/// The label value of the series that sum everything outside the top N.
pub const OTHER: &str = "__other__";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementsConfig {
    /// Statements with series of their own per interval.
    pub limit: usize,
    /// Serve `pg_stat_statements_query_id` with the statement texts.
    pub include_query: bool,
    /// Characters of query text kept.
    pub query_length: usize,
}

impl Default for StatementsConfig {
    fn default() -> Self {
        StatementsConfig {
            limit: 20,
            include_query: true,
            query_length: 120,
        }
    }
}

/// One row of `pg_stat_statements`, top-level and nested executions of the
/// same statement added together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatementRow {
    pub dbid: i64,
    pub userid: i64,
    /// NULL for other roles' statements when the exporter's role lacks
    /// `pg_read_all_stats` (part of `pg_monitor`).
    pub queryid: Option<i64>,
    pub datname: Option<String>,
    pub user: Option<String>,
    pub counts: Counts,
    /// When this entry started counting (pg_stat_statements 1.11+): a new
    /// value means the entry was reset on its own.
    pub stats_since: Option<f64>,
}

/// What one collection read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatementsReading {
    /// When all statistics were last reset (pg_stat_statements 1.9+).
    pub stats_reset: Option<f64>,
    pub rows: Vec<StatementRow>,
}

/// The counters kept per statement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub calls: f64,
    pub exec_seconds: f64,
    pub rows: f64,
    pub shared_blks_hit: f64,
    pub shared_blks_read: f64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.exec_seconds += other.exec_seconds;
        self.rows += other.rows;
        self.shared_blks_hit += other.shared_blks_hit;
        self.shared_blks_read += other.shared_blks_read;
    }

    /// The increase since `before`. Sums of floating-point times may differ
    /// in their last bits from one reading to the next: a tiny drop is no
    /// change, not a reset.
    fn minus(&self, before: &Counts) -> Counts {
        Counts {
            calls: (self.calls - before.calls).max(0.0),
            exec_seconds: (self.exec_seconds - before.exec_seconds).max(0.0),
            rows: (self.rows - before.rows).max(0.0),
            shared_blks_hit: (self.shared_blks_hit - before.shared_blks_hit).max(0.0),
            shared_blks_read: (self.shared_blks_read - before.shared_blks_read).max(0.0),
        }
    }

    /// True if the entry restarted: its call count, an exact integer that
    /// every reset sets back to 0, went down.
    fn restarted_since(&self, before: &Counts) -> bool {
        self.calls < before.calls
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// The identity of a `pg_stat_statements` entry.
type EntryKey = (i64, i64, Option<i64>);

/// The labels of a served statement series: datname, user, queryid.
type SeriesKey = (String, String, String);

#[derive(Debug, Clone, Default)]
struct Accumulator {
    total: Counts,
    /// Counted in the collection where the series appeared at 0; served
    /// from the next one.
    pending: Counts,
    /// Served already: increases go straight to `total`.
    born: bool,
    /// The collection in which the statement last ranked in the top N (for
    /// `__other__`: in which its database was last seen).
    last_ranked: u64,
}

/// The exporter's own counters, kept from one reading to the next. Pure:
/// readings in, families out.
#[derive(Debug)]
pub struct StatementTracker {
    config: StatementsConfig,
    collections: u64,
    previous: HashMap<EntryKey, (Counts, Option<f64>)>,
    previous_reset: Option<f64>,
    statements: HashMap<SeriesKey, Accumulator>,
    other: BTreeMap<String, Accumulator>,
    /// Mean execution time per served statement, from the last reading.
    means: HashMap<SeriesKey, f64>,
    texts: HashMap<String, String>,
}

/// Accumulators of statements no longer served are remembered up to this
/// many (at least), so a statement that comes back continues its series.
const MIN_REMEMBERED: usize = 1000;
/// Databases whose `__other__` is remembered.
const MAX_OTHER: usize = 1000;

impl StatementTracker {
    pub fn new(config: StatementsConfig) -> Self {
        StatementTracker {
            config,
            collections: 0,
            previous: HashMap::new(),
            previous_reset: None,
            statements: HashMap::new(),
            other: BTreeMap::new(),
            means: HashMap::new(),
            texts: HashMap::new(),
        }
    }

    /// Individual series served at most: the current top N and the N
    /// before them.
    fn max_served(&self) -> usize {
        self.config.limit * 2
    }

    /// Takes a reading: works out each entry's increase since the previous
    /// one and adds it to the right series.
    pub fn update(&mut self, reading: &StatementsReading) {
        self.collections += 1;
        let now = self.collections;
        let first = now == 1;
        if reading.stats_reset.is_some()
            && self.previous_reset.is_some()
            && reading.stats_reset != self.previous_reset
        {
            // pg_stat_statements_reset(): everything counted since is new.
            self.previous.clear();
        }
        self.previous_reset = reading.stats_reset;

        // Increases since the previous reading.
        let mut previous = std::mem::take(&mut self.previous);
        let mut increases: Vec<(&StatementRow, Counts)> = Vec::with_capacity(reading.rows.len());
        for row in &reading.rows {
            let key = (row.dbid, row.userid, row.queryid);
            let increase = match previous.remove(&key) {
                Some((before, since))
                    if since == row.stats_since && !row.counts.restarted_since(&before) =>
                {
                    row.counts.minus(&before)
                }
                // New, evicted and added again, or reset on its own.
                _ => row.counts,
            };
            self.previous.insert(key, (row.counts, row.stats_since));
            increases.push((row, increase));
        }

        // What was held back last time is served now.
        for acc in self.statements.values_mut().chain(self.other.values_mut()) {
            let pending = std::mem::take(&mut acc.pending);
            acc.total.add(&pending);
        }

        // Rank by execution time added in this interval.
        let mut ranked: Vec<usize> = increases
            .iter()
            .enumerate()
            .filter(|(_, (row, inc))| row.queryid.is_some() && !inc.is_zero())
            .map(|(i, _)| i)
            .collect();
        ranked.sort_by(|&a, &b| {
            let (ra, ia) = &increases[a];
            let (rb, ib) = &increases[b];
            ib.exec_seconds
                .partial_cmp(&ia.exec_seconds)
                .unwrap_or(CmpOrdering::Equal)
                .then(
                    ib.calls
                        .partial_cmp(&ia.calls)
                        .unwrap_or(CmpOrdering::Equal),
                )
                .then((ra.dbid, ra.userid, ra.queryid).cmp(&(rb.dbid, rb.userid, rb.queryid)))
        });
        let top: HashSet<usize> = ranked.into_iter().take(self.config.limit).collect();

        self.means.clear();
        let mut means: HashMap<SeriesKey, Counts> = HashMap::new();
        for (i, (row, increase)) in increases.iter().enumerate() {
            let datname = label(&row.datname);
            if top.contains(&i) {
                let key = series_key(row);
                let acc = self.statements.entry(key.clone()).or_default();
                add_increase(acc, increase, first);
                acc.last_ranked = now;
                means.entry(key).or_default().add(&row.counts);
            } else {
                let acc = self.other.entry(datname.clone()).or_default();
                add_increase(acc, increase, first);
                acc.last_ranked = now;
                if row.queryid.is_some() {
                    let key = series_key(row);
                    if self.statements.contains_key(&key) {
                        means.entry(key).or_default().add(&row.counts);
                    }
                }
            }
        }
        for (key, counts) in means {
            if counts.calls > 0.0 {
                self.means.insert(key, counts.exec_seconds / counts.calls);
            }
        }
        self.forget();
    }

    /// Bounds memory: statements not ranked for longest, and `__other__`
    /// of databases gone from the view, are forgotten past the caps.
    fn forget(&mut self) {
        let keep = (self.config.limit * 10).max(MIN_REMEMBERED);
        if self.statements.len() > keep {
            let mut by_age: Vec<(u64, SeriesKey)> = self
                .statements
                .iter()
                .map(|(k, a)| (a.last_ranked, k.clone()))
                .collect();
            by_age.sort();
            for (_, key) in by_age.into_iter().take(self.statements.len() - keep) {
                self.statements.remove(&key);
            }
        }
        if self.other.len() > MAX_OTHER {
            let mut by_age: Vec<(u64, String)> = self
                .other
                .iter()
                .map(|(k, a)| (a.last_ranked, k.clone()))
                .collect();
            by_age.sort();
            for (_, key) in by_age.into_iter().take(self.other.len() - MAX_OTHER) {
                self.other.remove(&key);
            }
        }
    }

    /// The served statements, most recently ranked first.
    fn served(&self) -> Vec<(&SeriesKey, &Accumulator)> {
        let mut served: Vec<(&SeriesKey, &Accumulator)> = self.statements.iter().collect();
        served.sort_by(|a, b| b.1.last_ranked.cmp(&a.1.last_ranked).then(a.0.cmp(b.0)));
        served.truncate(self.max_served());
        served
    }

    /// `queryid`s served without a known text yet.
    pub fn missing_texts(&self) -> Vec<i64> {
        if !self.config.include_query {
            return Vec::new();
        }
        let ids: BTreeSet<i64> = self
            .served()
            .into_iter()
            .filter(|(k, _)| !self.texts.contains_key(&k.2))
            .filter_map(|(k, _)| k.2.parse().ok())
            .collect();
        ids.into_iter().collect()
    }

    /// Remembers the texts found for the `queryid`s asked for (truncated,
    /// made safe), and forgets those of statements no longer served. An id
    /// asked for but not found (its entry was reset or evicted) is noted
    /// as having no text, so it is not asked for again every collection.
    pub fn add_texts(&mut self, asked: &[i64], found: impl IntoIterator<Item = (i64, String)>) {
        for id in asked {
            self.texts.insert(id.to_string(), String::new());
        }
        for (id, text) in found {
            self.texts
                .insert(id.to_string(), clean_text(&text, self.config.query_length));
        }
        let served: HashSet<String> = self
            .served()
            .into_iter()
            .map(|(k, _)| k.2.clone())
            .collect();
        self.texts.retain(|id, _| served.contains(id));
    }

    /// The metric families of the current state.
    pub fn families(&self) -> Vec<Family> {
        let mut calls = Family::counter(
            "pg_stat_statements_calls_total",
            "Times the statement was executed (pg_stat_statements.calls). queryid=\"__other__\" sums every statement of the database outside the top N.",
        );
        let mut seconds = Family::counter(
            "pg_stat_statements_seconds_total",
            "Seconds spent executing the statement (pg_stat_statements.total_exec_time). queryid=\"__other__\" sums every statement of the database outside the top N.",
        );
        let mut rows = Family::counter(
            "pg_stat_statements_rows_total",
            "Rows the statement returned or changed (pg_stat_statements.rows).",
        );
        let mut hit = Family::counter(
            "pg_stat_statements_shared_blks_hit_total",
            "Blocks the statement found in shared buffers (pg_stat_statements.shared_blks_hit).",
        );
        let mut read = Family::counter(
            "pg_stat_statements_shared_blks_read_total",
            "Blocks the statement read from disk or the OS cache (pg_stat_statements.shared_blks_read).",
        );
        let mut mean = Family::gauge(
            "pg_stat_statements_mean_seconds",
            "Mean execution time of the statement in seconds, over everything pg_stat_statements has counted for it (total_exec_time / calls); for the last minutes use rate(pg_stat_statements_seconds_total) / rate(pg_stat_statements_calls_total).",
        );
        let mut text = Family::gauge(
            "pg_stat_statements_query_id",
            "Always 1: maps a queryid to its normalised query text (truncated), for statements that have series of their own.",
        );
        let mut push = |labels: [(&'static str, &str); 3], c: &Counts| {
            calls.push(labels, c.calls);
            seconds.push(labels, c.exec_seconds);
            rows.push(labels, c.rows);
            hit.push(labels, c.shared_blks_hit);
            read.push(labels, c.shared_blks_read);
        };
        let mut texts_served = BTreeSet::new();
        for (key, acc) in self.served() {
            let labels = [
                ("datname", key.0.as_str()),
                ("user", key.1.as_str()),
                ("queryid", key.2.as_str()),
            ];
            push(labels, &acc.total);
            if let Some(m) = self.means.get(key) {
                mean.push(labels, *m);
            }
            if let Some(t) = self.texts.get(&key.2).filter(|t| !t.is_empty()) {
                texts_served.insert((key.2.as_str(), t.as_str()));
            }
        }
        for (datname, acc) in &self.other {
            push(
                [
                    ("datname", datname.as_str()),
                    ("user", OTHER),
                    ("queryid", OTHER),
                ],
                &acc.total,
            );
        }
        for (id, t) in texts_served {
            text.push([("queryid", id), ("query", t)], 1.0);
        }
        vec![
            available_family(true),
            calls,
            seconds,
            rows,
            hit,
            read,
            mean,
            text,
        ]
    }
}

/// Adds up rows of the same entry: with `pg_stat_statements.track = all`,
/// a statement run both at top level and nested has a row for each (and
/// entries without a visible queryid share one key per database and role).
pub fn merge_rows(rows: Vec<StatementRow>) -> Vec<StatementRow> {
    let mut index: HashMap<EntryKey, usize> = HashMap::with_capacity(rows.len());
    let mut merged: Vec<StatementRow> = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (row.dbid, row.userid, row.queryid);
        match index.get(&key) {
            Some(&i) => {
                let into = &mut merged[i];
                into.counts.add(&row.counts);
                into.stats_since = match (into.stats_since, row.stats_since) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            None => {
                index.insert(key, merged.len());
                merged.push(row);
            }
        }
    }
    merged
}

fn add_increase(acc: &mut Accumulator, increase: &Counts, first: bool) {
    if first || acc.born {
        acc.total.add(increase);
    } else {
        // A series that is new now is served at 0 first, so that rate()
        // sees its first increase.
        acc.pending.add(increase);
    }
    acc.born = true;
}

fn label(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "unknown".to_owned())
}

fn series_key(row: &StatementRow) -> SeriesKey {
    (
        label(&row.datname),
        label(&row.user),
        row.queryid.map(|q| q.to_string()).unwrap_or_default(),
    )
}

/// One line, at most `max` characters; a text that mentions a password
/// (`ALTER ROLE … PASSWORD '…'` is stored as typed) is not shown.
pub fn clean_text(text: &str, max: usize) -> String {
    if text.to_lowercase().contains("password") {
        return "<hidden: the statement mentions a password>".to_owned();
    }
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

fn available_family(available: bool) -> Family {
    Family::gauge(
        "pg_stat_statements_available",
        "1 if the pg_stat_statements extension is installed in the exporter's database and loaded (shared_preload_libraries), 0 if not: the pg_stat_statements_* query metrics need it.",
    )
    .with_value(if available { 1.0 } else { 0.0 })
}

/// Why pg_stat_statements cannot be read, logged once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Availability {
    Unknown,
    Available,
    NotInstalled,
    NotLoaded,
}

/// One row whatever happens: the database, and the extension's version and
/// schema when it is installed there.
const EXTENSION_SQL: &str = "\
SELECT current_database()::text, e.extversion, n.nspname::text
FROM (SELECT 1) one
LEFT JOIN (pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace)
       ON e.extname = 'pg_stat_statements'";

/// `"1.10"` → (1, 10).
fn parse_version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statistics query for an installed extension version: the function
/// with `showtext => false` (the view reads every query text from disk),
/// the execution-time column by version, and the reset times where the
/// version has them.
pub fn stats_sql(schema: &str, extversion: &str) -> String {
    let version = parse_version(extversion);
    let schema = quote_ident(schema);
    let exec = if version >= (1, 8) {
        "total_exec_time"
    } else {
        "total_time"
    };
    let since = if version >= (1, 11) {
        "EXTRACT(EPOCH FROM s.stats_since)::float8"
    } else {
        "NULL::float8"
    };
    let reset = if version >= (1, 9) {
        format!("(SELECT EXTRACT(EPOCH FROM stats_reset)::float8 FROM {schema}.pg_stat_statements_info)")
    } else {
        "NULL::float8".to_owned()
    };
    // No GROUP BY: summing bigint columns goes through numeric and costs
    // more than reading the view; the rare duplicates (top-level and nested
    // rows of one statement) are added up by the exporter.
    format!(
        "SELECT s.dbid::int8, s.userid::int8, s.queryid, d.datname::text, r.rolname::text,
                s.calls::float8, (s.{exec} / 1000)::float8, s.rows::float8,
                s.shared_blks_hit::float8, s.shared_blks_read::float8,
                {since}, {reset}
         FROM {schema}.pg_stat_statements(false) s
         LEFT JOIN pg_database d ON d.oid = s.dbid
         LEFT JOIN pg_roles r ON r.oid = s.userid"
    )
}

fn texts_sql(schema: &str) -> String {
    // left() first: only a bounded part of each text crosses the wire.
    format!(
        "SELECT queryid, left(query, $2) FROM {}.pg_stat_statements(true) WHERE queryid = ANY($1)",
        quote_ident(schema)
    )
}

pub struct StatementsSource {
    pool: PgPool,
    tracker: Mutex<StatementTracker>,
    availability: Mutex<Availability>,
}

impl StatementsSource {
    pub fn new(pool: PgPool, config: StatementsConfig) -> Self {
        StatementsSource {
            pool,
            tracker: Mutex::new(StatementTracker::new(config)),
            availability: Mutex::new(Availability::Unknown),
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, StatementTracker> {
        // Plain numbers: still fit to use after a panic elsewhere.
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs the extension's state when it changes: once, not per collection.
    fn note(&self, now: Availability, database: &str) {
        let mut state = self.availability.lock().unwrap_or_else(|e| e.into_inner());
        if *state == now {
            return;
        }
        match now {
            Availability::Available => info!(database, "pg_stat_statements found: query metrics enabled"),
            Availability::NotInstalled => warn!(
                database,
                "pg_stat_statements is not installed in the exporter's database: \
                 no query metrics (pg_stat_statements_available 0); to enable them, add it to \
                 shared_preload_libraries and run CREATE EXTENSION pg_stat_statements in this database"
            ),
            Availability::NotLoaded => warn!(
                database,
                "pg_stat_statements is installed but not loaded: no query metrics \
                 (pg_stat_statements_available 0); add it to shared_preload_libraries and restart PostgreSQL"
            ),
            Availability::Unknown => {}
        }
        *state = now;
    }

    async fn collect_inner(&self) -> Result<Vec<Family>, sqlx::Error> {
        let mut conn = super::acquire(&self.pool).await?;
        let ext = sqlx::query(EXTENSION_SQL).fetch_one(&mut *conn).await?;
        let database: String = ext.try_get(0)?;
        let (Some(extversion), Some(schema)) = (
            ext.try_get::<Option<String>, _>(1)?,
            ext.try_get::<Option<String>, _>(2)?,
        ) else {
            self.note(Availability::NotInstalled, &database);
            return Ok(vec![available_family(false)]);
        };
        let rows = match sqlx::query(sqlx::AssertSqlSafe(stats_sql(&schema, &extversion)))
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) => rows,
            // 55000: "pg_stat_statements must be loaded via
            // shared_preload_libraries".
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55000") => {
                self.note(Availability::NotLoaded, &database);
                return Ok(vec![available_family(false)]);
            }
            Err(e) => return Err(e),
        };
        self.note(Availability::Available, &database);
        let mut reading = StatementsReading::default();
        for r in &rows {
            reading.stats_reset = r.try_get(11)?;
            reading.rows.push(StatementRow {
                dbid: r.try_get(0)?,
                userid: r.try_get(1)?,
                queryid: r.try_get(2)?,
                datname: r.try_get(3)?,
                user: r.try_get(4)?,
                counts: Counts {
                    calls: r.try_get(5)?,
                    exec_seconds: r.try_get(6)?,
                    rows: r.try_get(7)?,
                    shared_blks_hit: r.try_get(8)?,
                    shared_blks_read: r.try_get(9)?,
                },
                stats_since: r.try_get(10)?,
            });
        }
        reading.rows = merge_rows(std::mem::take(&mut reading.rows));
        let (missing, length) = {
            let mut tracker = self.tracker();
            tracker.update(&reading);
            (tracker.missing_texts(), tracker.config.query_length)
        };
        if !missing.is_empty() {
            let texts: Vec<(i64, String)> = sqlx::query(sqlx::AssertSqlSafe(texts_sql(&schema)))
                .bind(&missing)
                .bind(i32::try_from(length * 4).unwrap_or(i32::MAX))
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()?;
            self.tracker().add_texts(&missing, texts);
        }
        Ok(self.tracker().families())
    }
}

impl Source for StatementsSource {
    type Error = PostgresError;

    async fn collect(&self) -> Result<Vec<Family>, PostgresError> {
        Ok(self.collect_inner().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::find;

    fn row(db: &str, queryid: i64, calls: f64, ms: f64) -> StatementRow {
        StatementRow {
            dbid: if db == "app" { 1 } else { 2 },
            userid: 10,
            queryid: Some(queryid),
            datname: Some(db.into()),
            user: Some("u".into()),
            counts: Counts {
                calls,
                exec_seconds: ms / 1000.0,
                rows: calls,
                shared_blks_hit: calls * 2.0,
                shared_blks_read: 0.0,
            },
            stats_since: None,
        }
    }

    fn reading(rows: Vec<StatementRow>) -> StatementsReading {
        StatementsReading {
            stats_reset: Some(1.0),
            rows,
        }
    }

    fn tracker(limit: usize) -> StatementTracker {
        StatementTracker::new(StatementsConfig {
            limit,
            ..Default::default()
        })
    }

    fn value(f: &[Family], name: &str, db: &str, queryid: &str) -> Option<f64> {
        let user = if queryid == OTHER { OTHER } else { "u" };
        find(f, name)
            .unwrap()
            .value_of(&[("datname", db), ("user", user), ("queryid", queryid)])
    }

    fn sum(f: &[Family], name: &str, db: &str) -> f64 {
        find(f, name)
            .unwrap()
            .samples
            .iter()
            .filter(|s| s.labels.iter().any(|(k, v)| k == "datname" && v == db))
            .map(|s| match s.value {
                crate::snapshot::Value::Number(n) => n,
                _ => 0.0,
            })
            .sum()
    }

    #[test]
    fn first_collection_ranks_by_total_time_and_sums_the_rest() {
        let mut t = tracker(2);
        t.update(&reading(vec![
            row("app", 1, 1000.0, 50.0),
            row("app", 2, 3.0, 900.0),
            row("app", 3, 10.0, 10.0),
            row("app", 4, 1.0, 1.0),
        ]));
        let f = t.families();
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", "2"),
            Some(3.0)
        );
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", "1"),
            Some(1000.0)
        );
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", "3"),
            None
        );
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", OTHER),
            Some(11.0)
        );
        assert_eq!(sum(&f, "pg_stat_statements_calls_total", "app"), 1014.0);
        assert!((sum(&f, "pg_stat_statements_seconds_total", "app") - 0.961).abs() < 1e-12);
        assert_eq!(
            find(&f, "pg_stat_statements_mean_seconds")
                .unwrap()
                .value_of(&[("datname", "app"), ("user", "u"), ("queryid", "2")]),
            Some(0.3)
        );
    }

    #[test]
    fn a_newcomer_starts_at_zero_and_its_first_interval_follows() {
        let mut t = tracker(1);
        t.update(&reading(vec![
            row("app", 1, 10.0, 100.0),
            row("app", 2, 1.0, 1.0),
        ]));
        // Statement 2 now takes most time: a series at 0 first...
        t.update(&reading(vec![
            row("app", 1, 11.0, 101.0),
            row("app", 2, 5.0, 500.0),
        ]));
        let f = t.families();
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", "2"),
            Some(0.0)
        );
        // ...statement 1 keeps its series, its increase went to __other__.
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", "1"),
            Some(10.0)
        );
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", OTHER),
            Some(2.0)
        );
        // Next collection: the held-back interval arrives; nothing is lost.
        t.update(&reading(vec![
            row("app", 1, 11.0, 101.0),
            row("app", 2, 6.0, 600.0),
        ]));
        let f = t.families();
        assert_eq!(
            value(&f, "pg_stat_statements_calls_total", "app", "2"),
            Some(5.0)
        );
        assert_eq!(sum(&f, "pg_stat_statements_calls_total", "app"), 17.0);
    }

    #[test]
    fn counters_survive_a_reset_and_never_go_down() {
        let mut t = tracker(1);
        t.update(&reading(vec![
            row("app", 1, 100.0, 100.0),
            row("app", 2, 50.0, 10.0),
        ]));
        let before = t.families();
        // pg_stat_statements_reset(), then statement 1 runs 120 times: more
        // than before the reset, so only the reset time tells.
        let mut r = reading(vec![row("app", 1, 120.0, 120.0)]);
        r.stats_reset = Some(2.0);
        t.update(&r);
        let after = t.families();
        assert_eq!(
            value(&after, "pg_stat_statements_calls_total", "app", "1"),
            Some(220.0)
        );
        for name in [
            "pg_stat_statements_calls_total",
            "pg_stat_statements_seconds_total",
            "pg_stat_statements_rows_total",
        ] {
            for s in &find(&before, name).unwrap().samples {
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_ref(), v.as_str()))
                    .collect();
                let crate::snapshot::Value::Number(b) = s.value else {
                    unreachable!()
                };
                let a = find(&after, name).unwrap().value_of(&labels).unwrap();
                assert!(a >= b, "{name} {labels:?}: {b} -> {a}");
            }
        }
        // Without a reset time (pg_stat_statements before 1.9), a drop tells.
        let mut t = tracker(1);
        let mut r = reading(vec![row("app", 1, 100.0, 100.0)]);
        r.stats_reset = None;
        t.update(&r);
        let mut r = reading(vec![row("app", 1, 5.0, 5.0)]);
        r.stats_reset = None;
        t.update(&r);
        assert_eq!(
            value(&t.families(), "pg_stat_statements_calls_total", "app", "1"),
            Some(105.0)
        );
    }

    #[test]
    fn served_series_are_bounded_and_totals_stay_exact() {
        let mut t = tracker(5);
        let mut calls = vec![0.0; 5000];
        for round in 0..30 {
            let rows: Vec<StatementRow> = (0..5000)
                .map(|q| {
                    // A different handful of statements is busiest each round.
                    if (q + round * 7) % 50 == 0 {
                        calls[q] += 10.0;
                    } else if q % 3 == 0 {
                        calls[q] += 1.0;
                    }
                    let db = if q % 2 == 0 { "app" } else { "other" };
                    row(db, q as i64, calls[q], calls[q] * 2.0)
                })
                .collect();
            t.update(&reading(rows));
            let f = t.families();
            let series = find(&f, "pg_stat_statements_calls_total")
                .unwrap()
                .samples
                .len();
            assert!(series <= 2 * 5 + 2, "round {round}: {series} series");
        }
        // One more quiet round brings in whatever was held back.
        let rows: Vec<StatementRow> = (0..5000)
            .map(|q| {
                row(
                    if q % 2 == 0 { "app" } else { "other" },
                    q as i64,
                    calls[q],
                    calls[q] * 2.0,
                )
            })
            .collect();
        t.update(&reading(rows));
        let f = t.families();
        let truth_app: f64 = (0..5000).step_by(2).map(|q| calls[q]).sum();
        // Series that left /metrics took their counts with them; the
        // remembered accumulators still hold every call.
        let remembered: f64 = t
            .statements
            .iter()
            .filter(|(k, _)| k.0 == "app")
            .map(|(_, a)| a.total.calls)
            .sum::<f64>()
            + t.other["app"].total.calls;
        assert_eq!(remembered, truth_app);
        assert!(sum(&f, "pg_stat_statements_calls_total", "app") <= truth_app);
    }

    #[test]
    fn texts_are_fetched_once_and_cleaned() {
        let mut t = tracker(2);
        t.update(&reading(vec![
            row("app", 1, 1.0, 5.0),
            row("app", 2, 1.0, 4.0),
        ]));
        assert_eq!(t.missing_texts(), vec![1, 2]);
        t.add_texts(
            &[1, 2],
            [
                (1, "SELECT *\n  FROM appointments\tWHERE id = $1".to_owned()),
                (2, "ALTER ROLE x PASSWORD 'hunter2'".to_owned()),
            ],
        );
        assert!(t.missing_texts().is_empty());
        let f = t.families();
        let text = find(&f, "pg_stat_statements_query_id").unwrap();
        assert_eq!(
            text.value_of(&[
                ("queryid", "1"),
                ("query", "SELECT * FROM appointments WHERE id = $1")
            ]),
            Some(1.0)
        );
        assert!(!format!("{f:?}").contains("hunter2"));
        // A text pg_stat_statements no longer has is not asked for again
        // at every collection (each ask reads the whole text file).
        t.update(&reading(vec![
            row("app", 1, 1.0, 5.0),
            row("app", 2, 1.0, 4.0),
            row("app", 3, 9.0, 90.0),
        ]));
        assert_eq!(t.missing_texts(), vec![3]);
        t.add_texts(&[3], []);
        assert!(t.missing_texts().is_empty());
        let f = t.families();
        assert_eq!(
            find(&f, "pg_stat_statements_query_id")
                .unwrap()
                .samples
                .len(),
            2
        );
        assert_eq!(clean_text("abcdef", 3), "abc…");
        assert_eq!(clean_text("é€ü", 2), "é€…");

        let mut quiet = StatementTracker::new(StatementsConfig {
            limit: 2,
            include_query: false,
            query_length: 10,
        });
        quiet.update(&reading(vec![row("app", 1, 1.0, 5.0)]));
        assert!(quiet.missing_texts().is_empty());
    }

    #[test]
    fn top_level_and_nested_rows_are_added_up() {
        let mut nested = row("app", 1, 2.0, 20.0);
        nested.stats_since = Some(5.0);
        let rows = merge_rows(vec![
            row("app", 1, 10.0, 100.0),
            row("app", 2, 1.0, 1.0),
            nested,
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].counts.calls, 12.0);
        assert!((rows[0].counts.exec_seconds - 0.12).abs() < 1e-12);
        assert_eq!(rows[0].stats_since, Some(5.0));
        let mut hidden = row("app", 0, 1.0, 1.0);
        hidden.queryid = None;
        assert_eq!(merge_rows(vec![hidden.clone(), hidden]).len(), 1);
    }

    #[test]
    fn statements_sql_follows_the_extension_version() {
        let v110 = stats_sql("public", "1.10");
        assert!(v110.contains("total_exec_time") && v110.contains("pg_stat_statements_info"));
        assert!(v110.contains("\"public\".pg_stat_statements(false)"));
        assert!(!v110.contains("stats_since"));
        let v17 = stats_sql("ext", "1.11");
        assert!(v17.contains("stats_since"));
        let v13 = stats_sql("public", "1.8");
        assert!(v13.contains("total_exec_time") && !v13.contains("pg_stat_statements_info"));
        let v12 = stats_sql("public", "1.7");
        assert!(v12.contains("s.total_time / 1000"));
        assert_eq!(parse_version("1.10"), (1, 10));
        assert!(parse_version("1.10") > parse_version("1.9"));
    }
}
