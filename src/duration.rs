//! The duration format of the AutoCraneDeployment spec: Go-style `1h30m`, `90s`, `500ms`, as in
//! Kubernetes and Argo Rollouts manifests.
//!
//! Written here rather than taken from a crate because the accepted grammar must be exactly the one
//! the CRD schema's `pattern` enforces on the API server, so a value the server accepts always parses
//! here and vice versa (`humantime` accepts more, for example `1 day` and spaces).

use std::{borrow::Cow, fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema applies to every duration field.
pub const PATTERN: &str = "^([0-9]{1,9}(ms|s|m|h))+$";

/// A non-negative duration written as a sequence of `<integer><unit>` with units `h`, `m`, `s`, `ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

/// Why a duration text was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {text:?}: {rule} (expected for example 90s, 5m or 1h30m)")]
pub struct ParseDurationError {
    text: String,
    rule: &'static str,
}

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    /// A duration of whole minutes.
    pub const fn from_mins(mins: u64) -> Self {
        Self(StdDuration::from_secs(mins * 60))
    }

    /// The standard-library duration.
    pub const fn as_std(self) -> StdDuration {
        self.0
    }
}

impl From<StdDuration> for Duration {
    fn from(value: StdDuration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |rule| ParseDurationError {
            text: text.to_string(),
            rule,
        };
        if text.is_empty() {
            return Err(fail("must not be empty"));
        }
        let mut total = StdDuration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail("each part must start with a number"));
            }
            if digits > 9 {
                return Err(fail("a number has more than 9 digits"));
            }
            let value: u64 = rest[..digits].parse().map_err(|_| fail("bad number"))?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (StdDuration::from_millis(1), 2)
            } else if rest.starts_with('s') {
                (StdDuration::from_secs(1), 1)
            } else if rest.starts_with('m') {
                (StdDuration::from_secs(60), 1)
            } else if rest.starts_with('h') {
                (StdDuration::from_secs(3600), 1)
            } else {
                return Err(fail("each number needs a unit: h, m, s or ms"));
            };
            rest = &rest[len..];
            total += unit * u32::try_from(value).map_err(|_| fail("bad number"))?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    /// Canonical form: the largest units first, zero parts left out (`1h30m`, `90ms`, `0s`).
    /// The pattern allows at most 9 digits a part, so more hours than that repeat the hour part
    /// (`999999999h60m` prints as `999999999h1h`, not as the unparseable `1000000000h`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_PART: u128 = 999_999_999;
        let mut millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        for (unit, name) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")] {
            if millis >= unit {
                let mut count = millis / unit;
                while count > MAX_PART {
                    write!(f, "{MAX_PART}{name}")?;
                    count -= MAX_PART;
                }
                write!(f, "{count}{name}")?;
                millis %= unit;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StdDuration, ParseDurationError> {
        text.parse::<Duration>().map(Duration::as_std)
    }

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("90s").unwrap(), StdDuration::from_secs(90));
        assert_eq!(parse("5m").unwrap(), StdDuration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), StdDuration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), StdDuration::from_millis(250));
        assert_eq!(parse("0s").unwrap(), StdDuration::ZERO);
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in [
            "",
            "5",
            "m5",
            "5 m",
            "1.5h",
            "-5s",
            "5d",
            "1h30",
            "1234567890s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn error_names_the_rule() {
        let err = parse("10").unwrap_err().to_string();
        assert!(err.contains("needs a unit"), "{err}");
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (text, canonical) in [
            ("90s", "1m30s"),
            ("1h0m", "1h"),
            ("1500ms", "1s500ms"),
            ("0m", "0s"),
        ] {
            let value: Duration = text.parse().unwrap();
            assert_eq!(value.to_string(), canonical);
            assert_eq!(canonical.parse::<Duration>().unwrap(), value);
        }
    }

    /// Found by `fuzz/fuzz_targets/duration.rs`: the sum of parts can pass 9 digits of hours.
    #[test]
    fn more_hours_than_nine_digits_print_in_parts_that_parse() {
        let value: Duration = "9991h1m1ms1ms999999999h9h".parse().unwrap();
        let canonical = value.to_string();
        assert_eq!(canonical, "999999999h10000h1m2ms");
        assert_eq!(canonical.parse::<Duration>(), Ok(value));
        let value: Duration = "999999999h60m".parse().unwrap();
        assert_eq!(value.to_string(), "999999999h1h");
    }

    #[test]
    fn serde_uses_the_text_form() {
        let value: Duration = serde_json::from_str("\"2m\"").unwrap();
        assert_eq!(value, Duration::from_mins(2));
        assert_eq!(serde_json::to_string(&value).unwrap(), "\"2m\"");
        assert!(serde_json::from_str::<Duration>("\"2 minutes\"").is_err());
    }
}
