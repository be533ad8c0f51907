//! A background scraper that records every counter going down between two
//! scrapes: the property "counters never decrease" checked as Prometheus
//! would see it, at a finer grain than its scrape interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{get_text, Metrics};

pub struct DecreaseWatch {
    decreases: Arc<Mutex<Vec<String>>>,
    scrapes: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl DecreaseWatch {
    /// Scrapes `url` every 200 ms, watching the `_total` series of the
    /// families `watched` accepts.
    pub fn start(url: String, watched: fn(&str) -> bool) -> DecreaseWatch {
        let decreases = Arc::new(Mutex::new(Vec::new()));
        let scrapes = Arc::new(Mutex::new(0));
        let (d, n) = (decreases.clone(), scrapes.clone());
        let task = tokio::spawn(async move {
            let mut last: BTreeMap<String, f64> = BTreeMap::new();
            loop {
                let m = Metrics::parse(&get_text(&url).await);
                for ((name, labels), value) in &m.series {
                    if !(name.ends_with("_total") && watched(name)) {
                        continue;
                    }
                    let series = format!("{name}{labels:?}");
                    if let Some(before) = last.get(&series) {
                        if value < before {
                            d.lock()
                                .unwrap()
                                .push(format!("{series}: {before} -> {value}"));
                        }
                    }
                    last.insert(series, *value);
                }
                *n.lock().unwrap() += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        DecreaseWatch {
            decreases,
            scrapes,
            task,
        }
    }

    /// Stops watching; returns the decreases seen and the number of scrapes.
    pub fn stop(self) -> (Vec<String>, u64) {
        self.task.abort();
        let decreases = self.decreases.lock().unwrap().clone();
        let scrapes = *self.scrapes.lock().unwrap();
        (decreases, scrapes)
    }
}
