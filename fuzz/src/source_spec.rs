//! Source specs (sent by any VersionWatcher or DataRepository client): whatever validates has a
//! canonical form that validates to itself with the same `source_id` (two clients that mean the
//! same source share it), whose persisted JSON reads back unchanged, and whose paths stay where
//! they should (a git sub-path is relative and normal, a directory absolute without `..`).
//!
//! Input, one field per line: the kind (`oci`, `git`, `http`, `directory`, else none), the kind's
//! fields (oci: registry, repository, resolve_digests `true`/`false`/empty; git: url, ref, path;
//! http: url, json_pointer; directory: path, version_file), the policy (empty, `none`, `newest`,
//! `pin <version>`, `semver <range>\t<prereleases>\t<v prefix>`, `regex <pattern>\t<capture>\t<order>`)
//! and the poll interval (`<seconds> <nanos>`, empty for none).

use autocrane_api::proto::version_v1 as pb;
use autocrane_version_watcher::grpc::spec_to_proto;
use autocrane_version_watcher::spec::{Spec, Upstream, validate};

fn flag(text: &str) -> bool {
    text == "true" || text == "1"
}

/// The proto spec an input describes.
pub fn spec_of(text: &str) -> pb::SourceSpec {
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or_default();
    use pb::source_spec::Upstream as U;
    let upstream = match next() {
        "oci" => Some(U::Oci(pb::OciSource {
            registry: next().into(),
            repository: next().into(),
            resolve_digests: match next() {
                "" => None,
                other => Some(flag(other)),
            },
        })),
        "git" => Some(U::Git(pb::GitSource {
            url: next().into(),
            r#ref: next().into(),
            path: next().into(),
        })),
        "http" => Some(U::Http(pb::HttpSource {
            url: next().into(),
            json_pointer: next().into(),
        })),
        "directory" => Some(U::Directory(pb::DirectorySource {
            path: next().into(),
            version_file: next().into(),
        })),
        _ => None,
    };
    use pb::version_policy::Policy as P;
    let policy_line = next();
    let (kind, rest) = policy_line.split_once(' ').unwrap_or((policy_line, ""));
    let mut args = rest.split('\t');
    let mut arg = || args.next().unwrap_or_default();
    let policy = match kind {
        "" => None,
        "newest" => Some(Some(P::Newest(pb::NewestPolicy {}))),
        "pin" => Some(Some(P::Pin(pb::PinPolicy {
            version: arg().into(),
        }))),
        "semver" => Some(Some(P::Semver(pb::SemverPolicy {
            range: arg().into(),
            include_prereleases: flag(arg()),
            allow_v_prefix: flag(arg()),
        }))),
        "regex" => Some(Some(P::Regex(pb::RegexPolicy {
            pattern: arg().into(),
            capture: arg().into(),
            order: arg().parse().unwrap_or_default(),
        }))),
        _ => Some(None),
    }
    .map(|policy| pb::VersionPolicy { policy });
    let poll_interval = next()
        .split_once(' ')
        .map(|(seconds, nanos)| prost_types::Duration {
            seconds: seconds.parse().unwrap_or_default(),
            nanos: nanos.parse().unwrap_or_default(),
        });
    pb::SourceSpec {
        upstream,
        policy,
        poll_interval,
    }
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let Ok(spec) = validate(Some(&spec_of(text)), "source") else {
        return;
    };
    // The proto form the server answers with (what a client that read it back would send).
    let again = validate(Some(&spec_to_proto(&spec)), "source")
        .unwrap_or_else(|e| panic!("the canonical form of {spec:?} is refused: {e}"));
    assert_eq!(again, spec, "canonicalising is not a fixed point");
    assert_eq!(again.source_id(), spec.source_id());
    let json = spec.canonical_json();
    let back: Spec = serde_json::from_str(&json).expect("the persisted form reads back");
    assert_eq!(back, spec, "{json}");
    let _ = spec.upstream.host();
    match &spec.upstream {
        // A backslash is an ordinary character of a git path.
        Upstream::Git { path, .. } => assert!(
            path.is_empty()
                || (!path.starts_with('/')
                    && !path.chars().any(char::is_control)
                    && path
                        .split('/')
                        .all(|part| !part.is_empty() && part != "." && part != "..")),
            "git path {path:?}"
        ),
        Upstream::Directory { path, version_file } => {
            assert!(
                path.starts_with('/') && !path.split('/').any(|p| p == ".."),
                "{path:?}"
            );
            assert!(
                !version_file.contains('/') && version_file != "..",
                "{version_file:?}"
            );
        }
        _ => {}
    }
}
