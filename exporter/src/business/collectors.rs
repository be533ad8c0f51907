//! The running business collectors, one per query, and the SIGHUP reload of
//! the query file that adds, replaces or removes them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgPool;
use tracing::info;

use super::{
    collector_name, BusinessHealth, BusinessQuerySource, QueryDef, QueryFile, RUNNER_GRACE,
};
use crate::reload::{BoxError, Reloader};
use crate::runner::{self, CollectorSlot, Schedule, SlotList};

pub struct BusinessCollectors {
    pool: PgPool,
    default_max_series: usize,
    health: Arc<BusinessHealth>,
    running: Mutex<Vec<(QueryDef, Arc<CollectorSlot>)>>,
}

impl BusinessCollectors {
    /// Starts one collector per query; returns them with their slots.
    pub fn start(
        file: QueryFile,
        pool: PgPool,
        default_max_series: usize,
        health: Arc<BusinessHealth>,
    ) -> (Arc<Self>, Vec<Arc<CollectorSlot>>) {
        let collectors = Arc::new(BusinessCollectors {
            pool,
            default_max_series,
            health,
            running: Mutex::new(Vec::new()),
        });
        let (_, added) = collectors.apply(file);
        (collectors, added)
    }

    fn start_query(&self, query: QueryDef, delay: Duration) -> Arc<CollectorSlot> {
        // The query enforces its own limit (see BusinessQuerySource::read);
        // the runner's is only a backstop.
        let schedule = Schedule {
            timeout: query.schedule.timeout + RUNNER_GRACE,
            ..query.schedule
        };
        runner::start_after(
            collector_name(&query),
            BusinessQuerySource::new(
                query,
                self.pool.clone(),
                self.default_max_series,
                self.health.clone(),
            ),
            schedule,
            delay,
        )
    }

    /// Makes the running collectors those of `file`: a query whose
    /// definition did not change keeps running (its counters continue), a
    /// changed or new one starts afresh, a removed one stops. Returns the
    /// names of the stopped collectors and the slots of the started ones.
    pub fn apply(&self, file: QueryFile) -> (Vec<String>, Vec<Arc<CollectorSlot>>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut stopped = Vec::new();
        running.retain(|(query, slot)| {
            let keep = file.queries.contains(query);
            if !keep {
                slot.stop();
                stopped.push(slot.name.clone());
            }
            keep
        });
        let new: Vec<QueryDef> = file
            .queries
            .iter()
            .filter(|q| !running.iter().any(|(r, _)| r == *q))
            .cloned()
            .collect();
        // Spread the first runs over up to a second per query (and never
        // more than the interval), so the queries do not all queue for the
        // pool at the same instant, nor stay aligned afterwards.
        let count = new.len().max(1) as u32;
        let mut added = Vec::new();
        for (i, query) in new.into_iter().enumerate() {
            let spread = (query.schedule.interval / count).min(Duration::from_secs(1));
            let slot = self.start_query(query.clone(), spread * i as u32);
            running.push((query, slot.clone()));
            added.push(slot);
        }
        self.health
            .track(running.iter().map(|(q, _)| collector_name(q)));
        (stopped, added)
    }
}

/// Re-reads `--business.queries` on SIGHUP.
pub struct QueryFileReloader {
    pub path: PathBuf,
    pub collectors: Arc<BusinessCollectors>,
    pub slots: SlotList,
}

impl Reloader for QueryFileReloader {
    fn name(&self) -> &str {
        "business_queries"
    }

    fn reload(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            // A file that does not load changes nothing.
            let file = QueryFile::load(&self.path)?;
            let (stopped, added) = self.collectors.apply(file);
            let names: Vec<String> = added.iter().map(|s| s.name.clone()).collect();
            self.slots.rcu(|list| {
                let mut list: Vec<Arc<CollectorSlot>> = list
                    .iter()
                    .filter(|s| !stopped.contains(&s.name))
                    .cloned()
                    .collect();
                list.extend(added.iter().cloned());
                list
            });
            info!(started = ?names, stopped = ?stopped, "business queries reloaded");
            Ok(())
        })
    }
}
