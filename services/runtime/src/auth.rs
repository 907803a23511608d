//! Authentication and authorization of callers, the same scheme on every AutoCrane gRPC server.
//!
//! The caller's `authorization: Bearer <token>` metadata is resolved with a TokenReview; what the
//! server allows without asking RBAC (a pod-bound token acting on its own pod, a pod-bound token
//! fetching data) is the server's [`Scope`] rule; every other call is a SubjectAccessReview of
//! the RBAC verb on the server's resource (`watchdogs`, `versions` or `datasources` in group
//! `autocrane.io`). Both answers are cached briefly, so a busy client costs the API server one
//! review per cache period, not one per call.
//!
//! `--insecure-allow-anonymous` lets calls without a token do everything (local play without a
//! cluster); calls with a token are still checked when the server has a Kubernetes API, so a test
//! of the real scheme cannot pass by accident on an anonymous server.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tonic::{Status, metadata::MetadataMap};

use crate::RuntimeError;

/// The TokenReview extra key naming the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// How long TokenReview answers and SubjectAccessReview allowances are reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// How long a SubjectAccessReview denial is reused: short, so a new RoleBinding takes effect soon.
pub const DENIAL_TTL: Duration = Duration::from_secs(2);
/// Entries per cache; past it, expired entries go, then everything (a flood of distinct forged
/// tokens must not grow memory without bound).
const CACHE_MAX: usize = 10_000;

/// The authentication flags every AutoCrane gRPC server shares.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthArgs {
    /// Allow calls without a bearer token to do everything. For local play only; calls that do
    /// carry a token are still checked.
    #[arg(long, env = "AUTOCRANE_INSECURE_ALLOW_ANONYMOUS")]
    pub insecure_allow_anonymous: bool,

    /// Audience a caller's token is reviewed for first (repeatable; default: the server's own
    /// name, `autocrane-watchdog-listener`, `autocrane-version-watcher` or
    /// `autocrane-data-repository`); tokens not minted for it are accepted when valid for the API
    /// server itself (`kubectl create token SA`). Projected tokens should name it
    /// (`serviceAccountToken.audience`), so they cannot be replayed against the API server.
    #[arg(
        long = "token-audience",
        env = "AUTOCRANE_TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub token_audiences: Vec<String>,
}

impl AuthArgs {
    /// The audiences to review tokens for: the flag's, or `default` when none was given.
    pub fn audiences(&self, default: &str) -> Vec<String> {
        if self.token_audiences.is_empty() {
            vec![default.to_string()]
        } else {
            self.token_audiences.clone()
        }
    }
}

/// What a call does, as an RBAC verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Read one object.
    Get,
    /// Read a collection.
    List,
    /// Stream changes.
    Watch,
    /// Add an object (track a source, post a watchdog).
    Create,
    /// Change an object (quarantine, pin).
    Update,
    /// Remove an object (untrack a source, delete a watchdog).
    Delete,
}

impl Verb {
    /// The RBAC verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The RBAC resource a server's calls are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// The API group (`autocrane.io`).
    pub group: &'static str,
    /// The resource (`versions`).
    pub resource: &'static str,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.resource, self.group)
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

/// The pod a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    /// The pod's namespace (the ServiceAccount's).
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

impl fmt::Display for BoundPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Caller {
    /// The pod the token is bound to: namespace from the service-account username, name from the
    /// TokenReview extra.
    pub fn bound_pod(&self) -> Option<BoundPod> {
        let namespace = self
            .username
            .strip_prefix("system:serviceaccount:")?
            .split(':')
            .next()?;
        let name = self.extra.get(POD_NAME_EXTRA)?.first()?;
        Some(BoundPod {
            namespace: namespace.to_string(),
            name: name.clone(),
        })
    }
}

/// A server's decision that needs no API call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Allowed without RBAC (a pod-bound token doing what its pod needs).
    Allow,
    /// Refused, whatever RBAC says; the reason names the rule.
    Deny(String),
    /// Ask RBAC with a SubjectAccessReview.
    Rbac,
}

/// Who was refused what, and why: the message of a PERMISSION_DENIED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Who asked (the TokenReview username).
    pub user: String,
    /// The RBAC verb.
    pub verb: &'static str,
    /// The resource, `versions.autocrane.io`.
    pub resource: String,
    /// The namespace; `None` for cluster-wide resources.
    pub namespace: Option<String>,
    /// Why: the rule that refused, or the SubjectAccessReview's reason.
    pub reason: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Denial {
            user,
            verb,
            resource,
            namespace,
            reason,
        } = self;
        write!(f, "{user} may not {verb} {resource}")?;
        if let Some(namespace) = namespace {
            write!(f, " in namespace {namespace:?}")?;
        }
        write!(f, ": {reason}")
    }
}

/// The bearer token of a call, if any.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

/// The gRPC status of an authentication or authorization failure; `None` for other errors, which
/// the server maps itself.
pub fn status(err: &RuntimeError) -> Option<Status> {
    match err {
        RuntimeError::Unauthenticated(_) => Some(Status::unauthenticated(err.to_string())),
        RuntimeError::PermissionDenied(_) => Some(Status::permission_denied(err.to_string())),
        RuntimeError::ReviewToken(_) | RuntimeError::ReviewAccess(_) => {
            tracing::warn!(error = %err, cause = ?std::error::Error::source(err).map(ToString::to_string), "Kubernetes review failed");
            Some(Status::unavailable(format!(
                "{err}: the Kubernetes API is unavailable"
            )))
        }
        _ => None,
    }
}

type SarKey = (String, String, Verb, Option<String>);
/// A SubjectAccessReview answer: allowed, or the reason it was not.
type Decision = Result<(), String>;

/// Authenticates and authorizes callers of one server, caching the answers for [`CACHE_TTL`].
pub struct Authorizer {
    client: Option<Client>,
    resource: Resource,
    allow_anonymous: bool,
    audiences: Vec<String>,
    tokens: Mutex<HashMap<String, (Instant, Option<Caller>)>>,
    decisions: Mutex<HashMap<SarKey, (Instant, Decision)>>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("resource", &self.resource)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("audiences", &self.audiences)
            .field("kubernetes", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

fn cached<K: std::hash::Hash + Eq, V: Clone>(
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
    /// Reviews through `client` the calls on `resource`. With `allow_anonymous`, calls without a
    /// token are allowed everything (local play only); calls with a token are still checked.
    ///
    /// Tokens are reviewed for `audiences` first (the projected tokens AutoCrane's pods carry are
    /// minted for one server, so they cannot be replayed against the API server); a token not
    /// valid for them is reviewed once more for the API server's own audience, so that tokens from
    /// `kubectl create token` keep working. Both answers are cached per token.
    pub fn new(
        client: Client,
        resource: Resource,
        allow_anonymous: bool,
        audiences: Vec<String>,
    ) -> Self {
        Self::with_client(Some(client), resource, allow_anonymous, audiences)
    }

    /// An authorizer for a server started with `--insecure-allow-anonymous` where no Kubernetes
    /// configuration was found: every call is served as anonymous, a token or not. There is
    /// nothing to review a token with, and refusing it would protect nothing (the same call
    /// without it is allowed), while clients that always send their pod's token (the
    /// DataDeployer) keep working against a local server.
    pub fn anonymous_only(resource: Resource) -> Self {
        Self::with_client(None, resource, true, Vec::new())
    }

    /// The authorizer `args` ask for, on `resource`: the Kubernetes client from the environment
    /// (in-cluster or `KUBECONFIG`); without one, an [`Authorizer::anonymous_only`] when
    /// `--insecure-allow-anonymous` is set and an error otherwise.
    pub async fn from_args(
        args: &AuthArgs,
        resource: Resource,
        default_audience: &str,
    ) -> Result<Self, RuntimeError> {
        let AuthArgs {
            insecure_allow_anonymous,
            token_audiences: _,
        } = args;
        if *insecure_allow_anonymous {
            tracing::warn!(
                %resource,
                "Calls without a token are allowed everything (--insecure-allow-anonymous)"
            );
        }
        match Client::try_default().await {
            Ok(client) => Ok(Self::new(
                client,
                resource,
                *insecure_allow_anonymous,
                args.audiences(default_audience),
            )),
            Err(err) if *insecure_allow_anonymous => {
                tracing::warn!(error = %err, "No Kubernetes API to review tokens with: every call is anonymous");
                Ok(Self::anonymous_only(resource))
            }
            Err(err) => Err(RuntimeError::ConnectKube(err)),
        }
    }

    fn with_client(
        client: Option<Client>,
        resource: Resource,
        allow_anonymous: bool,
        audiences: Vec<String>,
    ) -> Self {
        Self {
            client,
            resource,
            allow_anonymous,
            audiences,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// The resource this authorizer checks.
    pub fn resource(&self) -> Resource {
        self.resource
    }

    /// Checks that the bearer of `token` may do `verb` on the resource (in `namespace`, or
    /// cluster-wide with `None`), by RBAC alone.
    pub async fn check(
        &self,
        token: Option<&str>,
        verb: Verb,
        namespace: Option<&str>,
    ) -> Result<(), RuntimeError> {
        self.check_with(token, verb, namespace, |_| Scope::Rbac)
            .await
    }

    /// Checks that the bearer of `token` may do `verb`: `scope` decides first what the caller may
    /// do without RBAC (and what it may not do at all); [`Scope::Rbac`] asks a
    /// SubjectAccessReview.
    pub async fn check_with(
        &self,
        token: Option<&str>,
        verb: Verb,
        namespace: Option<&str>,
        scope: impl FnOnce(&Caller) -> Scope,
    ) -> Result<(), RuntimeError> {
        let Some(token) = token.filter(|_| self.client.is_some()) else {
            if self.allow_anonymous {
                return Ok(());
            }
            return Err(RuntimeError::Unauthenticated(
                "missing `authorization: Bearer <token>` metadata".into(),
            ));
        };
        let caller = self.authenticate(token).await?;
        let denied = |reason: String| {
            RuntimeError::PermissionDenied(Box::new(Denial {
                user: caller.username.clone(),
                verb: verb.as_str(),
                resource: self.resource.to_string(),
                namespace: namespace.map(str::to_string),
                reason,
            }))
        };
        match scope(&caller) {
            Scope::Allow => Ok(()),
            Scope::Deny(reason) => Err(denied(reason)),
            Scope::Rbac => self
                .review_access(&caller, verb, namespace)
                .await?
                .map_err(denied),
        }
    }

    async fn authenticate(&self, token: &str) -> Result<Caller, RuntimeError> {
        let Some(client) = &self.client else {
            // check() serves such calls as anonymous; this is for a future caller that does not.
            return Err(RuntimeError::Unauthenticated(
                "this server has no Kubernetes API to review tokens with".into(),
            ));
        };
        let caller = match cached(&self.tokens, &token.to_string(), |_| CACHE_TTL) {
            Some(caller) => caller,
            None => {
                let mut caller = None;
                for audiences in [Some(self.audiences.clone()), None] {
                    if audiences.as_ref().is_some_and(Vec::is_empty) {
                        continue;
                    }
                    caller = review_token(client, token, audiences).await?;
                    if caller.is_some() {
                        break;
                    }
                }
                remember(&self.tokens, token.to_string(), caller.clone());
                caller
            }
        };
        caller.ok_or_else(|| RuntimeError::Unauthenticated("the bearer token is not valid".into()))
    }

    async fn review_access(
        &self,
        caller: &Caller,
        verb: Verb,
        namespace: Option<&str>,
    ) -> Result<Decision, RuntimeError> {
        let Some(client) = &self.client else {
            // authenticate() refused already: without a client no caller exists.
            return Err(RuntimeError::Unauthenticated(
                "no Kubernetes API to review permissions with".into(),
            ));
        };
        let key = (
            caller.username.clone(),
            caller.uid.clone(),
            verb,
            namespace.map(str::to_string),
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
                    group: Some(self.resource.group.into()),
                    resource: Some(self.resource.resource.into()),
                    verb: Some(verb.as_str().into()),
                    namespace: namespace.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let review = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(RuntimeError::ReviewAccess)?;
        let decision = match review.status {
            Some(status) if status.allowed => Ok(()),
            Some(status) => Err(format!(
                "no RBAC rule allows it{}",
                status
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
            None => Err("no RBAC rule allows it".to_string()),
        };
        remember(&self.decisions, key, decision.clone());
        Ok(decision)
    }
}

/// One TokenReview of `token` for `audiences` (None: the API server's own).
async fn review_token(
    client: &Client,
    token: &str,
    audiences: Option<Vec<String>>,
) -> Result<Option<Caller>, RuntimeError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences,
        },
        ..TokenReview::default()
    };
    let review = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(RuntimeError::ReviewToken)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const VERSIONS: Resource = Resource {
        group: "autocrane.io",
        resource: "versions",
    };

    fn caller(pod: Option<&str>) -> Caller {
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
    fn a_pod_bound_token_names_its_pod() {
        assert_eq!(
            caller(Some("web-0")).bound_pod(),
            Some(BoundPod {
                namespace: "shop".into(),
                name: "web-0".into()
            })
        );
        assert_eq!(caller(None).bound_pod(), None);
        let mut person = caller(Some("web-0"));
        person.username = "alice".into();
        assert_eq!(person.bound_pod(), None, "only service accounts bind pods");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer(&metadata), None);
        metadata.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&metadata), Some("abc.def"));
        metadata.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&metadata), None);
        metadata.insert("authorization", "Bearer  ".parse().unwrap());
        assert_eq!(bearer(&metadata), None);
    }

    #[test]
    fn a_denial_names_the_user_the_verb_and_the_resource() {
        let err = RuntimeError::PermissionDenied(Box::new(Denial {
            user: "system:serviceaccount:ns:sa".into(),
            verb: Verb::Update.as_str(),
            resource: VERSIONS.to_string(),
            namespace: None,
            reason: "no RBAC rule allows it".into(),
        }));
        assert_eq!(
            err.to_string(),
            "permission denied: system:serviceaccount:ns:sa may not update versions.autocrane.io: no RBAC rule allows it"
        );
        assert_eq!(status(&err).unwrap().code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status(&RuntimeError::Unauthenticated("x".into()))
                .unwrap()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn the_default_audience_applies_only_without_the_flag() {
        let args = AuthArgs::default();
        assert_eq!(
            args.audiences("autocrane-version-watcher"),
            ["autocrane-version-watcher"]
        );
        let args = AuthArgs {
            token_audiences: vec!["a".into(), "b".into()],
            ..AuthArgs::default()
        };
        assert_eq!(args.audiences("autocrane-version-watcher"), ["a", "b"]);
    }

    #[tokio::test]
    async fn without_kubernetes_every_call_is_anonymous() {
        let auth = Authorizer::anonymous_only(VERSIONS);
        auth.check(None, Verb::Update, None).await.unwrap();
        auth.check(Some("a.b.c"), Verb::Delete, None).await.unwrap();
    }
}
