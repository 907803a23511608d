//! A per-host token bucket, plus pauses requested by upstreams (`Retry-After`).
//!
//! The defaults fit 1,000 sources on one host polled every 10 s (the fleet the watcher is sized
//! for) without a request ever waiting:
//!
//! - A steady-state OCI probe sends 2 requests: the tag list (one page) and a `HEAD` of the current
//!   tag's manifest, to notice a moved tag (git and HTTP probes send 1). 1,000 sources every 10 s
//!   are 1,000 × 2 / 10 s = 200 requests/s; [`DEFAULT_RATE`] is 250/s, 25% headroom for token
//!   fetches and the digests of new tags. (Probes come 10–11 s apart with jitter, so the mean is
//!   ~190/s; at the 60 s default poll interval the same budget covers 6,000 sources.)
//! - The first probes of 1,000 sources added in one `WatchVersions` (or restored at start) all
//!   begin at once: 1,000 × 2 = 2,000 requests, the [`DEFAULT_BURST`].
//! - Together: in any window of L seconds, 1,000 sources probing at most once per 10 s send at
//!   most 2,000 × (⌊L/10⌋ + 1) ≤ 2,000 + 200·L requests, within the bucket's 2,000 + 250·L.
//!
//! Failing sources back off from 0.5 s and may be throttled; that is what the limit is for.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// Default requests per second to one host (see the module docs for the arithmetic).
pub const DEFAULT_RATE: f64 = 250.0;
/// Default burst of requests to one host (see the module docs for the arithmetic).
pub const DEFAULT_BURST: u32 = 2000;

/// Limits requests per upstream host.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hosts: Mutex<HashMap<String, Bucket>>,
    throttled: Counter,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            refilled: now,
            paused_until: None,
        }
    }

    /// Takes a token at `now`, or says how long to wait for one.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Option<Duration> {
        match self.paused_until {
            Some(until) if until > now => Some(until - now),
            _ => {
                self.paused_until = None;
                let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
                self.tokens = (self.tokens + elapsed * rate).min(burst);
                self.refilled = now;
                if self.tokens >= 1.0 {
                    self.tokens -= 1.0;
                    None
                } else {
                    Some(Duration::from_secs_f64((1.0 - self.tokens) / rate))
                }
            }
        }
    }
}

impl RateLimiter {
    /// `rate` requests per second per host, bursts up to `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            hosts: Mutex::new(HashMap::new()),
            throttled: Counter::default(),
        }
    }

    /// Requests that had to wait for the limit or a pause (a metric).
    pub fn throttled(&self) -> Counter {
        self.throttled.clone()
    }

    /// Waits until a request to `host` may go out.
    pub async fn acquire(&self, host: &str) {
        let mut waited = false;
        loop {
            let wait = {
                let mut hosts = self.hosts.lock().expect("limiter poisoned");
                let now = Instant::now();
                hosts
                    .entry(host.to_string())
                    .or_insert_with(|| Bucket::full(self.burst, now))
                    .take(now, self.rate, self.burst)
            };
            match wait {
                None => return,
                Some(delay) => {
                    if !waited {
                        waited = true;
                        self.throttled.inc();
                    }
                    tokio::time::sleep(delay).await
                }
            }
        }
    }

    /// Holds every request to `host` for `delay`.
    pub fn pause(&self, host: &str, delay: Duration) {
        let mut hosts = self.hosts.lock().expect("limiter poisoned");
        let now = Instant::now();
        let bucket = hosts
            .entry(host.to_string())
            .or_insert_with(|| Bucket::full(self.burst, now));
        let until = now + delay;
        bucket.paused_until = Some(bucket.paused_until.map_or(until, |old| old.max(until)));
    }

    /// When requests to `host` may resume, if it is paused.
    pub fn paused_until(&self, host: &str) -> Option<Instant> {
        let hosts = self.hosts.lock().expect("limiter poisoned");
        hosts
            .get(host)
            .and_then(|b| b.paused_until)
            .filter(|until| *until > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bursts_then_paces() {
        let limiter = RateLimiter::new(50.0, 2);
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire("h").await;
        }
        // two from the burst, two more at 20 ms each
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(38), "{elapsed:?}");
        limiter.acquire("other").await;
    }

    /// 1,000 OCI sources on one host (2 requests a probe), all first probed at once, then every
    /// 10 s plus up to 10% jitter (as `schedule` does) for ten minutes: no request waits.
    #[test]
    fn the_defaults_let_a_thousand_sources_poll_every_ten_seconds_unthrottled() {
        const SOURCES: usize = 1000;
        const REQUESTS_PER_PROBE: usize = 2;
        let start = Instant::now();
        let burst = f64::from(DEFAULT_BURST);
        let mut bucket = Bucket::full(burst, start);
        // (when, source), processed in time order.
        let mut due: std::collections::BTreeMap<(Duration, usize), ()> =
            (0..SOURCES).map(|s| ((Duration::ZERO, s), ())).collect();
        let mut random = 0x2545_f491_4f6c_dd1d_u64;
        let mut probes = 0;
        while let Some(((at, source), ())) = due.pop_first() {
            if at > Duration::from_secs(600) {
                break;
            }
            for _ in 0..REQUESTS_PER_PROBE {
                let wait = bucket.take(start + at, DEFAULT_RATE, burst);
                assert_eq!(wait, None, "request of source {source} at {at:?} throttled");
            }
            probes += 1;
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let jitter = (random % 1000) as f64 / 1000.0;
            let next = crate::schedule::next_delay(Duration::from_secs(10), 0, None, jitter);
            due.insert((at + next, source), ());
        }
        assert!(probes > 50 * SOURCES, "{probes} probes simulated");
        // The worst case for the bucket: every source probing in the same instant, every 10 s.
        let mut bucket = Bucket::full(burst, start);
        for round in 0..60u32 {
            for _ in 0..SOURCES * REQUESTS_PER_PROBE {
                let now = start + Duration::from_secs(10) * round;
                assert_eq!(bucket.take(now, DEFAULT_RATE, burst), None, "round {round}");
            }
        }
    }

    #[tokio::test]
    async fn pause_holds_requests() {
        let limiter = RateLimiter::new(1000.0, 10);
        limiter.pause("h", Duration::from_millis(80));
        assert!(limiter.paused_until("h").is_some());
        let start = Instant::now();
        limiter.acquire("h").await;
        assert!(start.elapsed() >= Duration::from_millis(70));
    }
}
