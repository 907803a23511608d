//! Who may change and read watchdogs (fixes W13): the watchdog rule over the shared scheme of
//! [`autocrane_runtime::auth`] (TokenReview, SubjectAccessReview, caches, anonymous mode).
//!
//! A token bound to a pod (TokenReview `user.extra["authentication.kubernetes.io/pod-name"]`) may
//! create and delete the watchdogs of that pod and of no other; every other case is a
//! SubjectAccessReview of the verb on `watchdogs.autocrane.io` in the pod's namespace.

use autocrane_api::keys::{GROUP, WATCHDOG_RESOURCE};
use autocrane_runtime::auth::Resource;
pub use autocrane_runtime::auth::{Authorizer, Caller, POD_NAME_EXTRA, Scope, Verb};

use crate::{Error, pods::PodKey};

/// The resource RBAC grants watchdog access on.
pub const WATCHDOGS: Resource = Resource {
    group: GROUP,
    resource: WATCHDOG_RESOURCE,
};

/// The pod a caller's token is bound to, if any.
pub fn bound_pod(caller: &Caller) -> Option<PodKey> {
    caller
        .bound_pod()
        .map(|pod| PodKey::new(pod.namespace, pod.name))
}

/// Decides what a pod-bound token may do without asking RBAC: write its own pod's watchdogs, and
/// no other pod's.
pub fn scope(caller: &Caller, verb: Verb, pod: Option<&PodKey>) -> Scope {
    match (bound_pod(caller), verb, pod) {
        (Some(own), Verb::Create | Verb::Delete, Some(target)) if own == *target => Scope::Allow,
        (Some(own), Verb::Create | Verb::Delete, _) => Scope::Deny(format!(
            "the token is bound to pod {own} and may only change that pod's watchdogs"
        )),
        _ => Scope::Rbac,
    }
}

/// Checks that the bearer of `token` may do `verb` in `namespace` (on `pod` for writes).
pub async fn check(
    auth: &Authorizer,
    token: Option<&str>,
    verb: Verb,
    namespace: &str,
    pod: Option<&PodKey>,
) -> Result<(), Error> {
    auth.check_with(token, verb, Some(namespace), |caller| {
        scope(caller, verb, pod)
    })
    .await
    .map_err(Error::Auth)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
        assert_eq!(bound_pod(&caller), Some(own.clone()));
        assert_eq!(scope(&caller, Verb::Create, Some(&own)), Scope::Allow);
        assert_eq!(scope(&caller, Verb::Delete, Some(&own)), Scope::Allow);
    }

    #[test]
    fn a_pod_token_may_not_write_another_pod() {
        let caller = service_account(Some("web-0"));
        let other = PodKey::new("shop", "web-1");
        assert_eq!(
            scope(&caller, Verb::Create, Some(&other)),
            Scope::Deny(
                "the token is bound to pod shop/web-0 and may only change that pod's watchdogs"
                    .into()
            )
        );
        let elsewhere = PodKey::new("bank", "web-0");
        assert!(matches!(
            scope(&caller, Verb::Create, Some(&elsewhere)),
            Scope::Deny(_)
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
