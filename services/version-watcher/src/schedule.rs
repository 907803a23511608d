//! When a prober probes next (pure): the poll interval plus up to 10% jitter after a success;
//! exponential back-off with jitter after failures, never sooner than the upstream's
//! `Retry-After`.

use std::time::Duration;

/// The first back-off delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// The back-off never exceeds the larger of the poll interval and this…
pub const BACKOFF_FLOOR_CAP: Duration = Duration::from_secs(5);
/// …and never this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The delay before the next probe. `failures` is the number of failed probes in a row (0 after a
/// success); `random` is uniform in `[0, 1)`.
pub fn next_delay(
    interval: Duration,
    failures: u32,
    retry_after: Option<Duration>,
    random: f64,
) -> Duration {
    let random = random.clamp(0.0, 1.0);
    if failures == 0 {
        return interval + interval.mul_f64(0.1 * random);
    }
    let cap = interval.max(BACKOFF_FLOOR_CAP).min(BACKOFF_MAX);
    let exponential = BACKOFF_INITIAL.saturating_mul(2u32.saturating_pow((failures - 1).min(20)));
    let capped = exponential.min(cap);
    // Jitter in the upper half so that many sources failing together spread out.
    let delay = capped / 2 + (capped / 2).mul_f64(random);
    delay.max(retry_after.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_waits_the_interval_plus_at_most_ten_percent() {
        let interval = Duration::from_secs(10);
        assert_eq!(next_delay(interval, 0, None, 0.0), interval);
        assert_eq!(next_delay(interval, 0, None, 0.999_999).as_millis(), 10_999);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let interval = Duration::from_secs(60);
        let delays: Vec<u128> = (1..=9)
            .map(|n| next_delay(interval, n, None, 1.0).as_millis())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(next_delay(interval, 3, None, 0.0), Duration::from_secs(1));
        let fast = Duration::from_secs(1);
        assert_eq!(next_delay(fast, 30, None, 1.0), BACKOFF_FLOOR_CAP);
    }

    #[test]
    fn retry_after_is_honoured() {
        let delay = next_delay(
            Duration::from_secs(1),
            1,
            Some(Duration::from_secs(30)),
            0.5,
        );
        assert_eq!(delay, Duration::from_secs(30));
    }
}
