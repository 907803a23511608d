//! Restart back-off as the kubelet computes it: the first restart of a crashed container is
//! immediate, then each further restart waits `base`, `2·base`, `4·base`, … capped at `max`
//! (the real kubelet uses 10 s and 5 min). A container that ran for at least `2·max` before it
//! exited starts over from an immediate restart, as the kubelet forgets back-off entries that were
//! not touched for twice the cap.

use std::time::Duration;

/// Back-off parameters for CrashLoopBackOff and ImagePullBackOff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the second restart.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// The real kubelet's values: 10 s doubling up to 5 min.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before the next start of a container that has already been restarted
    /// `restarts` times and whose last run lasted `ran_for`.
    pub fn delay(&self, restarts: u32, ran_for: Duration) -> Duration {
        if restarts == 0 || ran_for >= self.max.saturating_mul(2) {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(restarts - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retrying an image pull that has failed `failures` times (≥ 1).
    pub fn pull_delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_restart_is_immediate_then_doubles_up_to_the_cap() {
        let b = Backoff {
            base: MS * 100,
            max: MS * 500,
        };
        let d: Vec<_> = (0..6).map(|n| b.delay(n, MS)).collect();
        assert_eq!(
            d,
            vec![
                Duration::ZERO,
                MS * 100,
                MS * 200,
                MS * 400,
                MS * 500,
                MS * 500
            ]
        );
    }

    #[test]
    fn a_long_run_resets_the_back_off() {
        let b = Backoff::default();
        assert_eq!(b.delay(7, Duration::from_secs(600)), Duration::ZERO);
        assert_eq!(
            b.delay(7, Duration::from_secs(599)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn huge_restart_counts_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.delay(u32::MAX, MS), Duration::from_secs(300));
        assert_eq!(b.pull_delay(u32::MAX), Duration::from_secs(300));
        assert_eq!(b.pull_delay(1), Duration::from_secs(10));
    }
}
