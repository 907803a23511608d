//! Leader election on a `coordination.k8s.io/v1` Lease: of several controller replicas exactly one
//! acts; a standby takes over once the leader's Lease expires; a replica never acts while another
//! holds an unexpired Lease.
//!
//! Written here rather than taken from a crate: `kube-leader-election` pins kube 4, and
//! `kube-lease-manager` (kube 5) pulls rand 0.10 beside the workspace's rand 0.9 (one version of
//! each dependency). It is small: [`decide`] is the pure rule over the Lease as read; [`lead`] reads,
//! writes with the Lease's `resourceVersion` as precondition (two candidates cannot both win a
//! write), runs the controller while leading and stops it when the Lease is lost.
//!
//! Timing: the leader renews every third of the duration and steps down if it could not renew
//! within two thirds of it, so it has stopped acting before any standby can see the Lease expire.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, api::PostParams};
use tracing::Instrument;

use autocrane_runtime::shutdown::Shutdown;

use crate::Error;

/// Which Lease and who we are.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub duration: Duration,
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// It is free or expired: take it (a new transition).
    TakeOver,
    /// Another replica holds it until this moment.
    Wait(Timestamp),
}

/// The rule, over the Lease's spec as read at `now`.
pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::TakeOver;
    };
    let expires = renewed
        .0
        .saturating_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if expires <= now {
        Decision::TakeOver
    } else {
        Decision::Wait(expires)
    }
}

/// The Lease spec we write for `decision` (`None` for [`Decision::Wait`]).
pub fn next_spec(
    old: Option<&LeaseSpec>,
    decision: &Decision,
    config: &LeaseConfig,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let mut spec = old.cloned().unwrap_or_default();
    match decision {
        Decision::Wait(_) => return None,
        Decision::Renew => {}
        Decision::Create | Decision::TakeOver => {
            spec.holder_identity = Some(config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            if matches!(decision, Decision::TakeOver) {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
    }
    spec.lease_duration_seconds =
        Some(i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    Some(spec)
}

/// Tries once to hold the Lease; `Ok(true)` when we hold it now, `Ok(false)` when another replica
/// does (or won the race), with the moment to try again.
async fn try_hold(
    api: &Api<Lease>,
    config: &LeaseConfig,
) -> Result<(bool, Option<Timestamp>), Error> {
    let lease_error = |action, source| Error::Lease {
        action,
        lease: format!("{}/{}", config.namespace, config.name),
        source,
    };
    let current = match api.get_opt(&config.name).await {
        Ok(lease) => lease,
        Err(source) => return Err(lease_error("reading", source)),
    };
    let now = Timestamp::now();
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &config.identity,
        now,
        config.duration,
    );
    let Some(spec) = next_spec(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &decision,
        config,
        now,
    ) else {
        let Decision::Wait(until) = decision else {
            unreachable!("only Wait writes nothing")
        };
        return Ok((false, Some(until)));
    };
    let params = PostParams {
        dry_run: false,
        field_manager: Some(autocrane_api::keys::FIELD_MANAGER.into()),
    };
    let written = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&params, &lease).await
        }
        Some(mut lease) => {
            // `resourceVersion` stays set: the write fails with 409 if anyone wrote in between.
            lease.spec = Some(spec);
            api.replace(&config.name, &params, &lease).await
        }
    };
    match written {
        Ok(_) => {
            if decision != Decision::Renew {
                tracing::info!(identity = %config.identity, ?decision, "Leading");
            }
            Ok((true, None))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok((false, None)),
        Err(source) => Err(lease_error("writing", source)),
    }
}

/// Gives the Lease up at shutdown so a standby takes over at once (best effort).
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(e) = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        tracing::warn!(error = %e, "Releasing the Lease failed");
    }
}

/// Runs `term(stop)` while this replica holds the Lease, until `shutdown`. `stop` fires when the
/// Lease is lost (or at shutdown); the term must stop acting then. A new term starts on every
/// acquisition.
pub async fn lead<F, Fut>(
    client: kube::Client,
    config: LeaseConfig,
    shutdown: Shutdown,
    mut term: F,
) -> Result<(), Error>
where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let renew_every = config.duration / 3;
    let step_down_after = config.duration * 2 / 3;
    let mut running: Option<Term> = None;
    let mut last_held = tokio::time::Instant::now();
    loop {
        // A hung API call must not keep a leader acting past its step-down deadline.
        let outcome = tokio::time::timeout(renew_every, try_hold(&api, &config))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Waiting(
                    "the API server to answer the Lease request".into(),
                ))
            });
        let wait = match outcome {
            Ok((true, _)) => {
                last_held = tokio::time::Instant::now();
                if running.is_none() {
                    let (trigger, stop) = Shutdown::new();
                    let handle = tokio::spawn(term(stop).instrument(
                        tracing::info_span!("leader_term", identity = %config.identity),
                    ));
                    running = Some(Term {
                        trigger,
                        handle: Some(handle),
                    });
                }
                renew_every
            }
            Ok((false, until)) => {
                if running.is_some() {
                    tracing::warn!("Another replica holds the Lease; stepping down");
                }
                stop(&mut running).await;
                until.map_or(renew_every, |t| {
                    crate::lease::until(t)
                        .min(config.duration)
                        .max(Duration::from_millis(100))
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "Leader election could not reach the Lease");
                if running.is_some() && last_held.elapsed() >= step_down_after {
                    tracing::warn!("Could not renew the Lease in time; stepping down");
                    stop(&mut running).await;
                }
                renew_every.min(Duration::from_secs(1))
            }
        };
        if let Some(term) = &mut running
            && term.handle.as_ref().is_some_and(|h| h.is_finished())
        {
            let handle = term.handle.take().expect("checked");
            running = None;
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => tracing::error!(error = %e, "The controller task failed"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.wait() => {
                let leading = running.is_some();
                stop(&mut running).await;
                if leading {
                    release(&api, &config).await;
                }
                return Ok(());
            }
        }
    }
}

/// A running leader term. Dropped without [`stop`] (the election itself failed or was dropped),
/// it aborts the term: nothing acts without the election behind it.
struct Term {
    trigger: autocrane_runtime::shutdown::ShutdownTrigger,
    handle: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl Drop for Term {
    fn drop(&mut self) {
        self.trigger.trigger();
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// Ends the running term, if any: fires its stop signal and waits for it to finish.
async fn stop(running: &mut Option<Term>) {
    if let Some(mut term) = running.take() {
        term.trigger.trigger();
        if let Some(handle) = term.handle.take()
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "The controller task failed");
        }
    }
}

/// How long until `t`.
fn until(t: Timestamp) -> Duration {
    autocrane_controller::model::elapsed(t, Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            acquire_time: Some(MicroTime(t(0))),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", t(0), D), Decision::Create);
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            decide(Some(&held_by("a", 10)), "a", t(11), D),
            Decision::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_expiry() {
        let lease = held_by("b", 10);
        assert_eq!(decide(Some(&lease), "a", t(24), D), Decision::Wait(t(25)));
        assert_eq!(decide(Some(&lease), "a", t(25), D), Decision::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut lease = held_by("b", 10);
        lease.holder_identity = None;
        assert_eq!(decide(Some(&lease), "a", t(11), D), Decision::TakeOver);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let config = LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            duration: D,
        };
        let old = held_by("b", 10);
        let taken = next_spec(Some(&old), &Decision::TakeOver, &config, t(30)).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(t(30))));
        let renewed = next_spec(Some(&taken), &Decision::Renew, &config, t(35)).unwrap();
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(30))));
        assert_eq!(renewed.renew_time, Some(MicroTime(t(35))));
        assert_eq!(
            next_spec(Some(&old), &Decision::Wait(t(25)), &config, t(11)),
            None
        );
    }
}
