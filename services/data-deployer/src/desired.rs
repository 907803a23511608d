//! What the pod wants (sans-IO): the `data.autocrane.io/<name>` annotations from the downward-API
//! annotations file, and the directory name a version gets on disk.
//!
//! The kubelet writes the file as one `key="value"` line per annotation, sorted by key, the value
//! quoted the way Go's `%q` does (`\"`, `\\`, `\n`, `\t`, `\xNN`, `\uNNNN`, …).
//!
//! Annotation format (the contract with the controller): `data.autocrane.io/<name>: <version>`,
//! where `<name>` is the data source name of the AutoCraneDeployment (a DNS-1123 label) and
//! `<version>` the DataRepository version name. The DataRepository source id of `<name>` comes
//! from the deployer's `--source <name>=<source id>` flags, which the controller sets when it
//! injects the deployer; a name without a flag is taken to be the source id itself.

use std::collections::BTreeMap;

use autocrane_api::keys::DATA_ANNOTATION_PREFIX;

/// One desired data version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The data source name (`<root>/<name>/current`).
    pub name: String,
    /// The DataRepository source id.
    pub source_id: String,
    /// The version name.
    pub version: String,
}

/// Why the annotations file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a downward-API annotations file into key → value.
pub fn parse_annotations(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let err = |message: &str| ParseError {
            line: index + 1,
            message: message.to_string(),
        };
        if line.trim().is_empty() {
            continue;
        }
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| err("expected key=\"value\""))?;
        let value = unquote(quoted).ok_or_else(|| err("the value is not a valid quoted string"))?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// Undoes Go's `strconv.Quote`.
pub fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut bytes: Vec<u8> = Vec::new();
    let mut chars = inner.chars();
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c == '"' {
                return None;
            }
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        let escape = chars.next()?;
        let hex = |chars: &mut std::str::Chars, n: usize| -> Option<u32> {
            let text: String = chars.by_ref().take(n).collect();
            if text.len() != n {
                return None;
            }
            u32::from_str_radix(&text, 16).ok()
        };
        match escape {
            'x' => {
                bytes.push(hex(&mut chars, 2)? as u8);
                continue;
            }
            '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                let value = u32::from_str_radix(&format!("{escape}{rest}"), 8).ok()?;
                bytes.push(u8::try_from(value).ok()?);
                continue;
            }
            _ => {}
        }
        flush(&mut bytes, &mut out);
        out.push(match escape {
            'a' => '\u{7}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' => '\\',
            '"' => '"',
            '\'' => '\'',
            'u' => char::from_u32(hex(&mut chars, 4)?)?,
            'U' => char::from_u32(hex(&mut chars, 8)?)?,
            _ => return None,
        });
    }
    flush(&mut bytes, &mut out);
    Some(out)
}

/// The desired versions named by `data.autocrane.io/<name>` annotations, sorted by name.
/// `sources` maps names to source ids.
pub fn desired(
    annotations: &BTreeMap<String, String>,
    sources: &BTreeMap<String, String>,
) -> Vec<Desired> {
    annotations
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(DATA_ANNOTATION_PREFIX)?;
            let version = value.trim();
            if !is_label(name) || version.is_empty() {
                tracing::warn!(annotation = %key, "Ignoring a malformed data annotation");
                return None;
            }
            Some(Desired {
                name: name.to_string(),
                source_id: sources
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.to_string()),
                version: version.to_string(),
            })
        })
        .collect()
}

/// Whether `name` is a DNS-1123 label (so it is a safe directory name).
pub fn is_label(name: &str) -> bool {
    autocrane_api::names::is_dns1123_label(name)
}

/// The directory name of a version under `<root>/<name>/`: the version itself when it is a safe
/// file name, else a sanitised form plus a hash so that distinct versions never collide.
pub fn version_dir(version: &str) -> String {
    let safe = !version.is_empty()
        && version.len() <= 100
        && !version.starts_with('.')
        && version != "current"
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if safe {
        return version.to_string();
    }
    let cleaned: String = version
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = autocrane_api::manifest::hex(
        ring::digest::digest(&ring::digest::SHA256, version.as_bytes()).as_ref(),
    );
    format!("v_{}-{}", cleaned.trim_start_matches('.'), &hash[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_annotation_files_parse() {
        let text = "data.autocrane.io/config=\"3f2a\"\nkubernetes.io/config.seen=\"2026-11-26T20:00:00.1Z\"\nnote=\"a \\\"quoted\\\"\\nline \\u00e9 \\xc3\\xa9\"\n";
        let map = parse_annotations(text).unwrap();
        assert_eq!(map["data.autocrane.io/config"], "3f2a");
        assert_eq!(map["note"], "a \"quoted\"\nline é é");
        assert!(parse_annotations("k=unquoted").is_err());
    }

    #[test]
    fn desired_versions_come_from_data_annotations() {
        let mut annotations = BTreeMap::new();
        annotations.insert("data.autocrane.io/config".to_string(), "v2".to_string());
        annotations.insert("data.autocrane.io/git-0123".to_string(), "abc".to_string());
        annotations.insert("data.autocrane.io/Bad_Name".to_string(), "v".to_string());
        annotations.insert("other".to_string(), "x".to_string());
        let sources = BTreeMap::from([("config".to_string(), "http-ffff".to_string())]);
        let got = desired(&annotations, &sources);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].source_id, "http-ffff");
        assert_eq!(got[1].source_id, "git-0123");
    }

    #[test]
    fn version_dirs_are_safe_and_distinct() {
        assert_eq!(version_dir("v1.2.3"), "v1.2.3");
        let odd = version_dir("Thu, 26 Nov 2026 20:00:00 GMT");
        assert!(odd.starts_with("v_Thu__26") && !odd.contains(' '), "{odd}");
        assert_ne!(version_dir("a/b"), version_dir("a_b"));
        assert_ne!(version_dir("current"), "current");
        assert!(!version_dir("../x").contains('/'));
    }
}
