//! The DataDeployer's report grammar: the message of the `data-<source>` watchdog a pod's
//! DataDeployer posts after each outcome, which the controller reads to know which data version a
//! pod has applied (or failed to apply).
//!
//! | outcome | level | message |
//! |---|---|---|
//! | applied | info | `applied <version>` |
//! | failed | error | `version <version>: <reason>` |
//!
//! A version is whatever the DataRepository names it (a tag, a commit, an ETag): any non-empty text
//! without whitespace or `:`. A message is shortened to [`MAX_MESSAGE_BYTES`] by cutting the reason,
//! never the version, so a long reason cannot make a report unreadable.

use std::fmt;

use crate::watchdog::{Level, MAX_MESSAGE_BYTES};

/// What a DataDeployer reports for one data source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataReport {
    /// `version` is live in the pod.
    Applied {
        /// The data version.
        version: String,
    },
    /// Applying `version` failed; the previous version (if any) stays live.
    Failed {
        /// The data version that failed.
        version: String,
        /// Why, for people.
        reason: String,
    },
}

/// Why a watchdog message is not a data report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataReportError {
    /// Neither `applied <version>` nor `version <version>: <reason>`.
    #[error("expected \"applied <version>\" or \"version <version>: <reason>\", got {0:?}")]
    Shape(String),
    /// The level does not match the message (`applied` must be info, a failure error).
    #[error("a {message} report must have level {expected}, not {actual}")]
    Level {
        /// `applied` or `failed`.
        message: &'static str,
        /// The level the grammar requires.
        expected: Level,
        /// The level posted.
        actual: Level,
    },
}

const APPLIED: &str = "applied ";
const FAILED: &str = "version ";

fn is_version(text: &str) -> bool {
    !text.is_empty() && !text.contains(char::is_whitespace) && !text.contains(':')
}

impl DataReport {
    /// The data version the report is about.
    pub fn version(&self) -> &str {
        match self {
            DataReport::Applied { version } | DataReport::Failed { version, .. } => version,
        }
    }

    /// Whether the version is live.
    pub fn is_applied(&self) -> bool {
        matches!(self, DataReport::Applied { .. })
    }

    /// The watchdog level the report is posted with.
    pub fn level(&self) -> Level {
        match self {
            DataReport::Applied { .. } => Level::Info,
            DataReport::Failed { .. } => Level::Error,
        }
    }

    /// The watchdog message, at most [`MAX_MESSAGE_BYTES`] bytes (a long reason is cut and ends
    /// with `...`). A version too long to fit is never cut into another version: the message then
    /// ends with ` ..` and is not a report at all.
    pub fn format(&self) -> String {
        let mut message = self.to_string();
        if message.len() > MAX_MESSAGE_BYTES {
            let reason_start = match self {
                DataReport::Applied { .. } => message.len(),
                DataReport::Failed { reason, .. } => message.len() - reason.len(),
            };
            let mut cut = MAX_MESSAGE_BYTES - 3;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            // A version cannot hold whitespace, so the space keeps a cut version from parsing.
            message.push_str(if cut >= reason_start { "..." } else { " .." });
        }
        message
    }

    /// Parses a watchdog message posted with `level`.
    pub fn parse(level: Level, message: &str) -> Result<DataReport, DataReportError> {
        let shape = || DataReportError::Shape(message.chars().take(80).collect());
        let report = if let Some(version) = message.strip_prefix(APPLIED) {
            if !is_version(version) {
                return Err(shape());
            }
            DataReport::Applied {
                version: version.to_string(),
            }
        } else if let Some(rest) = message.strip_prefix(FAILED) {
            let (version, reason) = rest.split_once(": ").ok_or_else(shape)?;
            if !is_version(version) {
                return Err(shape());
            }
            DataReport::Failed {
                version: version.to_string(),
                reason: reason.to_string(),
            }
        } else {
            return Err(shape());
        };
        if report.level() != level {
            return Err(DataReportError::Level {
                message: if report.is_applied() {
                    "applied"
                } else {
                    "failed"
                },
                expected: report.level(),
                actual: level,
            });
        }
        Ok(report)
    }
}

impl fmt::Display for DataReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataReport::Applied { version } => write!(f, "{APPLIED}{version}"),
            DataReport::Failed { version, reason } => write!(f, "{FAILED}{version}: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(version: &str) -> DataReport {
        DataReport::Applied {
            version: version.into(),
        }
    }

    fn failed(version: &str, reason: &str) -> DataReport {
        DataReport::Failed {
            version: version.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn reports_round_trip() {
        for report in [
            applied("v1"),
            applied("3f2a9c0e1b"),
            failed("v2", "fetching blob sha256:ab: connection refused"),
            failed(
                "v3",
                "manifest path \"../x\": escapes the version directory",
            ),
            failed("v4", ""),
        ] {
            let message = report.format();
            assert_eq!(DataReport::parse(report.level(), &message), Ok(report));
        }
    }

    #[test]
    fn the_wire_format_is_fixed() {
        assert_eq!(applied("v1").format(), "applied v1");
        assert_eq!(failed("v2", "boom").format(), "version v2: boom");
        assert_eq!(applied("v1").level(), Level::Info);
        assert_eq!(failed("v2", "boom").level(), Level::Error);
    }

    #[test]
    fn a_long_reason_is_cut_but_the_version_survives() {
        let report = failed("v9", &"é".repeat(2 * MAX_MESSAGE_BYTES));
        let message = report.format();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with("..."));
        let parsed = DataReport::parse(Level::Error, &message).unwrap();
        assert_eq!(parsed.version(), "v9");
    }

    /// Found by `fuzz/fuzz_targets/data_report.rs`: cutting a long message cut into the version,
    /// so the report named another (shorter) version.
    #[test]
    fn a_version_too_long_to_fit_is_never_reported_as_a_shorter_one() {
        let long = "a".repeat(MAX_MESSAGE_BYTES);
        for report in [applied(&long), failed(&long, "boom")] {
            let message = report.format();
            assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
            assert!(
                matches!(
                    DataReport::parse(report.level(), &message),
                    Err(DataReportError::Shape(_))
                ),
                "{message:?}"
            );
        }
        // Cut right after the version: the version survives.
        let fits = "v".repeat(MAX_MESSAGE_BYTES - "version : ...".len());
        let report = failed(&fits, "a reason that does not fit");
        let parsed = DataReport::parse(Level::Error, &report.format()).unwrap();
        assert_eq!(parsed.version(), fits);
    }

    #[test]
    fn other_messages_are_not_reports() {
        for message in [
            "",
            "applied",
            "applied ",
            "applied v1 extra",
            "Applied v1",
            "version v2 boom",
            "version : boom",
            "version a b: boom",
            "ok",
        ] {
            let level = if message.starts_with("applied") {
                Level::Info
            } else {
                Level::Error
            };
            assert!(
                matches!(
                    DataReport::parse(level, message),
                    Err(DataReportError::Shape(_))
                ),
                "{message:?}"
            );
        }
    }

    #[test]
    fn a_level_that_contradicts_the_message_is_refused() {
        assert_eq!(
            DataReport::parse(Level::Error, "applied v1"),
            Err(DataReportError::Level {
                message: "applied",
                expected: Level::Info,
                actual: Level::Error
            })
        );
        assert!(DataReport::parse(Level::Info, "version v1: boom").is_err());
    }
}
