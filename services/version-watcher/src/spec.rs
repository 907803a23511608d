//! Source specs: validation of what clients send, canonicalisation, and the stable `source_id`.
//!
//! Clients identify a source by sending its whole spec, so two clients that mean the same source
//! must end up with the same id even when they spell it differently (`127.0.0.1:5000` and
//! `https://127.0.0.1:5000/`, an absent policy and `newest`). [`validate`] turns the proto spec
//! into a [`Spec`] with every default filled in and every spelling normalised; the id is
//! `<kind>-<first 16 hex digits of sha256(canonical JSON)>`. The JSON form is also what the store
//! persists, so changing these types' serde layout changes ids: add fields only with
//! `#[serde(skip_serializing_if)]` defaults.
//!
//! This module takes the generated proto message as its input format (plain data, no tonic) so
//! that the validation rules and the field names in the messages live in one place.

use std::time::Duration;

use autocrane_api::proto::version_v1 as pb;
use serde::{Deserialize, Serialize};

/// The default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest accepted poll interval.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest accepted poll interval.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A bad spec: the field (as a path from the request, e.g. `sources[0].oci.repository`) and the
/// rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct SpecError {
    /// The field path.
    pub field: String,
    /// The broken rule, for people.
    pub rule: String,
}

/// A validated, canonical source spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Where the versions come from.
    pub upstream: Upstream,
    /// How the current version is chosen.
    pub policy: Policy,
    /// The poll interval in milliseconds.
    pub poll_interval_ms: u64,
}

/// The upstream of a source, canonical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Upstream {
    /// An OCI registry repository.
    Oci {
        /// `http://host[:port]` or `https://host[:port]`, lower-case, no trailing slash.
        registry: String,
        /// The repository path.
        repository: String,
        /// Whether tags are resolved to manifest digests.
        resolve_digests: bool,
    },
    /// A git repository.
    Git {
        /// The clone URL, without a trailing slash.
        url: String,
        /// `HEAD`, `refs/heads/<branch>` or a `refs/tags/<glob>`.
        git_ref: String,
        /// The data sub-directory, normalised; empty for the whole tree.
        path: String,
    },
    /// An HTTP resource.
    Http {
        /// The URL.
        url: String,
        /// The JSON pointer to the version; empty for the validators.
        json_pointer: String,
    },
    /// A local directory.
    Directory {
        /// The absolute path, without a trailing slash.
        path: String,
        /// The version file; empty for sub-directories.
        version_file: String,
    },
}

/// A version policy, canonical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Policy {
    /// Highest semver within a range.
    Semver {
        /// The requirement in `semver`'s canonical display form; empty for any.
        range: String,
        /// Whether pre-releases qualify.
        include_prereleases: bool,
        /// Whether `v1.2.3` is read as `1.2.3`.
        allow_v_prefix: bool,
    },
    /// Regex match ordered by a capture.
    Regex {
        /// The pattern (matched against the whole name).
        pattern: String,
        /// The capture group name; empty for the whole name.
        capture: String,
        /// How captures compare.
        order: RegexOrder,
    },
    /// The most recently published (or discovered) version.
    Newest,
    /// Exactly one version.
    Pin {
        /// The version name.
        version: String,
    },
}

/// How a regex capture is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegexOrder {
    /// As an unsigned integer.
    Numeric,
    /// As text.
    Lexical,
    /// As a semantic version.
    Semver,
}

impl Upstream {
    /// The kind, as used in source ids and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Upstream::Oci { .. } => "oci",
            Upstream::Git { .. } => "git",
            Upstream::Http { .. } => "http",
            Upstream::Directory { .. } => "directory",
        }
    }

    /// The host an upstream request goes to, for per-upstream rate limiting; `None` for local
    /// directories.
    pub fn host(&self) -> Option<String> {
        let url = match self {
            Upstream::Oci { registry, .. } => registry.as_str(),
            Upstream::Git { url, .. } | Upstream::Http { url, .. } => url.as_str(),
            Upstream::Directory { .. } => return None,
        };
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or_default();
        Some(authority.rsplit('@').next().unwrap_or_default().to_string())
    }
}

impl Spec {
    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// The canonical JSON text (what the id hashes).
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a Spec always serialises")
    }

    /// The stable id: `<kind>-<16 hex digits of sha256(canonical JSON)>`.
    pub fn source_id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.canonical_json().as_bytes());
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("{}-{hex}", self.upstream.kind())
    }
}

fn err(field: impl Into<String>, rule: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        rule: rule.into(),
    }
}

/// Validates `spec` (found at `field`, e.g. `source` or `sources[2]`) and returns its canonical
/// form.
pub fn validate(spec: Option<&pb::SourceSpec>, field: &str) -> Result<Spec, SpecError> {
    let spec = spec.ok_or_else(|| err(field, "is required"))?;
    let upstream = match &spec.upstream {
        None => {
            return Err(err(
                field,
                "exactly one of oci, git, http or directory must be set",
            ));
        }
        Some(pb::source_spec::Upstream::Oci(oci)) => validate_oci(oci, &format!("{field}.oci"))?,
        Some(pb::source_spec::Upstream::Git(git)) => validate_git(git, &format!("{field}.git"))?,
        Some(pb::source_spec::Upstream::Http(http)) => {
            validate_http(http, &format!("{field}.http"))?
        }
        Some(pb::source_spec::Upstream::Directory(dir)) => {
            validate_directory(dir, &format!("{field}.directory"))?
        }
    };
    let policy = validate_policy(spec.policy.as_ref(), &format!("{field}.policy"))?;
    let poll_interval = match &spec.poll_interval {
        None => DEFAULT_POLL_INTERVAL,
        Some(duration) => {
            let field = format!("{field}.poll_interval");
            if duration.seconds < 0 || duration.nanos < 0 || duration.nanos >= 1_000_000_000 {
                return Err(err(field, "must be a positive duration"));
            }
            let value = Duration::new(duration.seconds as u64, duration.nanos as u32);
            if !(MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&value) {
                return Err(err(field, "must be between 1s and 24h"));
            }
            value
        }
    };
    Ok(Spec {
        upstream,
        policy,
        poll_interval_ms: poll_interval.as_millis() as u64,
    })
}

fn validate_oci(oci: &pb::OciSource, field: &str) -> Result<Upstream, SpecError> {
    let registry_field = format!("{field}.registry");
    let raw = oci.registry.trim();
    if raw.is_empty() {
        return Err(err(registry_field, "must not be empty"));
    }
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("https".to_string(), raw),
    };
    if scheme != "http" && scheme != "https" {
        return Err(err(registry_field, "scheme must be http or https"));
    }
    let authority = rest.trim_end_matches('/').to_ascii_lowercase();
    let host_port =
        regex::Regex::new(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$").expect("static regex");
    if authority.contains('/') || !host_port.is_match(&authority) {
        return Err(err(
            registry_field,
            "must be host[:port], optionally prefixed by http:// or https://",
        ));
    }
    let repository = oci.repository.trim();
    let repository_field = format!("{field}.repository");
    if repository.is_empty() {
        return Err(err(repository_field, "must not be empty"));
    }
    // The distribution spec's repository-name grammar.
    let name = regex::Regex::new(
        r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$",
    )
    .expect("static regex");
    if !name.is_match(repository) || repository.len() > 255 {
        return Err(err(
            repository_field,
            "must be lower-case path components of [a-z0-9] separated by '.', '_', '__' or '-' (at most 255 characters)",
        ));
    }
    Ok(Upstream::Oci {
        registry: format!("{scheme}://{authority}"),
        repository: repository.to_string(),
        resolve_digests: oci.resolve_digests.unwrap_or(true),
    })
}

fn validate_git(git: &pb::GitSource, field: &str) -> Result<Upstream, SpecError> {
    let url = git.url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(err(format!("{field}.url"), "must not be empty"));
    }
    // The runtime's grammar for what `git` may be given: the four network transports, a plain
    // host, nothing option-like (the egress policy is the server's, checked in `grpc`).
    autocrane_runtime::upstream::git::parse_remote(url)
        .map_err(|e| err(format!("{field}.url"), e.to_string()))?;
    let git_ref = match git.r#ref.trim() {
        "" | "HEAD" => "HEAD".to_string(),
        other => {
            let ok_branch = other
                .strip_prefix("refs/heads/")
                .is_some_and(|branch| valid_ref_part(branch, false));
            let ok_tags = other
                .strip_prefix("refs/tags/")
                .is_some_and(|glob| valid_ref_part(glob, true));
            if !ok_branch && !ok_tags {
                return Err(err(
                    format!("{field}.ref"),
                    "must be empty, HEAD, refs/heads/<branch> or refs/tags/<glob>",
                ));
            }
            other.to_string()
        }
    };
    let path = normalize_relative(&git.path).map_err(|rule| err(format!("{field}.path"), rule))?;
    Ok(Upstream::Git {
        url: url.to_string(),
        git_ref,
        path,
    })
}

fn valid_ref_part(part: &str, glob: bool) -> bool {
    !part.is_empty()
        && !part.contains("..")
        && !part.starts_with('/')
        && !part.ends_with('/')
        && part.chars().all(|c| {
            !(c.is_whitespace() || c.is_control() || "~^:?[\\".contains(c) || (!glob && c == '*'))
        })
}

fn normalize_relative(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("must be relative");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("must not contain '..'"),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

fn validate_http(http: &pb::HttpSource, field: &str) -> Result<Upstream, SpecError> {
    let url = http.url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
        _ => {
            return Err(err(
                format!("{field}.url"),
                "must be an http:// or https:// URL",
            ));
        }
    }
    if url.parse::<http::Uri>().is_err() {
        return Err(err(format!("{field}.url"), "is not a valid URL"));
    }
    if !http.json_pointer.is_empty() && !http.json_pointer.starts_with('/') {
        return Err(err(
            format!("{field}.json_pointer"),
            "must be empty or start with '/' (RFC 6901)",
        ));
    }
    Ok(Upstream::Http {
        url: url.to_string(),
        json_pointer: http.json_pointer.clone(),
    })
}

fn validate_directory(dir: &pb::DirectorySource, field: &str) -> Result<Upstream, SpecError> {
    let path = dir.path.trim();
    if path.is_empty() {
        return Err(err(format!("{field}.path"), "must not be empty"));
    }
    if !path.starts_with('/') {
        return Err(err(format!("{field}.path"), "must be absolute"));
    }
    // Trailing slashes go with the whitespace they hid from `trim`, so that the canonical path
    // is its own canonical form; `/`, `//`, … are all the root.
    let path = match path.trim_end_matches(|c: char| c == '/' || c.is_whitespace()) {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    };
    if path.split('/').any(|part| part == "..") {
        return Err(err(format!("{field}.path"), "must not contain '..'"));
    }
    let version_file = dir.version_file.trim();
    if version_file.contains('/') || version_file == "." || version_file == ".." {
        return Err(err(
            format!("{field}.version_file"),
            "must be a file name inside the directory",
        ));
    }
    Ok(Upstream::Directory {
        path,
        version_file: version_file.to_string(),
    })
}

fn validate_policy(policy: Option<&pb::VersionPolicy>, field: &str) -> Result<Policy, SpecError> {
    use pb::version_policy::Policy as P;
    let Some(policy) = policy else {
        return Ok(Policy::Newest);
    };
    match &policy.policy {
        None => Err(err(
            field,
            "exactly one of semver, regex, newest or pin must be set",
        )),
        Some(P::Newest(_)) => Ok(Policy::Newest),
        Some(P::Pin(pin)) => {
            let version = pin.version.trim();
            if version.is_empty() {
                return Err(err(format!("{field}.pin.version"), "must not be empty"));
            }
            Ok(Policy::Pin {
                version: version.to_string(),
            })
        }
        Some(P::Semver(semver_policy)) => {
            let range = semver_policy.range.trim();
            let range = if range.is_empty() || range == "*" {
                String::new()
            } else {
                let range = semver::VersionReq::parse(range)
                    .map_err(|e| err(format!("{field}.semver.range"), e.to_string()))?
                    .to_string();
                // `x`, `X` and `*` all display as `*`: any version, like the empty range.
                if range == "*" { String::new() } else { range }
            };
            Ok(Policy::Semver {
                range,
                include_prereleases: semver_policy.include_prereleases,
                allow_v_prefix: semver_policy.allow_v_prefix,
            })
        }
        Some(P::Regex(regex_policy)) => {
            let pattern_field = format!("{field}.regex.pattern");
            if regex_policy.pattern.is_empty() {
                return Err(err(pattern_field, "must not be empty"));
            }
            let compiled = regex::RegexBuilder::new(&regex_policy.pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    let text = e.to_string();
                    let last = text.lines().last().unwrap_or("invalid").trim().to_string();
                    err(pattern_field, last)
                })?;
            let capture = regex_policy.capture.trim();
            if !capture.is_empty() && !compiled.capture_names().flatten().any(|n| n == capture) {
                return Err(err(
                    format!("{field}.regex.capture"),
                    "names no capture group of the pattern",
                ));
            }
            let order = match pb::RegexOrder::try_from(regex_policy.order) {
                Ok(pb::RegexOrder::Unspecified | pb::RegexOrder::Numeric) => RegexOrder::Numeric,
                Ok(pb::RegexOrder::Lexical) => RegexOrder::Lexical,
                Ok(pb::RegexOrder::Semver) => RegexOrder::Semver,
                Err(_) => return Err(err(format!("{field}.regex.order"), "unknown value")),
            };
            Ok(Policy::Regex {
                pattern: regex_policy.pattern.clone(),
                capture: capture.to_string(),
                order,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(registry: &str, repository: &str) -> pb::SourceSpec {
        pb::SourceSpec {
            upstream: Some(pb::source_spec::Upstream::Oci(pb::OciSource {
                registry: registry.into(),
                repository: repository.into(),
                resolve_digests: None,
            })),
            policy: None,
            poll_interval: None,
        }
    }

    #[test]
    fn spellings_of_one_source_share_an_id() {
        let a = validate(Some(&oci("127.0.0.1:5000", "acme/app")), "source").unwrap();
        let mut spec = oci("HTTPS://127.0.0.1:5000/", "acme/app");
        spec.policy = Some(pb::VersionPolicy {
            policy: Some(pb::version_policy::Policy::Newest(pb::NewestPolicy {})),
        });
        spec.poll_interval = Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        });
        let b = validate(Some(&spec), "source").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.source_id(), b.source_id());
        assert!(a.source_id().starts_with("oci-"));
        assert_eq!(a.source_id().len(), "oci-".len() + 16);
    }

    #[test]
    fn a_different_policy_is_a_different_source() {
        let a = validate(Some(&oci("127.0.0.1:5000", "acme/app")), "source").unwrap();
        let mut spec = oci("127.0.0.1:5000", "acme/app");
        spec.policy = Some(pb::VersionPolicy {
            policy: Some(pb::version_policy::Policy::Semver(pb::SemverPolicy {
                range: "^1".into(),
                ..Default::default()
            })),
        });
        let b = validate(Some(&spec), "source").unwrap();
        assert_ne!(a.source_id(), b.source_id());
    }

    #[test]
    fn errors_name_the_field() {
        let e = validate(Some(&oci("127.0.0.1:5000", "")), "sources[0]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sources[0].oci.repository: must not be empty"
        );
        let e = validate(Some(&oci("ftp://x", "a")), "source").unwrap_err();
        assert_eq!(e.field, "source.oci.registry");
        let e = validate(Some(&oci("r", "Acme")), "source").unwrap_err();
        assert_eq!(e.field, "source.oci.repository");
        let e = validate(None, "source").unwrap_err();
        assert_eq!(e.to_string(), "source: is required");
        let empty = pb::SourceSpec::default();
        assert_eq!(
            validate(Some(&empty), "source").unwrap_err().field,
            "source"
        );
    }

    #[test]
    fn bad_semver_range_and_regex_are_rejected() {
        let mut spec = oci("r", "a");
        spec.policy = Some(pb::VersionPolicy {
            policy: Some(pb::version_policy::Policy::Semver(pb::SemverPolicy {
                range: ">=1.2, <x".into(),
                ..Default::default()
            })),
        });
        let e = validate(Some(&spec), "source").unwrap_err();
        assert_eq!(e.field, "source.policy.semver.range");
        spec.policy = Some(pb::VersionPolicy {
            policy: Some(pb::version_policy::Policy::Regex(pb::RegexPolicy {
                pattern: "(".into(),
                ..Default::default()
            })),
        });
        assert_eq!(
            validate(Some(&spec), "source").unwrap_err().field,
            "source.policy.regex.pattern"
        );
        spec.policy = Some(pb::VersionPolicy {
            policy: Some(pb::version_policy::Policy::Regex(pb::RegexPolicy {
                pattern: "b-(?P<n>[0-9]+)".into(),
                capture: "m".into(),
                order: 0,
            })),
        });
        assert_eq!(
            validate(Some(&spec), "source").unwrap_err().field,
            "source.policy.regex.capture"
        );
    }

    #[test]
    fn git_and_directory_rules() {
        let git = |url: &str, r: &str, path: &str| pb::SourceSpec {
            upstream: Some(pb::source_spec::Upstream::Git(pb::GitSource {
                url: url.into(),
                r#ref: r.into(),
                path: path.into(),
            })),
            ..Default::default()
        };
        let ok = validate(Some(&git("git://h/a.git/", "", "./data/")), "s").unwrap();
        assert_eq!(
            ok.upstream,
            Upstream::Git {
                url: "git://h/a.git".into(),
                git_ref: "HEAD".into(),
                path: "data".into()
            }
        );
        assert!(validate(Some(&git("git://h/a.git", "refs/tags/v*", "")), "s").is_ok());
        assert_eq!(
            validate(Some(&git("h/a.git", "", "")), "s")
                .unwrap_err()
                .field,
            "s.git.url"
        );
        assert_eq!(
            validate(Some(&git("git://h/a", "main", "")), "s")
                .unwrap_err()
                .field,
            "s.git.ref"
        );
        assert_eq!(
            validate(Some(&git("git://h/a", "", "a/../b")), "s")
                .unwrap_err()
                .field,
            "s.git.path"
        );
        for hostile in [
            "file:///srv/repo",
            "/srv/repo",
            "ext::sh -c touch% /tmp/pwned",
            "--upload-pack=touch /tmp/pwned",
            "ssh://-oProxyCommand=touch /a",
            "git@github.com:a/b.git",
            "https://user:token@github.com/a",
        ] {
            let refused = validate(Some(&git(hostile, "", "")), "s").unwrap_err();
            assert_eq!(refused.field, "s.git.url", "{hostile}");
        }
        let dir = pb::SourceSpec {
            upstream: Some(pb::source_spec::Upstream::Directory(pb::DirectorySource {
                path: "relative".into(),
                version_file: String::new(),
            })),
            ..Default::default()
        };
        assert_eq!(
            validate(Some(&dir), "s").unwrap_err().field,
            "s.directory.path"
        );
    }

    /// Found by `fuzz/fuzz_targets/source_spec.rs`: a NUL in the path only failed later, when
    /// `git archive` could not be started, instead of naming the field.
    #[test]
    fn git_paths_with_control_characters_are_refused() {
        let spec = pb::SourceSpec {
            upstream: Some(pb::source_spec::Upstream::Git(pb::GitSource {
                url: "git://h/a.git".into(),
                r#ref: String::new(),
                path: "./da\u{f}\0x".into(),
            })),
            ..Default::default()
        };
        assert_eq!(
            validate(Some(&spec), "s").unwrap_err().to_string(),
            "s.git.path: must not contain control characters"
        );
    }

    /// Found by `fuzz/fuzz_targets/source_spec.rs`: `//` canonicalised to an empty path, which
    /// then failed its own validation.
    #[test]
    fn trailing_slashes_and_the_whitespace_they_hide_are_not_part_of_a_directory() {
        let dir = |path: &str| pb::SourceSpec {
            upstream: Some(pb::source_spec::Upstream::Directory(pb::DirectorySource {
                path: path.into(),
                version_file: String::new(),
            })),
            ..Default::default()
        };
        let root = validate(Some(&dir("/")), "s").unwrap();
        assert_eq!(validate(Some(&dir("//")), "s"), Ok(root.clone()));
        assert_eq!(validate(Some(&dir(" /// ")), "s"), Ok(root));
        // Also found by the fuzz target: whitespace before a trailing slash survived the trim.
        let data = validate(Some(&dir("/data")), "s").unwrap();
        assert_eq!(validate(Some(&dir("/data\u{b}/")), "s"), Ok(data));
        assert_eq!(
            validate(Some(&dir("/data/.. /")), "s").unwrap_err().field,
            "s.directory.path"
        );
    }

    /// Found by `fuzz/fuzz_targets/source_spec.rs`: `x` canonicalised to `*`, which is
    /// canonicalised to the empty range, so one source had two ids.
    #[test]
    fn every_spelling_of_any_version_is_the_empty_range() {
        let with_range = |range: &str| {
            let mut spec = oci("r", "a");
            spec.policy = Some(pb::VersionPolicy {
                policy: Some(pb::version_policy::Policy::Semver(pb::SemverPolicy {
                    range: range.into(),
                    ..Default::default()
                })),
            });
            validate(Some(&spec), "s").unwrap()
        };
        let any = with_range("");
        for spelling in ["*", "x", "X", " x "] {
            assert_eq!(with_range(spelling), any, "{spelling:?}");
        }
    }

    #[test]
    fn poll_interval_bounds() {
        let mut spec = oci("r", "a");
        spec.poll_interval = Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        });
        assert_eq!(
            validate(Some(&spec), "source").unwrap_err().to_string(),
            "source.poll_interval: must be between 1s and 24h"
        );
    }

    #[test]
    fn host_of_upstreams() {
        let spec = validate(Some(&oci("http://127.0.0.1:5000", "a")), "s").unwrap();
        assert_eq!(spec.upstream.host().as_deref(), Some("127.0.0.1:5000"));
    }
}
