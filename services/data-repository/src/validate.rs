//! Request validation, sans-IO. Every rejection names the proto field and the rule, so a caller
//! can fix the request without reading the server's code. (Whether a directory is allowed needs
//! the file system; [`crate::grpc`] asks and wraps the answer with [`directory_not_allowed`].)

use autocrane_api::proto::{
    data_v1 as pb,
    version_v1::{SourceSpec, source_spec::Upstream},
};
use autocrane_runtime::upstream::{egress::EgressRefused, git::parse_remote};

/// Largest `holder` of a pin (a DNS-1123 subdomain's length: holders are object names).
pub const MAX_HOLDER_BYTES: usize = 253;

/// The page size of a list call that sets none.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// A rejected field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The request field, as named in the proto (`source_id`, `source.http.json_pointer`,
    /// `have[2]`, …).
    pub field: String,
    /// The rule it breaks.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A field that must be set.
pub fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Invalid> {
    if value.is_empty() {
        Err(invalid(field, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// A source that can be a data source: set, and git, HTTP (the URL is the archive) or a directory.
/// Returns the spec, and the directory path to check against the allowed directories, if any.
pub fn data_source(source: Option<SourceSpec>) -> Result<(SourceSpec, Option<String>), Invalid> {
    let spec = source.ok_or_else(|| invalid("source", "required"))?;
    let directory = match &spec.upstream {
        None => return Err(invalid("source", "set one of git, http and directory")),
        Some(Upstream::Oci(_)) => {
            return Err(invalid("source.oci", "OCI sources are not data sources"));
        }
        Some(Upstream::Http(http)) if !http.json_pointer.is_empty() => {
            return Err(invalid(
                "source.http.json_pointer",
                "must be empty for a data source (the URL is the archive, its ETag the version)",
            ));
        }
        Some(Upstream::Directory(directory)) => Some(directory.path.trim().to_string()),
        Some(_) => None,
    };
    Ok((spec, directory))
}

/// The rejection of a directory source outside the allowed directories; `why` says which.
pub fn directory_not_allowed(why: String) -> Invalid {
    invalid("source.directory.path", why)
}

/// The field and host a git or HTTP data source reaches, for the egress check; `None` for
/// directories. A git URL outside the runtime's grammar (`file://`, `ext::`, option-like
/// hosts, …) is refused here.
pub fn remote_host(spec: &SourceSpec) -> Result<Option<(&'static str, String)>, Invalid> {
    match &spec.upstream {
        Some(Upstream::Git(git)) => {
            let url = git.url.trim().trim_end_matches('/');
            let remote = parse_remote(url).map_err(|e| invalid("source.git.url", e.to_string()))?;
            Ok(Some(("source.git.url", remote.host)))
        }
        Some(Upstream::Http(http)) => {
            let host = http
                .url
                .trim()
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(str::to_string))
                .ok_or_else(|| invalid("source.http.url", "must be an http:// or https:// URL"))?;
            Ok(Some(("source.http.url", host)))
        }
        _ => Ok(None),
    }
}

/// The rejection of a source whose host the egress policy refuses.
pub fn egress_refused(field: &'static str, refused: EgressRefused) -> Invalid {
    invalid(field, refused.to_string())
}

/// A page size: 0 means [`DEFAULT_PAGE_SIZE`], otherwise 1..=1000.
pub fn page_size(size: u32) -> Result<usize, Invalid> {
    match size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=1000 => Ok(size as usize),
        _ => Err(invalid("page_size", "must be 0..1000")),
    }
}

/// The digests a fetching client already has: each a `sha256:<64 hex>` digest.
pub fn have(have: &[String]) -> Result<(), Invalid> {
    match have
        .iter()
        .position(|digest| !autocrane_api::manifest::is_digest(digest))
    {
        Some(index) => Err(invalid(
            format!("have[{index}]"),
            "not a sha256:<64 hex> digest",
        )),
        None => Ok(()),
    }
}

/// Where a fetch resumes: a blob of this fetch's plan (`planned`: its size, or `None` when the
/// plan has no such blob) and an offset within it.
pub fn resume(resume: &pb::ResumePoint, planned: Option<u64>) -> Result<(), Invalid> {
    let size = planned.ok_or_else(|| invalid("resume.digest", "not a blob this fetch sends"))?;
    if resume.offset > size {
        return Err(invalid("resume.offset", "beyond the end of the blob"));
    }
    Ok(())
}

/// The holder of a pin: set and at most [`MAX_HOLDER_BYTES`] bytes.
pub fn holder(holder: &str) -> Result<&str, Invalid> {
    let holder = required("holder", holder)?;
    if holder.len() > MAX_HOLDER_BYTES {
        return Err(invalid("holder", "at most 253 bytes"));
    }
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use autocrane_api::proto::version_v1::{DirectorySource, GitSource, HttpSource, OciSource};

    fn spec(upstream: Upstream) -> Option<SourceSpec> {
        Some(SourceSpec {
            upstream: Some(upstream),
            ..Default::default()
        })
    }

    #[test]
    fn required_fields_name_themselves() {
        assert_eq!(required("source_id", "git-1"), Ok("git-1"));
        let err = required("source_id", "").unwrap_err();
        assert_eq!(err.to_string(), "source_id: must not be empty");
    }

    #[test]
    fn data_sources_are_git_http_archives_or_directories() {
        assert_eq!(
            data_source(None).unwrap_err().to_string(),
            "source: required"
        );
        let empty = Some(SourceSpec::default());
        assert_eq!(data_source(empty).unwrap_err().field, "source");
        let oci = spec(Upstream::Oci(OciSource::default()));
        assert_eq!(data_source(oci).unwrap_err().field, "source.oci");
        let pointer = spec(Upstream::Http(HttpSource {
            json_pointer: "/version".into(),
            ..Default::default()
        }));
        assert_eq!(
            data_source(pointer).unwrap_err().field,
            "source.http.json_pointer"
        );
        let git = spec(Upstream::Git(GitSource::default()));
        assert_eq!(data_source(git).unwrap().1, None);
        let directory = spec(Upstream::Directory(DirectorySource {
            path: " /data/config ".into(),
            ..Default::default()
        }));
        assert_eq!(
            data_source(directory).unwrap().1.as_deref(),
            Some("/data/config")
        );
    }

    #[test]
    fn page_size_defaults_to_100() {
        assert_eq!(page_size(0), Ok(100));
        assert_eq!(page_size(1000), Ok(1000));
        assert_eq!(
            page_size(1001).unwrap_err().to_string(),
            "page_size: must be 0..1000"
        );
    }

    #[test]
    fn have_names_the_first_bad_digest() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(have(std::slice::from_ref(&good)), Ok(()));
        let err = have(&[good, "md5:x".into()]).unwrap_err();
        assert_eq!(err.field, "have[1]");
    }

    #[test]
    fn resume_must_be_in_the_plan_and_the_blob() {
        let at = |offset| pb::ResumePoint {
            digest: "d".into(),
            offset,
        };
        assert_eq!(resume(&at(10), Some(10)), Ok(()));
        assert_eq!(
            resume(&at(11), Some(10)).unwrap_err().field,
            "resume.offset"
        );
        assert_eq!(resume(&at(0), None).unwrap_err().field, "resume.digest");
    }

    #[test]
    fn holders_are_at_most_253_bytes() {
        assert_eq!(holder("shop/web"), Ok("shop/web"));
        assert_eq!(holder("").unwrap_err().field, "holder");
        assert_eq!(
            holder(&"x".repeat(254)).unwrap_err().to_string(),
            "holder: at most 253 bytes"
        );
    }

    #[test]
    fn remote_hosts_of_data_sources_and_bad_git_urls() {
        let git = |url: &str| {
            spec(Upstream::Git(GitSource {
                url: url.into(),
                ..Default::default()
            }))
            .unwrap()
        };
        let http = |url: &str| {
            spec(Upstream::Http(HttpSource {
                url: url.into(),
                ..Default::default()
            }))
            .unwrap()
        };
        assert_eq!(
            remote_host(&git("git://127.0.0.1:9418/a/")),
            Ok(Some(("source.git.url", "127.0.0.1".into())))
        );
        assert_eq!(
            remote_host(&http("http://[::1]:8080/a.tgz")),
            Ok(Some(("source.http.url", "[::1]".into())))
        );
        for hostile in ["file:///srv/a", "ext::sh -c x", "--upload-pack=x", "host:a"] {
            let err = remote_host(&git(hostile)).unwrap_err();
            assert_eq!(err.field, "source.git.url", "{hostile}");
        }
        let dir = spec(Upstream::Directory(DirectorySource::default())).unwrap();
        assert_eq!(remote_host(&dir), Ok(None));
    }
}
