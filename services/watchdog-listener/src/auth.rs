//! Authentication and authorization of callers (fixes W13).
//!
//! The caller's `authorization: Bearer <token>` is resolved with a TokenReview; a token bound to a
//! pod (TokenReview `user.extra["authentication.kubernetes.io/pod-name"]`) may create and delete
//! the watchdogs of that pod and of no other; every other case is a SubjectAccessReview of the verb
//! on `watchdogs.autocrane.io` in the namespace. Both answers are cached briefly, so a busy pod
//! costs the API server one review per cache period, not one per post.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use autocrane_api::keys::{GROUP, WATCHDOG_RESOURCE};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

use crate::{Error, pods::PodKey};

/// The TokenReview extra key naming the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// How long TokenReview answers and SubjectAccessReview allowances are reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// How long a SubjectAccessReview denial is reused: short, so a new RoleBinding takes effect soon.
pub const DENIAL_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;

/// What a call does, as an RBAC verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// PostWatchdog.
    Create,
    /// DeleteWatchdog.
    Delete,
    /// GetPodHealth.
    Get,
    /// ListPodHealth.
    List,
    /// WatchPodHealth.
    Watch,
}

impl Verb {
    /// The RBAC verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Delete => "delete",
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The username (`system:serviceaccount:<ns>:<sa>` for service accounts).
    pub username: String,
    /// The UID.
    pub uid: String,
    /// The groups.
    pub groups: Vec<String>,
    /// Extra attributes from the TokenReview.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Caller {
    /// The pod the token is bound to: namespace from the service-account username, name from the
    /// TokenReview extra.
    pub fn bound_pod(&self) -> Option<PodKey> {
        let namespace = self
            .username
            .strip_prefix("system:serviceaccount:")?
            .split(':')
            .next()?;
        let name = self.extra.get(POD_NAME_EXTRA)?.first()?;
        Some(PodKey::new(namespace, name.clone()))
    }
}

/// The decision that needs no API call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Allowed: a pod-bound token writing its own pod.
    OwnPod,
    /// Refused: a pod-bound token writing another pod.
    OtherPod(PodKey),
    /// Ask RBAC.
    Rbac,
}

/// Decides what a pod-bound token may do without asking RBAC.
pub fn scope(caller: &Caller, verb: Verb, pod: Option<&PodKey>) -> Scope {
    match (caller.bound_pod(), verb, pod) {
        (Some(own), Verb::Create | Verb::Delete, Some(target)) if own == *target => Scope::OwnPod,
        (Some(own), Verb::Create | Verb::Delete, _) => Scope::OtherPod(own),
        _ => Scope::Rbac,
    }
}

type SarKey = (String, String, Verb, String);
/// A SubjectAccessReview answer: allowed, or the reason it was not.
type Decision = Result<(), String>;

/// Authenticates and authorizes callers, caching the answers for [`CACHE_TTL`].
pub struct Authorizer {
    client: Client,
    allow_anonymous: bool,
    tokens: Mutex<HashMap<String, (Instant, Option<Caller>)>>,
    decisions: Mutex<HashMap<SarKey, (Instant, Decision)>>,
    audiences: Vec<String>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("allow_anonymous", &self.allow_anonymous)
            .finish_non_exhaustive()
    }
}

fn cached<K: std::hash::Hash + Eq + Clone, V: Clone>(
    map: &Mutex<HashMap<K, (Instant, V)>>,
    key: &K,
    ttl: impl Fn(&V) -> Duration,
) -> Option<V> {
    let map = map.lock().expect("cache lock");
    map.get(key)
        .filter(|(at, v)| at.elapsed() < ttl(v))
        .map(|(_, v)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, (Instant, V)>>, key: K, value: V) {
    let mut map = map.lock().expect("cache lock");
    if map.len() >= CACHE_MAX {
        map.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
    }
    map.insert(key, (Instant::now(), value));
}

impl Authorizer {
    /// Reviews through `client`. With `allow_anonymous`, calls without a token are allowed
    /// everything (local play only); calls with a token are still checked.
    ///
    /// Tokens are reviewed for `audiences` first (the projected tokens AutoCrane's pods carry are
    /// minted for the listener, so they cannot be replayed against the API server); a token not
    /// valid for them is reviewed once more for the API server's own audience, so that tokens from
    /// `kubectl create token` keep working. Both answers are cached per token.
    pub fn new(client: Client, allow_anonymous: bool, audiences: Vec<String>) -> Self {
        Self {
            client,
            allow_anonymous,
            audiences,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that the bearer of `token` may do `verb` in `namespace` (on `pod` for writes).
    pub async fn check(
        &self,
        token: Option<&str>,
        verb: Verb,
        namespace: &str,
        pod: Option<&PodKey>,
    ) -> Result<(), Error> {
        let Some(token) = token else {
            if self.allow_anonymous {
                return Ok(());
            }
            return Err(Error::Unauthenticated(
                "missing `authorization: Bearer <token>` metadata".into(),
            ));
        };
        let caller = self.authenticate(token).await?;
        let denied = |reason: String| Error::PermissionDenied {
            verb: verb.as_str(),
            namespace: namespace.to_string(),
            reason,
        };
        match scope(&caller, verb, pod) {
            Scope::OwnPod => Ok(()),
            Scope::OtherPod(own) => Err(denied(format!(
                "the token is bound to pod {own} and may only change that pod's watchdogs"
            ))),
            Scope::Rbac => self
                .review_access(&caller, verb, namespace)
                .await?
                .map_err(denied),
        }
    }

    async fn authenticate(&self, token: &str) -> Result<Caller, Error> {
        let caller = match cached(&self.tokens, &token.to_string(), |_| CACHE_TTL) {
            Some(caller) => caller,
            None => {
                let mut caller = None;
                for audiences in [Some(self.audiences.clone()), None] {
                    if audiences.as_ref().is_some_and(Vec::is_empty) {
                        continue;
                    }
                    caller = self.review_token(token, audiences).await?;
                    if caller.is_some() {
                        break;
                    }
                }
                remember(&self.tokens, token.to_string(), caller.clone());
                caller
            }
        };
        caller.ok_or_else(|| Error::Unauthenticated("the bearer token is not valid".into()))
    }

    /// One TokenReview of `token` for `audiences` (None: the API server's own).
    async fn review_token(
        &self,
        token: &str,
        audiences: Option<Vec<String>>,
    ) -> Result<Option<Caller>, Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences,
            },
            ..TokenReview::default()
        };
        let review = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::ReviewToken)?;
        Ok(review
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .map(|user| Caller {
                username: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            }))
    }

    async fn review_access(
        &self,
        caller: &Caller,
        verb: Verb,
        namespace: &str,
    ) -> Result<Result<(), String>, Error> {
        let key = (
            caller.username.clone(),
            caller.uid.clone(),
            verb,
            namespace.to_string(),
        );
        if let Some(decision) = cached(&self.decisions, &key, |d: &Decision| {
            if d.is_ok() { CACHE_TTL } else { DENIAL_TTL }
        }) {
            return Ok(decision);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                uid: Some(caller.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(WATCHDOG_RESOURCE.into()),
                    verb: Some(verb.as_str().into()),
                    namespace: Some(namespace.into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let review = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::ReviewAccess)?;
        let decision = match review.status {
            Some(status) if status.allowed => Ok(()),
            Some(status) => Err(format!(
                "{} has no RBAC permission{}",
                caller.username,
                status
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            None => Err(format!("{} has no RBAC permission", caller.username)),
        };
        remember(&self.decisions, key, decision.clone());
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_account(pod: Option<&str>) -> Caller {
        Caller {
            username: "system:serviceaccount:shop:web".into(),
            uid: "u1".into(),
            groups: vec!["system:serviceaccounts".into()],
            extra: pod
                .map(|p| BTreeMap::from([(POD_NAME_EXTRA.to_string(), vec![p.to_string()])]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn a_pod_token_may_write_its_own_pod() {
        let caller = service_account(Some("web-0"));
        let own = PodKey::new("shop", "web-0");
        assert_eq!(caller.bound_pod(), Some(own.clone()));
        assert_eq!(scope(&caller, Verb::Create, Some(&own)), Scope::OwnPod);
        assert_eq!(scope(&caller, Verb::Delete, Some(&own)), Scope::OwnPod);
    }

    #[test]
    fn a_pod_token_may_not_write_another_pod() {
        let caller = service_account(Some("web-0"));
        let other = PodKey::new("shop", "web-1");
        assert_eq!(
            scope(&caller, Verb::Create, Some(&other)),
            Scope::OtherPod(PodKey::new("shop", "web-0"))
        );
        let elsewhere = PodKey::new("bank", "web-0");
        assert!(matches!(
            scope(&caller, Verb::Create, Some(&elsewhere)),
            Scope::OtherPod(_)
        ));
    }

    #[test]
    fn reads_and_unbound_tokens_go_to_rbac() {
        let own = PodKey::new("shop", "web-0");
        assert_eq!(
            scope(&service_account(Some("web-0")), Verb::Get, Some(&own)),
            Scope::Rbac
        );
        assert_eq!(
            scope(&service_account(None), Verb::Create, Some(&own)),
            Scope::Rbac
        );
    }
}
