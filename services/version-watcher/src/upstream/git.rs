//! Git remotes through the `git` CLI (`git ls-remote`): no clone, one round trip per probe. `git`
//! runs in the runtime's [`GitSandbox`](autocrane_runtime::upstream::git::GitSandbox).
//!
//! `HEAD` or `refs/heads/<branch>`: the version is the head commit (an incomplete listing: older
//! commits stay known as history). `refs/tags/<glob>`: every matching tag is a version named by
//! the tag, with the commit it points to (peeled for annotated tags) as its digest.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use super::{ProbeError, Upstreams};
use crate::state::{Listing, Observed};

/// How long one `git ls-remote` may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Probes `url` for `git_ref`.
pub async fn probe(ctx: &Upstreams, url: &str, git_ref: &str) -> Result<Listing, ProbeError> {
    let host = crate::spec::Upstream::Git {
        url: url.to_string(),
        git_ref: String::new(),
        path: String::new(),
    }
    .host()
    .unwrap_or_default();
    ctx.limiter.acquire(&host).await;
    let tags = git_ref.strip_prefix("refs/tags/");
    // The URL's grammar and its host's addresses are checked before `git` starts.
    let mut command = ctx
        .git
        .remote(url)
        .await
        .map_err(|e| ProbeError::new(format!("git ls-remote {url}: {e}")))?;
    command
        .arg("ls-remote")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tags {
        Some(_) => command.arg("--tags").arg("--").arg(url),
        None => command.arg("--").arg(url).arg(git_ref),
    };
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            ProbeError::new(format!(
                "git ls-remote {url}: timed out after {GIT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| ProbeError::new(format!("running git: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ProbeError::new(format!(
            "git ls-remote {url}: {}",
            stderr.trim().lines().last().unwrap_or("failed")
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    match tags {
        Some(glob) => Ok(Listing {
            items: parse_tags(&stdout, glob),
            complete: true,
        }),
        None => {
            let sha = stdout
                .lines()
                .filter_map(|line| line.split_once('\t'))
                .find(|(_, name)| *name == git_ref)
                .map(|(sha, _)| sha.to_string())
                .ok_or_else(|| ProbeError::new(format!("git ls-remote {url}: no ref {git_ref}")))?;
            Ok(Listing {
                items: vec![Observed {
                    name: sha.clone(),
                    digest: sha,
                    published_at: None,
                }],
                complete: false,
            })
        }
    }
}

/// Tags matching `glob` from `ls-remote --tags` output; an annotated tag's `^{}` line gives the
/// commit it points to.
fn parse_tags(output: &str, glob: &str) -> Vec<Observed> {
    let pattern = glob_regex(glob);
    let mut tags: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (sha, name) in output.lines().filter_map(|line| line.split_once('\t')) {
        let Some(tag) = name.strip_prefix("refs/tags/") else {
            continue;
        };
        let (tag, peeled) = match tag.strip_suffix("^{}") {
            Some(tag) => (tag, true),
            None => (tag, false),
        };
        if !pattern.is_match(tag) {
            continue;
        }
        let entry = tags
            .entry(tag.to_string())
            .or_insert((sha.to_string(), peeled));
        if peeled {
            *entry = (sha.to_string(), true);
        }
    }
    tags.into_iter()
        .map(|(name, (sha, _))| Observed {
            name,
            digest: sha,
            published_at: None,
        })
        .collect()
}

fn glob_regex(glob: &str) -> regex::Regex {
    let body: String = glob
        .split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*");
    regex::Regex::new(&format!("^{body}$")).expect("escaped glob is a valid regex")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_tags_are_peeled_and_globs_filter() {
        let output =
            "aaa\trefs/tags/v1\nbbb\trefs/tags/v1^{}\nccc\trefs/tags/v2\nddd\trefs/tags/x1\n";
        let tags = parse_tags(output, "v*");
        assert_eq!(tags.len(), 2);
        assert_eq!(
            (tags[0].name.as_str(), tags[0].digest.as_str()),
            ("v1", "bbb")
        );
        assert_eq!(
            (tags[1].name.as_str(), tags[1].digest.as_str()),
            ("v2", "ccc")
        );
        assert_eq!(parse_tags(output, "*").len(), 3);
    }
}
