//! What the test workload reports (pure): its health from its version and its data.
//!
//! The rules make every AutoCrane behaviour easy to trigger by hand or from a test:
//! - a version whose name contains `bad` is in `error` (a bad release: the controller rolls it back
//!   and quarantines it);
//! - a file named `status` in a data directory whose first word is `error` puts the pod in `error`
//!   (a poisoned data version: the controller reverts its canaries);
//! - otherwise `info`.

use autocrane_api::watchdog::{Level, MAX_MESSAGE_BYTES};

/// The `status` file of one data directory, as read (`None`: no such file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataStatus {
    /// Where the file was looked for (shown in the message).
    pub path: String,
    /// Its text.
    pub text: Option<String>,
}

/// The health the workload posts as its watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The watchdog level.
    pub level: Level,
    /// Why, in a few words.
    pub message: String,
}

/// The workload's health: `error` for a `bad` version or a data `status` file saying `error`.
pub fn judge(version: &str, data: &[DataStatus]) -> Health {
    let mut errors = Vec::new();
    if version.contains("bad") {
        errors.push(format!("version {version:?} is a bad release"));
    }
    for status in data {
        if let Some(text) = &status.text
            && first_word(text).eq_ignore_ascii_case("error")
        {
            errors.push(format!("{} says {:?}", status.path, first_line(text)));
        }
    }
    let (level, mut message) = if errors.is_empty() {
        let seen = data.iter().filter(|s| s.text.is_some()).count();
        (
            Level::Info,
            format!("serving version {version:?}; {seen} data status file(s) fine"),
        )
    } else {
        (Level::Error, errors.join("; "))
    };
    truncate(&mut message, MAX_MESSAGE_BYTES);
    Health { level, message }
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(path: &str, text: Option<&str>) -> DataStatus {
        DataStatus {
            path: path.into(),
            text: text.map(str::to_string),
        }
    }

    #[test]
    fn a_good_version_without_data_is_info() {
        let health = judge("1.2.0", &[]);
        assert_eq!(health.level, Level::Info);
        assert!(health.message.contains("1.2.0"), "{}", health.message);
    }

    #[test]
    fn a_version_named_bad_is_an_error() {
        for version in ["1.3.0-bad", "bad", "2.0.0-badness"] {
            let health = judge(version, &[]);
            assert_eq!(health.level, Level::Error, "{version}");
            assert!(health.message.contains(version));
        }
    }

    #[test]
    fn a_data_status_file_saying_error_is_an_error_and_is_named() {
        let health = judge(
            "1.0.0",
            &[
                status("/data/config/current/status", Some("ok\n")),
                status("/data/model/current/status", Some("ERROR poisoned\nmore")),
            ],
        );
        assert_eq!(health.level, Level::Error);
        assert!(
            health.message.contains("/data/model/current/status")
                && health.message.contains("ERROR poisoned")
                && !health.message.contains("more"),
            "{}",
            health.message
        );
    }

    #[test]
    fn other_status_texts_and_missing_files_are_fine() {
        let health = judge(
            "1.0.0",
            &[
                status("/a/status", Some("fine")),
                status("/b/status", Some("errors are counted elsewhere")),
                status("/c/status", None),
                status("/d/status", Some("")),
            ],
        );
        assert_eq!(health.level, Level::Info, "{}", health.message);
        assert!(health.message.contains("3 data status file(s)"));
    }

    #[test]
    fn both_causes_are_reported_and_the_message_fits_a_watchdog() {
        let long = "error ".to_string() + &"é".repeat(MAX_MESSAGE_BYTES);
        let health = judge("bad", &[status("/x/status", Some(&long))]);
        assert_eq!(health.level, Level::Error);
        assert!(health.message.starts_with("version \"bad\""));
        assert!(health.message.contains("/x/status"));
        assert!(health.message.len() <= MAX_MESSAGE_BYTES);
    }
}
