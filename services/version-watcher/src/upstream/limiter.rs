//! A per-host token bucket, plus pauses requested by upstreams (`Retry-After`).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Limits requests per upstream host.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hosts: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    /// `rate` requests per second per host, bursts up to `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a request to `host` may go out.
    pub async fn acquire(&self, host: &str) {
        loop {
            let wait = {
                let mut hosts = self.hosts.lock().expect("limiter poisoned");
                let now = Instant::now();
                let bucket = hosts.entry(host.to_string()).or_insert(Bucket {
                    tokens: self.burst,
                    refilled: now,
                    paused_until: None,
                });
                match bucket.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ => {
                        bucket.paused_until = None;
                        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
                        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
                        bucket.refilled = now;
                        if bucket.tokens >= 1.0 {
                            bucket.tokens -= 1.0;
                            None
                        } else {
                            Some(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
                        }
                    }
                }
            };
            match wait {
                None => return,
                Some(delay) => tokio::time::sleep(delay).await,
            }
        }
    }

    /// Holds every request to `host` for `delay`.
    pub fn pause(&self, host: &str, delay: Duration) {
        let mut hosts = self.hosts.lock().expect("limiter poisoned");
        let now = Instant::now();
        let bucket = hosts.entry(host.to_string()).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
            paused_until: None,
        });
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
