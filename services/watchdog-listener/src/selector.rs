//! Kubernetes label selectors (`app=web,tier!=cache`, `env in (a,b)`, `!canary`, `gen>3`), parsed
//! and matched here, sans-IO: `WatchPodHealth` streams are served from the shared pod index
//! (`index.rs`), so their selector is applied by the listener rather than by the API server. The
//! grammar and the key/value rules are those of apimachinery's `labels.Parse`; a selector it
//! rejects is refused as `label_selector: …` before the stream starts.

use std::collections::BTreeMap;

use autocrane_api::names::is_dns1123_subdomain;

use crate::validate::Invalid;

const FIELD: &str = "label_selector";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equal(String, String),
    NotEqual(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label selector; the empty selector matches every pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn invalid(reason: impl Into<String>) -> Invalid {
    Invalid {
        field: FIELD,
        reason: reason.into(),
    }
}

/// A label name: at most 63 of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn is_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn key(text: &str) -> Result<String, Invalid> {
    let name = match text.split_once('/') {
        Some((prefix, name)) => {
            if prefix.len() > 253 || !is_dns1123_subdomain(prefix) {
                return Err(invalid(format!(
                    "key {text:?}: the prefix must be a DNS-1123 subdomain"
                )));
            }
            name
        }
        None => text,
    };
    if !is_name(name) {
        return Err(invalid(format!(
            "key {text:?}: the name must be at most 63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit"
        )));
    }
    Ok(text.to_string())
}

fn value(text: &str) -> Result<String, Invalid> {
    if !text.is_empty() && !is_name(text) {
        return Err(invalid(format!(
            "value {text:?} must be empty or at most 63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit"
        )));
    }
    Ok(text.to_string())
}

fn set(text: &str, op: &str) -> Result<Vec<String>, Invalid> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| invalid(format!("{op} needs a parenthesised set, as in {op} (a,b)")))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| value(v.trim()))
        .collect::<Result<_, _>>()?;
    if inner.trim().is_empty() {
        return Err(invalid(format!("the set of {op} must not be empty")));
    }
    Ok(values)
}

fn integer(text: &str, op: &str) -> Result<i64, Invalid> {
    text.trim()
        .parse()
        .map_err(|_| invalid(format!("{op} needs an integer, got {text:?}")))
}

/// Commas outside parentheses separate requirements.
fn split(text: &str) -> Result<Vec<&str>, Invalid> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| invalid("unbalanced ')'"))?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(invalid("unbalanced '('"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement, Invalid> {
    let part = part.trim();
    if part.is_empty() {
        return Err(invalid(
            "empty requirement (two commas in a row, or a trailing comma)",
        ));
    }
    if let Some(rest) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(rest.trim())?));
    }
    let end = part
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        .unwrap_or(part.len());
    let name = key(&part[..end])?;
    let rest = part[end..].trim_start();
    if rest.is_empty() {
        return Ok(Requirement::Exists(name));
    }
    let word = |op: &str| {
        rest.strip_prefix(op)
            .filter(|r| r.starts_with(|c: char| c.is_whitespace() || c == '('))
    };
    if let Some(values) = word("notin") {
        return Ok(Requirement::NotIn(name, set(values, "notin")?));
    }
    if let Some(values) = word("in") {
        return Ok(Requirement::In(name, set(values, "in")?));
    }
    for (op, make) in [
        (
            "!=",
            Requirement::NotEqual as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equal),
        ("=", Requirement::Equal),
    ] {
        if let Some(text) = rest.strip_prefix(op) {
            return Ok(make(name, value(text.trim())?));
        }
    }
    if let Some(text) = rest.strip_prefix('>') {
        return Ok(Requirement::GreaterThan(name, integer(text, ">")?));
    }
    if let Some(text) = rest.strip_prefix('<') {
        return Ok(Requirement::LessThan(name, integer(text, "<")?));
    }
    Err(invalid(format!(
        "{part:?}: expected key, !key, key=value, key!=value, key in (…), key notin (…), key>n or key<n"
    )))
}

impl LabelSelector {
    /// Parses `text`; empty (or blank) selects everything.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        split(text)?
            .into_iter()
            .map(requirement)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether a pod with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| match req {
            Requirement::Equal(k, v) => labels.get(k) == Some(v),
            Requirement::NotEqual(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::GreaterThan(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .unwrap_or_else(|err| panic!("{selector}: {err}"))
            .matches(&labels(pairs))
    }

    #[test]
    fn every_operator_matches_as_kubernetes_does() {
        let web = [("app", "web"), ("tier", "front"), ("gen", "4")];
        assert!(selects("", &web));
        assert!(selects("app=web", &web));
        assert!(selects("app==web, tier != cache", &web));
        assert!(!selects("app=db", &web));
        assert!(selects("tier!=cache", &[]), "!= matches a missing label");
        assert!(selects("app in (web, db)", &web));
        assert!(!selects("app in (db)", &web));
        assert!(selects("app notin (db),missing notin (x)", &web));
        assert!(selects("app,!canary", &web));
        assert!(!selects("!app", &web));
        assert!(selects("gen>3,gen<5", &web));
        assert!(!selects("gen>4", &web));
        assert!(selects("example.com/team=x", &[("example.com/team", "x")]));
        assert!(selects("app=", &[("app", "")]));
    }

    #[test]
    fn malformed_selectors_name_the_field() {
        for bad in [
            "app in (",
            "app in ()",
            "app in web",
            "a,,b",
            "app=web)",
            "app=we b",
            "-app=web",
            "Bad_/x=1",
            "gen>x",
            "app ~ web",
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(err.field, "label_selector", "{bad}");
            assert!(err.to_string().starts_with("label_selector: "), "{err}");
        }
    }
}
