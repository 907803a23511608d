//! The rollup health of a pod: the worst unexpired watchdog level, or `unknown` when there is none.
//! The WatchdogListener writes it to the label `status.autocrane.io/health`; the controller reads it.

use std::fmt;

/// The rollup health; ordered from best known to worst (`Unknown < Info < Warning < Error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// No unexpired watchdog.
    Unknown,
    /// The worst watchdog is info.
    Info,
    /// The worst watchdog is warning.
    Warning,
    /// At least one watchdog is error.
    Error,
}

impl Health {
    /// The value of the label `status.autocrane.io/health`.
    pub fn label_value(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Info => "info",
            Health::Warning => "warning",
            Health::Error => "error",
        }
    }

    /// The health a label value names. Anything else (a hand-edited label, a missing one) is
    /// `Unknown`: only the WatchdogListener's own values count.
    pub fn from_label(value: Option<&str>) -> Health {
        match value {
            Some("info") => Health::Info,
            Some("warning") => Health::Warning,
            Some("error") => Health::Error,
            _ => Health::Unknown,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_round_trip_and_order_by_severity() {
        for health in [
            Health::Unknown,
            Health::Info,
            Health::Warning,
            Health::Error,
        ] {
            assert_eq!(Health::from_label(Some(health.label_value())), health);
        }
        assert!(Health::Unknown < Health::Info && Health::Warning < Health::Error);
        // The original wrote `Error` by hand and missed its own `health=error` selector (W11).
        assert_eq!(Health::from_label(Some("Error")), Health::Unknown);
        assert_eq!(Health::from_label(None), Health::Unknown);
    }
}
