//! Version policies as pure functions: which names are versions of a source at all, how they are
//! ordered, and which one is current once quarantined versions are skipped.
//!
//! A name the policy does not admit (a `latest` tag under a semver policy, a tag outside the range)
//! is not a version of the source: it is never stored, listed or streamed. That keeps memory
//! proportional to the versions that matter and makes DISCOVERED events meaningful.

use std::{cmp::Ordering, time::SystemTime};

use crate::spec::{Policy, RegexOrder};

/// What the policy needs to know about one version.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The name.
    pub name: &'a str,
    /// When the upstream says it was published.
    pub published_at: Option<SystemTime>,
    /// When it was first seen.
    pub discovered_at: SystemTime,
    /// Discovery order within the source (ties of time).
    pub order: u64,
}

/// A policy with its range and regex compiled.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Semver {
        range: Option<semver::VersionReq>,
        include_prereleases: bool,
        allow_v_prefix: bool,
    },
    Regex {
        regex: regex::Regex,
        capture: String,
        order: RegexOrder,
    },
    Newest,
    Pin(String),
}

/// The sort key of an admitted version; greater is newer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Semver(semver::Version),
    Numeric(u128),
    Text(String),
    Time(SystemTime, u64),
}

impl CompiledPolicy {
    /// Compiles a validated policy. Validation already checked the range and the regex; should a
    /// persisted spec no longer compile (a library change), the policy admits nothing rather than
    /// guessing.
    pub fn new(policy: &Policy) -> Self {
        let kind =
            match policy {
                Policy::Semver {
                    range,
                    include_prereleases,
                    allow_v_prefix,
                } => Kind::Semver {
                    range: if range.is_empty() {
                        None
                    } else {
                        Some(semver::VersionReq::parse(range).unwrap_or_else(|_| {
                            semver::VersionReq::parse("<0.0.0-0").expect("static")
                        }))
                    },
                    include_prereleases: *include_prereleases,
                    allow_v_prefix: *allow_v_prefix,
                },
                Policy::Regex {
                    pattern,
                    capture,
                    order,
                } => Kind::Regex {
                    regex: regex::Regex::new(&format!("^(?:{pattern})$"))
                        .unwrap_or_else(|_| regex::Regex::new("[^\\s\\S]").expect("static")),
                    capture: capture.clone(),
                    order: *order,
                },
                Policy::Newest => Kind::Newest,
                Policy::Pin { version } => Kind::Pin(version.clone()),
            };
        Self { kind }
    }

    /// Whether `name` is a version of the source under this policy.
    pub fn admits(&self, name: &str) -> bool {
        match &self.kind {
            Kind::Newest | Kind::Pin(_) => true,
            _ => self.rank_name(name).is_some(),
        }
    }

    fn rank_name(&self, name: &str) -> Option<Rank> {
        match &self.kind {
            Kind::Semver {
                range,
                include_prereleases,
                allow_v_prefix,
            } => {
                let text = match name.strip_prefix('v') {
                    Some(rest) if *allow_v_prefix => rest,
                    _ => name,
                };
                let version = semver::Version::parse(text).ok()?;
                if !version.pre.is_empty() && !include_prereleases {
                    return None;
                }
                if let Some(range) = range {
                    // `semver` only lets a pre-release match a range that names a pre-release of
                    // the same x.y.z; when pre-releases are opted in, judge them by their x.y.z.
                    let mut release = version.clone();
                    release.pre = semver::Prerelease::EMPTY;
                    let matches = range.matches(&version)
                        || (*include_prereleases && range.matches(&release));
                    if !matches {
                        return None;
                    }
                }
                Some(Rank::Semver(version))
            }
            Kind::Regex {
                regex,
                capture,
                order,
            } => {
                let captures = regex.captures(name)?;
                let text = if capture.is_empty() {
                    name
                } else {
                    captures.name(capture)?.as_str()
                };
                match order {
                    RegexOrder::Numeric => text.parse::<u128>().ok().map(Rank::Numeric),
                    RegexOrder::Lexical => Some(Rank::Text(text.to_string())),
                    RegexOrder::Semver => semver::Version::parse(text).ok().map(Rank::Semver),
                }
            }
            Kind::Newest | Kind::Pin(_) => None,
        }
    }

    fn rank(&self, candidate: &Candidate<'_>) -> Option<Rank> {
        match &self.kind {
            Kind::Newest | Kind::Pin(_) => Some(Rank::Time(
                candidate.published_at.unwrap_or(candidate.discovered_at),
                candidate.order,
            )),
            _ => self.rank_name(candidate.name),
        }
    }

    /// Compares two admitted versions; `Greater` means `a` is newer. Equal ranks fall back to the
    /// name so that the order is total and stable.
    pub fn compare(&self, a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
        self.key(a).cmp(&self.key(b))
    }

    /// The sort key: rank, then name. Computed once per version when sorting or choosing, since
    /// ranking parses the name (5,000 tags would otherwise mean ~120,000 semver parses a sort).
    fn key<'a>(&self, candidate: &Candidate<'a>) -> (Option<Rank>, &'a str) {
        (self.rank(candidate), candidate.name)
    }

    /// The current version among `candidates`, skipping quarantined ones: the pinned one if it is
    /// present, or else the newest.
    pub fn choose<'a>(
        &self,
        candidates: impl IntoIterator<Item = Candidate<'a>>,
        quarantined: impl Fn(&str) -> bool,
    ) -> Option<&'a str> {
        let mut eligible = candidates
            .into_iter()
            .filter(|candidate| !quarantined(candidate.name));
        if let Kind::Pin(pin) = &self.kind {
            return eligible.find(|c| c.name == pin).map(|c| c.name);
        }
        eligible
            .max_by_key(|candidate| self.key(candidate))
            .map(|candidate| candidate.name)
    }

    /// Sorts `candidates` newest first.
    pub fn sort_newest_first(&self, candidates: &mut [Candidate<'_>]) {
        candidates.sort_by_cached_key(|candidate| std::cmp::Reverse(self.key(candidate)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(policy: Policy) -> CompiledPolicy {
        CompiledPolicy::new(&policy)
    }

    fn semver(range: &str, pre: bool, v: bool) -> CompiledPolicy {
        policy(Policy::Semver {
            range: range.into(),
            include_prereleases: pre,
            allow_v_prefix: v,
        })
    }

    fn candidates<'a>(names: &'a [&'a str]) -> Vec<Candidate<'a>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Candidate {
                name,
                published_at: None,
                discovered_at: SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64),
                order: i as u64,
            })
            .collect()
    }

    #[test]
    fn semver_picks_the_highest_in_range_not_the_latest_pushed() {
        let names = ["1.10.0", "1.9.0", "2.0.0", "latest", "1.11.0-rc.1"];
        let p = semver("^1", false, false);
        assert_eq!(p.choose(candidates(&names), |_| false), Some("1.10.0"));
        assert!(!p.admits("latest"));
        assert!(!p.admits("2.0.0"));
        assert!(!p.admits("1.11.0-rc.1"));
    }

    #[test]
    fn prereleases_are_opt_in() {
        let names = ["1.10.0", "1.11.0-rc.1"];
        let p = semver("^1", true, false);
        assert_eq!(p.choose(candidates(&names), |_| false), Some("1.11.0-rc.1"));
    }

    #[test]
    fn v_prefix_is_opt_in() {
        assert!(!semver("", false, false).admits("v1.2.3"));
        assert!(semver("", false, true).admits("v1.2.3"));
    }

    #[test]
    fn quarantined_versions_are_skipped() {
        let names = ["1.0.0", "1.1.0", "1.2.0"];
        let p = semver("", false, false);
        assert_eq!(
            p.choose(candidates(&names), |n| n == "1.2.0"),
            Some("1.1.0")
        );
        assert_eq!(p.choose(candidates(&names), |_| true), None);
    }

    #[test]
    fn regex_orders_by_the_capture() {
        let p = policy(Policy::Regex {
            pattern: "build-(?P<n>[0-9]+)".into(),
            capture: "n".into(),
            order: RegexOrder::Numeric,
        });
        let names = ["build-9", "build-10", "build-2", "other", "build-10x"];
        assert_eq!(p.choose(candidates(&names), |_| false), Some("build-10"));
        assert!(
            !p.admits("build-10x"),
            "the match must cover the whole name"
        );
        let lexical = policy(Policy::Regex {
            pattern: "build-(?P<n>[0-9]+)".into(),
            capture: "n".into(),
            order: RegexOrder::Lexical,
        });
        assert_eq!(
            lexical.choose(candidates(&names), |_| false),
            Some("build-9")
        );
    }

    #[test]
    fn newest_is_by_publication_then_discovery() {
        let p = policy(Policy::Newest);
        let mut list = candidates(&["a", "b", "c"]);
        assert_eq!(p.choose(list.clone(), |_| false), Some("c"));
        list[0].published_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(p.choose(list.clone(), |_| false), Some("a"));
        p.sort_newest_first(&mut list);
        let order: Vec<_> = list.iter().map(|c| c.name).collect();
        assert_eq!(order, ["a", "c", "b"]);
    }

    #[test]
    fn pin_chooses_only_the_pinned_version() {
        let p = policy(Policy::Pin {
            version: "b".into(),
        });
        assert_eq!(p.choose(candidates(&["a", "b", "c"]), |_| false), Some("b"));
        assert_eq!(p.choose(candidates(&["a", "c"]), |_| false), None);
        assert_eq!(p.choose(candidates(&["a", "b"]), |n| n == "b"), None);
    }
}
