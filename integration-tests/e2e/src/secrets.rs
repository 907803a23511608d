//! Secrets must never reach a log line or a process list: [`assert_no_secrets`] scans what the
//! components under test wrote (at `--log trace`, where a careless `Debug` of a request, a header
//! map or a config would show) and [`command_line`] what `ps` shows of them.
//!
//! A finding is either one of the secrets the test itself handled (every token it minted, every
//! key it generated: exact text, and for a JWT its signature alone, which is what a truncating
//! logger would keep) or anything shaped like a credential whoever issued it: a JWT, a PEM private
//! key, a bearer `Authorization` value, a password in a URL.

use std::sync::LazyLock;

use regex::Regex;

/// Credential shapes, whoever issued them, with a name for the report.
static SHAPES: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        (
            "a JWT",
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}",
        ),
        ("a PEM private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        (
            "a bearer credential",
            r"(?i)bearer\s*[:=]?\s*[A-Za-z0-9._~+/-]{16,}",
        ),
        (
            "a password in a URL",
            r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
        ),
    ]
    .into_iter()
    .map(|(name, pattern)| (name, Regex::new(pattern).expect("a valid pattern")))
    .collect()
});

/// What in `text` is a secret: `(line number, what was found)` for each finding. `known` are the
/// secrets the test handled.
pub fn findings(text: &str, known: &[&str]) -> Vec<(usize, String)> {
    // A JWT's signature alone identifies it too.
    let needles: Vec<&str> = known
        .iter()
        .flat_map(|secret| {
            let signature = secret.rsplit('.').next().filter(|s| s.len() >= 16);
            std::iter::once(*secret).chain(signature)
        })
        .filter(|needle| needle.len() >= 8)
        .collect();
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        for needle in &needles {
            if line.contains(needle) {
                found.push((
                    number + 1,
                    format!("a secret the test used ({} chars)", needle.len()),
                ));
            }
        }
        for (name, shape) in SHAPES.iter() {
            if shape.is_match(line) {
                found.push((number + 1, (*name).to_string()));
            }
        }
    }
    found
}

/// Panics naming every finding in `text` (the output of `what`), without repeating the secret.
pub fn assert_no_secrets(what: &str, text: &str, known: &[&str]) {
    let found = findings(text, known);
    assert!(
        found.is_empty(),
        "{what} leaks secrets:\n{}",
        found
            .iter()
            .map(|(line, finding)| format!("  line {line}: {finding}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Panics unless `text` has at least `at_least` TRACE lines: a scan of logs written at a coarser
/// level than the test asked for would prove nothing.
pub fn assert_traced(what: &str, text: &str, at_least: usize) {
    let traced = text.lines().filter(|line| line.contains("TRACE")).count();
    assert!(
        traced >= at_least,
        "{what} wrote {traced} TRACE lines, expected at least {at_least}: was it started with \
         --log trace?"
    );
}

/// Process `pid`'s command line as `ps` shows it (arguments joined by spaces).
pub fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|err| panic!("reading /proc/{pid}/cmdline: {err}"));
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|arg| !arg.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1pdHNlbGY";

    #[test]
    fn tokens_keys_and_passwords_are_found() {
        let log = format!(
            "INFO ok\nTRACE request headers={{\"authorization\": \"Bearer {TOKEN}\"}}\n\
             DEBUG sig …{}\nTRACE -----BEGIN PRIVATE KEY-----\n\
             DEBUG upstream https://user:hunter2@registry.example/v2/\n\
             DEBUG forged opaque-secret-value-1234",
            TOKEN.rsplit('.').next().unwrap()
        );
        let found = findings(&log, &[TOKEN, "opaque-secret-value-1234"]);
        let lines: Vec<usize> = found.iter().map(|(line, _)| *line).collect();
        for line in [2, 3, 4, 5, 6] {
            assert!(lines.contains(&line), "line {line} not found in {found:?}");
        }
        assert!(!lines.contains(&1));
        // The report names the finding, never the secret.
        assert!(
            found
                .iter()
                .all(|(_, what)| !what.contains("hunter2") && !what.contains("eyJ"))
        );
    }

    #[test]
    fn ordinary_log_lines_are_not_findings() {
        let log = "INFO authenticated user=system:serviceaccount:shop:ops verb=get\n\
                   TRACE h2 frame=Headers { stream_id: StreamId(1), flags: (0x4: END_HEADERS) }\n\
                   DEBUG source=https://registry.example:5000/v2/acme/app tag=1.0.0\n\
                   WARN Unauthenticated: no bearer token in the authorization metadata";
        assert_eq!(findings(log, &[]), Vec::<(usize, String)>::new());
    }
}
