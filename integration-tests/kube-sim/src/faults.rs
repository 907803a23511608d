//! Fault injection: error rates per verb/resource with a chosen code, added latency, closing
//! all open watches and compacting history. Random choices come from a seeded RNG. Every
//! injected error is counted (per verb), so a test can check its faults actually fired.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::status::ApiError;
use crate::store::Store;

/// One error-injection rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRule {
    /// Verb to match (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`); None = any.
    #[serde(default)]
    pub verb: Option<String>,
    /// Plural resource to match (e.g. `pods`); None = any.
    #[serde(default)]
    pub resource: Option<String>,
    /// User name to match (e.g. `system:serviceaccount:autocrane-system:autocrane-controller`);
    /// None = any. Scopes the faults to one client, so a test can disturb the component it checks
    /// while its own reads, and the other components, see a healthy server.
    #[serde(default)]
    pub user: Option<String>,
    /// Probability in [0, 1] that a matching request fails.
    pub rate: f64,
    /// HTTP code: 500, 429, 409 (others give a 500-style InternalError with that code).
    pub code: u16,
    /// Retry-After seconds for 429 (default 1).
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

/// The whole fault configuration, as `/_sim/faults` reads and writes it.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultConfig {
    /// Error rules: each rule matching a request draws in order; the first that fires wins.
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
    /// Latency added to every API request.
    #[serde(default)]
    pub latency_ms: u64,
    /// RNG seed; setting it restarts the random sequence.
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    config: FaultConfig,
    rng: StdRng,
    /// Errors injected so far, per verb (kept across `set`/`clear`).
    injected: BTreeMap<String, u64>,
}

/// Handle to the simulator's faults; cheap to clone.
#[derive(Debug, Clone)]
pub struct Faults {
    inner: Arc<Mutex<Inner>>,
    close_tx: Arc<watch::Sender<u64>>,
    store: Arc<Mutex<Store>>,
}

impl Faults {
    pub(crate) fn new(close_tx: Arc<watch::Sender<u64>>, store: Arc<Mutex<Store>>) -> Self {
        Faults {
            inner: Arc::new(Mutex::new(Inner {
                config: FaultConfig::default(),
                rng: StdRng::seed_from_u64(0),
                injected: BTreeMap::new(),
            })),
            close_tx,
            store,
        }
    }

    /// Replace the whole configuration (reseeding when `seed` is set).
    pub fn set(&self, config: FaultConfig) {
        let mut i = self.inner.lock().expect("faults lock");
        if let Some(s) = config.seed {
            i.rng = StdRng::seed_from_u64(s);
        }
        i.config = config;
    }

    /// The current configuration.
    pub fn get(&self) -> FaultConfig {
        self.inner.lock().expect("faults lock").config.clone()
    }

    /// Add one error rule.
    pub fn add_error(&self, rule: ErrorRule) {
        self.inner
            .lock()
            .expect("faults lock")
            .config
            .errors
            .push(rule);
    }

    /// Set the added latency.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().expect("faults lock").config.latency_ms = latency.as_millis() as u64;
    }

    /// Reseed the RNG.
    pub fn seed(&self, seed: u64) {
        let mut i = self.inner.lock().expect("faults lock");
        i.rng = StdRng::seed_from_u64(seed);
        i.config.seed = Some(seed);
    }

    /// Remove all error rules and latency.
    pub fn clear(&self) {
        self.inner.lock().expect("faults lock").config = FaultConfig::default();
    }

    /// End every open watch stream now (clients see the stream close and re-watch).
    pub fn close_watches(&self) {
        self.close_tx.send_modify(|g| *g += 1);
    }

    /// Drop all retained history, so any watch resuming from an older resourceVersion gets an
    /// in-stream 410 Expired and the client must relist.
    pub fn compact(&self) {
        self.store.lock().expect("store lock").compact();
    }

    /// How many errors were injected so far (all verbs), since the simulator started.
    pub fn injected(&self) -> u64 {
        self.injected_by_verb().values().sum()
    }

    /// How many errors were injected so far, per verb (`get`, `watch`, `patch`, …).
    pub fn injected_by_verb(&self) -> BTreeMap<String, u64> {
        self.inner.lock().expect("faults lock").injected.clone()
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.inner.lock().expect("faults lock").config.latency_ms)
    }

    /// The injected error for this request, if any.
    pub(crate) fn error_for(
        &self,
        verb: &str,
        resource: &str,
        name: &str,
        group: &str,
        user: &str,
    ) -> Option<ApiError> {
        let mut i = self.inner.lock().expect("faults lock");
        // Each matching rule draws in turn and the first that fires wins, so two rules on one
        // verb (30% 500, then 20% 409) both fire at their rates instead of the first one
        // shadowing the second whenever it matches.
        let matching: Vec<ErrorRule> = i
            .config
            .errors
            .iter()
            .filter(|r| {
                r.verb.as_deref().is_none_or(|v| v == verb)
                    && r.resource.as_deref().is_none_or(|x| x == resource)
                    && r.user.as_deref().is_none_or(|u| u == user)
            })
            .cloned()
            .collect();
        let rule = matching
            .into_iter()
            .find(|rule| i.rng.random_bool(rule.rate.clamp(0.0, 1.0)))?;
        *i.injected.entry(verb.to_string()).or_default() += 1;
        let target = crate::status::Target {
            group,
            resource,
            name,
        };
        Some(match rule.code {
            429 => ApiError::too_many_requests(rule.retry_after_seconds.unwrap_or(1)),
            409 => ApiError::conflict(target),
            code => {
                let mut e = ApiError::internal("injected fault");
                e.code = code;
                e
            }
        })
    }
}
