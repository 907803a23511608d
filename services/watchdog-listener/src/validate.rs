//! Request validation, sans-IO. Every rejection names the field and the rule, so a caller can fix
//! the request without reading the server's code.

use std::time::Duration;

use autocrane_api::names::{is_dns1123_label, is_dns1123_subdomain};
use autocrane_api::watchdog::MAX_MESSAGE_BYTES;

/// The most watchdogs one pod may carry.
pub const MAX_WATCHDOGS_PER_POD: usize = 32;
/// The shortest TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest TTL.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A rejected field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The request field, as named in the proto (`pod.namespace`, `ttl`, …).
    pub field: &'static str,
    /// The rule it breaks.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

fn label(field: &'static str, text: &str) -> Result<(), Invalid> {
    if text.is_empty() {
        return Err(invalid(field, "required"));
    }
    if !is_dns1123_label(text) {
        return Err(invalid(
            field,
            format!(
                "{text:?} is not a DNS-1123 label (at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

/// A pod reference: namespace a DNS-1123 label, name a DNS-1123 subdomain.
pub fn pod_ref(namespace: &str, name: &str) -> Result<(), Invalid> {
    label("pod.namespace", namespace)?;
    if name.is_empty() {
        return Err(invalid("pod.name", "required"));
    }
    if !is_dns1123_subdomain(name) {
        return Err(invalid(
            "pod.name",
            format!("{name:?} is not a DNS-1123 subdomain"),
        ));
    }
    Ok(())
}

/// A namespace field of a list or watch request.
pub fn namespace(namespace: &str) -> Result<(), Invalid> {
    label("namespace", namespace)
}

/// A watchdog name: a DNS-1123 label, so that `status.autocrane.io/<name>` is a valid key.
pub fn watchdog_name(name: &str) -> Result<(), Invalid> {
    label("name", name)
}

/// A message: at most [`MAX_MESSAGE_BYTES`] bytes.
pub fn message(message: &str) -> Result<(), Invalid> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(
            "message",
            format!(
                "{} bytes is longer than the limit of {MAX_MESSAGE_BYTES} bytes",
                message.len()
            ),
        ));
    }
    Ok(())
}

/// A TTL given as protobuf seconds + nanos: within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn ttl(seconds: i64, nanos: i32) -> Result<Duration, Invalid> {
    let out_of_range = || {
        invalid(
            "ttl",
            format!("must be between 1s and 7 days (604800s), got {seconds}s {nanos}ns"),
        )
    };
    if seconds < 0 || !(0..1_000_000_000).contains(&nanos) {
        return Err(out_of_range());
    }
    let ttl = Duration::new(seconds as u64, nanos as u32);
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(out_of_range());
    }
    Ok(ttl)
}

/// A page size: 0 means 500, otherwise 1..=1000.
pub fn page_size(size: u32) -> Result<u32, Invalid> {
    match size {
        0 => Ok(500),
        1..=1000 => Ok(size),
        _ => Err(invalid("page_size", format!("must be 0..1000, got {size}"))),
    }
}

/// The error for a post that would give the pod more than [`MAX_WATCHDOGS_PER_POD`] watchdogs.
pub fn too_many_watchdogs() -> Invalid {
    invalid(
        "name",
        format!(
            "the pod already has the maximum of {MAX_WATCHDOGS_PER_POD} watchdogs; delete one first"
        ),
    )
}

/// The error for a missing level.
pub fn level_unspecified() -> Invalid {
    invalid(
        "level",
        "required: LEVEL_INFO, LEVEL_WARNING or LEVEL_ERROR",
    )
}

/// The error for an unknown enum number.
pub fn level_unknown(value: i32) -> Invalid {
    invalid("level", format!("unknown level {value}"))
}

/// The error for a missing pod reference.
pub fn pod_missing() -> Invalid {
    invalid("pod", "required")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns1123_labels() {
        assert!(watchdog_name("http").is_ok());
        assert!(watchdog_name("data-config-2").is_ok());
        for bad in ["", "HTTP", "-x", "x-", "a_b", "a.b", "a/b", &"x".repeat(64)] {
            assert_eq!(watchdog_name(bad).unwrap_err().field, "name", "{bad:?}");
        }
    }

    #[test]
    fn pod_refs_name_the_failing_part() {
        assert!(pod_ref("default", "web-0").is_ok());
        assert!(pod_ref("default", "web.v1-0").is_ok());
        assert_eq!(pod_ref("", "web").unwrap_err().field, "pod.namespace");
        assert_eq!(
            pod_ref("Default", "web").unwrap_err().field,
            "pod.namespace"
        );
        assert_eq!(pod_ref("default", "").unwrap_err().field, "pod.name");
        assert_eq!(pod_ref("default", "Web").unwrap_err().field, "pod.name");
    }

    #[test]
    fn message_is_limited_to_one_kib() {
        assert!(message(&"x".repeat(1024)).is_ok());
        let err = message(&"x".repeat(1025)).unwrap_err();
        assert_eq!(err.field, "message");
        assert!(err.reason.contains("1024"), "{err}");
    }

    #[test]
    fn ttl_is_one_second_to_seven_days() {
        assert_eq!(ttl(1, 0), Ok(Duration::from_secs(1)));
        assert_eq!(ttl(604_800, 0), Ok(MAX_TTL));
        for (s, n) in [(0, 0), (0, 999_999_999), (604_800, 1), (-1, 0), (5, -1)] {
            assert_eq!(ttl(s, n).unwrap_err().field, "ttl", "{s}s {n}ns");
        }
    }

    #[test]
    fn page_size_defaults_to_500() {
        assert_eq!(page_size(0), Ok(500));
        assert_eq!(page_size(1000), Ok(1000));
        assert_eq!(page_size(1001).unwrap_err().field, "page_size");
    }
}
