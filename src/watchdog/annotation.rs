//! The storage format of one watchdog (written by the WatchdogListener, read by the controller and
//! every client): the pod annotation `status.autocrane.io/<name>` whose value
//! is `<level>/<updated RFC 3339 UTC>/<expires RFC 3339 UTC or empty>/<message>`.
//!
//! Sans-IO: formatting and parsing only. Parsing is lenient about what others wrote by hand (level
//! case, the original AutoCrane's `<level>/<yyyy-MM-ddTHH:mm:ss>/<message>` without a zone) but the
//! listener only ever writes the canonical form, with a lower-case level (fixes W8, W11).

use std::fmt;

use jiff::{Timestamp, fmt::strtime, tz::TimeZone};

/// The severity of one watchdog, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// All is well.
    Info,
    /// Degraded but serving.
    Warning,
    /// Failing.
    Error,
}

impl Level {
    /// The lower-case text stored in annotations and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }

    /// Parses a level, ignoring case; anything but info/warning/error is `None`.
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "info" => Some(Level::Info),
            "warning" => Some(Level::Warning),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One watchdog as stored on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watchdog {
    /// The name, the part of the annotation key after `status.autocrane.io/`.
    pub name: String,
    /// The severity.
    pub level: Level,
    /// Free text for people.
    pub message: String,
    /// When it was written (second precision).
    pub updated_at: Timestamp,
    /// When it stops counting; `None` never.
    pub expires_at: Option<Timestamp>,
}

impl Watchdog {
    /// Whether the watchdog no longer counts at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Why an annotation value is not a watchdog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text before the first `/` is not info, warning or error.
    #[error("unknown level {0:?}")]
    Level(String),
    /// A time is not RFC 3339.
    #[error("malformed time {0:?}")]
    Time(String),
    /// Fewer fields than the format has.
    #[error("expected <level>/<updated>/<expires>/<message>")]
    Shape,
}

/// Formats a time the way annotations store it: RFC 3339, UTC, seconds, `Z`.
pub fn format_time(time: Timestamp) -> String {
    // Truncated to the second, as the format stores it: a whole-second timestamp prints no fraction.
    Timestamp::from_second(time.as_second())
        .unwrap_or(time)
        .to_string()
}

/// The annotation value of `watchdog`.
pub fn format_value(watchdog: &Watchdog) -> String {
    format!(
        "{}/{}/{}/{}",
        watchdog.level,
        format_time(watchdog.updated_at),
        watchdog.expires_at.map(format_time).unwrap_or_default(),
        watchdog.message
    )
}

fn parse_time(text: &str) -> Result<Timestamp, ParseError> {
    text.parse::<Timestamp>()
        .map_err(|_| ParseError::Time(text.to_string()))
}

/// The original's `yyyy-MM-ddTHH:mm:ss`, a UTC time without a zone.
fn original_time(text: &str) -> Option<Timestamp> {
    let civil = strtime::parse("%Y-%m-%dT%H:%M:%S", text)
        .ok()?
        .to_datetime()
        .ok()?;
    civil
        .to_zoned(TimeZone::UTC)
        .ok()
        .map(|zoned| zoned.timestamp())
}

/// Parses the annotation value of watchdog `name`.
pub fn parse_value(name: &str, value: &str) -> Result<Watchdog, ParseError> {
    let (level_text, rest) = value.split_once('/').ok_or(ParseError::Shape)?;
    let level = Level::parse(level_text).ok_or_else(|| ParseError::Level(level_text.into()))?;
    let (updated_text, rest) = rest.split_once('/').ok_or(ParseError::Shape)?;
    // The original wrote `yyyy-MM-ddTHH:mm:ss` (UTC, no zone) and no expiry field.
    if let Some(updated_at) = original_time(updated_text) {
        return Ok(Watchdog {
            name: name.into(),
            level,
            message: rest.into(),
            updated_at,
            expires_at: None,
        });
    }
    let updated_at = parse_time(updated_text)?;
    let (expires_text, message) = rest.split_once('/').ok_or(ParseError::Shape)?;
    let expires_at = match expires_text {
        "" => None,
        text => Some(parse_time(text)?),
    };
    Ok(Watchdog {
        name: name.into(),
        level,
        message: message.into(),
        updated_at,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_795_000_000 + secs).unwrap()
    }

    fn watchdog(expires_at: Option<Timestamp>, message: &str) -> Watchdog {
        Watchdog {
            name: "http".into(),
            level: Level::Error,
            message: message.into(),
            updated_at: at(0),
            expires_at,
        }
    }

    #[test]
    fn value_without_expiry_has_an_empty_field() {
        let value = format_value(&watchdog(None, "connection refused"));
        assert_eq!(value, "error/2026-11-18T11:06:40Z//connection refused");
    }

    #[test]
    fn value_round_trips_with_slashes_in_the_message() {
        let original = watchdog(Some(at(300)), "GET /healthz/ready: 500 / retry");
        let value = format_value(&original);
        assert_eq!(
            value,
            "error/2026-11-18T11:06:40Z/2026-11-18T11:11:40Z/GET /healthz/ready: 500 / retry"
        );
        assert_eq!(parse_value("http", &value).unwrap(), original);
    }

    #[test]
    fn level_is_case_insensitive_and_normalised() {
        let parsed = parse_value("http", "Error/2026-11-18T11:06:40Z//x").unwrap();
        assert_eq!(parsed.level, Level::Error);
        assert!(format_value(&parsed).starts_with("error/"));
    }

    #[test]
    fn original_autocrane_values_still_parse() {
        let parsed = parse_value("http", "error/2021-06-11T17:03:09/Response 500 / bad").unwrap();
        assert_eq!(parsed.message, "Response 500 / bad");
        assert_eq!(parsed.expires_at, None);
        assert_eq!(format_time(parsed.updated_at), "2021-06-11T17:03:09Z");
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            parse_value("x", "Unknown/2026-11-18T11:06:40Z//m"),
            Err(ParseError::Level("Unknown".into()))
        );
        assert_eq!(parse_value("x", "error"), Err(ParseError::Shape));
        assert!(matches!(
            parse_value("x", "info/yesterday//m"),
            Err(ParseError::Time(_))
        ));
        assert!(matches!(
            parse_value("x", "info/2026-11-18T11:06:40Z/soon/m"),
            Err(ParseError::Time(_))
        ));
    }

    #[test]
    fn expiry_is_inclusive() {
        let w = watchdog(Some(at(10)), "");
        assert!(!w.is_expired(at(9)));
        assert!(w.is_expired(at(10)));
        assert!(!watchdog(None, "").is_expired(at(1_000_000)));
    }
}
