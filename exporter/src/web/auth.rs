//! Basic auth with bcrypt hashes, checked without starving the exporter.
//!
//! A bcrypt check costs tens of milliseconds of CPU at cost 10. Done on the
//! async worker threads, a client sending wrong passwords would stall the
//! scrapes, the collectors' timers and the Celery event consumer. So:
//!
//! - checks run on a blocking thread, one at a time (`VerifyGate`), leaving
//!   the other core to the runtime;
//! - at most `MAX_WAITING` checks wait for their turn; further requests with
//!   credentials not seen before are answered 429 at once, costing nothing;
//! - pairs that passed are remembered per user (a keyed digest, compared in
//!   constant time, a few per user), so a scraper pays bcrypt once;
//! - pairs that failed are remembered too (bounded, least recently used
//!   dropped), so a misconfigured scraper retrying the same wrong password
//!   does not pay bcrypt every scrape.
//!
//! The digests are HMAC-SHA256 under a key drawn at start-up: a memory dump
//! does not give anyone a fast way to test password guesses.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use ring::hmac;
use tokio::sync::Semaphore;

/// Checks waiting for their turn beyond the one running. Enough for a few
/// scrapers whose credentials changed at once; small enough that a flood is
/// turned away in microseconds.
pub const MAX_WAITING: usize = 8;

/// Passwords remembered per user: a rotation overlaps old and new.
const VERIFIED_PER_USER: usize = 4;

/// Failed pairs remembered.
const REFUSED_CACHE: usize = 1024;

/// Compared against when the user is unknown, so that unknown users take as
/// long to refuse as wrong passwords. (The toolkit's "fakepassword" hash.)
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Refused,
    /// Too many checks already waiting: try again later.
    Busy,
}

/// Bounds bcrypt work for the whole process; it outlives reloads of the
/// users.
#[derive(Debug)]
pub struct VerifyGate {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Default for VerifyGate {
    fn default() -> Self {
        VerifyGate {
            running: Arc::new(Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// Decrements the waiting count even when the request is dropped while it
/// waits (the client went away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    key: hmac::Key,
    verified: Mutex<HashMap<String, VecDeque<hmac::Tag>>>,
    refused: Mutex<LruCache<Vec<u8>, ()>>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for BasicAuth {
    fn default() -> Self {
        BasicAuth::new(BTreeMap::new())
    }
}

impl BasicAuth {
    /// `users` maps names to bcrypt hashes (already checked to be hashes).
    pub fn new(users: BTreeMap<String, String>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        // Failing to draw a key leaves the all-zero key: the cache then only
        // loses its protection against memory dumps, not its correctness.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]));
        BasicAuth {
            users,
            key,
            verified: Mutex::new(HashMap::new()),
            refused: Mutex::new(LruCache::new(
                NonZeroUsize::new(REFUSED_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn users(&self) -> &BTreeMap<String, String> {
        &self.users
    }

    fn message(user: &str, password: &str) -> Vec<u8> {
        // Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
        let mut m = Vec::with_capacity(8 + user.len() + password.len());
        m.extend_from_slice(&(user.len() as u64).to_le_bytes());
        m.extend_from_slice(user.as_bytes());
        m.extend_from_slice(password.as_bytes());
        m
    }

    /// A pair that passed before. `hmac::verify` compares in constant time.
    fn known_good(&self, user: &str, message: &[u8]) -> bool {
        let Ok(verified) = self.verified.lock() else {
            return false;
        };
        verified.get(user).is_some_and(|tags| {
            tags.iter()
                .any(|tag| hmac::verify(&self.key, message, tag.as_ref()).is_ok())
        })
    }

    pub async fn check(self: &Arc<Self>, gate: &VerifyGate, user: &str, password: &str) -> Verdict {
        let message = Self::message(user, password);
        if self.known_good(user, &message) {
            return Verdict::Allowed;
        }
        let tag = hmac::sign(&self.key, &message);
        if self
            .refused
            .lock()
            .map(|mut r| r.get(tag.as_ref()).is_some())
            .unwrap_or(false)
        {
            return Verdict::Refused;
        }
        // Counts this request among the waiting ones, or turns it away.
        if gate
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_WAITING).then_some(n + 1)
            })
            .is_err()
        {
            return Verdict::Busy;
        }
        let waiting = Waiting(&gate.waiting);
        let Ok(permit) = gate.running.clone().acquire_owned().await else {
            return Verdict::Busy;
        };
        drop(waiting);
        let hash = self.users.get(user).cloned();
        let password = password.to_owned();
        // The permit moves into the blocking task, so the bound holds even
        // when the request is dropped before the check ends.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match hash {
                Some(hash) => bcrypt::verify(password, &hash).unwrap_or(false),
                None => {
                    let _ = bcrypt::verify(password, DUMMY_HASH);
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            if let Ok(mut verified) = self.verified.lock() {
                let tags = verified.entry(user.to_owned()).or_default();
                if tags.len() >= VERIFIED_PER_USER {
                    tags.pop_front();
                }
                tags.push_back(tag);
            }
            Verdict::Allowed
        } else {
            if let Ok(mut refused) = self.refused.lock() {
                refused.put(tag.as_ref().to_vec(), ());
            }
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(password: &str) -> Arc<BasicAuth> {
        let hash = bcrypt::hash(password, 4).unwrap();
        Arc::new(BasicAuth::new(BTreeMap::from([("prom".to_owned(), hash)])))
    }

    #[tokio::test]
    async fn checks_and_caches_both_ways() {
        let gate = VerifyGate::default();
        let a = auth("pw");
        assert!(a.enabled());
        assert_eq!(a.check(&gate, "prom", "pw").await, Verdict::Allowed);
        assert_eq!(
            a.check(&gate, "prom", "pw").await,
            Verdict::Allowed,
            "cached"
        );
        assert_eq!(a.check(&gate, "prom", "wrong").await, Verdict::Refused);
        assert_eq!(
            a.check(&gate, "prom", "wrong").await,
            Verdict::Refused,
            "cached"
        );
        assert_eq!(a.check(&gate, "nobody", "pw").await, Verdict::Refused);
        assert_eq!(a.check(&gate, "pro", "mpw").await, Verdict::Refused);
        assert!(!BasicAuth::default().enabled());
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_new_pairs_is_turned_away_beyond_the_queue() {
        let gate = Arc::new(VerifyGate::default());
        let a = auth("pw");
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (a, gate) = (a.clone(), gate.clone());
                tokio::spawn(async move { a.check(&gate, "prom", &format!("guess-{i}")).await })
            })
            .collect();
        let mut verdicts = Vec::new();
        for t in tasks {
            verdicts.push(t.await.unwrap());
        }
        let busy = verdicts.iter().filter(|v| **v == Verdict::Busy).count();
        let refused = verdicts.iter().filter(|v| **v == Verdict::Refused).count();
        assert_eq!(busy + refused, 64, "{verdicts:?}");
        assert!(busy > 0 && refused >= 1, "{verdicts:?}");
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(a.check(&gate, "prom", "pw").await, Verdict::Allowed);
    }
}
