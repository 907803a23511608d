//! The kube-runtime `Controller` of `AutoCraneDeployment`s and their pods.
//!
//! Two watches, each feeding a reflector store that the reconciler reads and a trigger stream that
//! schedules reconciles: the deployments (`Controller::for_stream`), and every pod carrying the
//! deployment label (`owns_stream`: a pod event reconciles its owner). Upstream changes (a new app
//! version, a newly synced data version) reconcile the deployments using the source
//! (`reconcile_on`). A timer runs only where the core asks for a requeue.
//!
//! One reconcile: read the deployment's pods from the store → observe them → `plan()` → apply →
//! wait until the stores show what was written (the pods created and deleted, the status), so the
//! next pass of the same deployment — often triggered by this very write — never plans from a
//! store that has not caught up (which would create a slot's pod twice).
//!
//! Pins: a deployment whose plan holds DataRepository pins gets the finalizer
//! [`PINS_FINALIZER`] before the plan is carried out; once a plan holding none has been carried
//! out it is removed. Deleting a deployment that has it makes the core plan its unpins
//! (`plan::release`), after which the finalizer goes and the deployment with it.
//!
//! Failures: a user-visible one (an invalid spec, a template the API server rejects, a missing or
//! unreachable upstream) becomes the core's `Progressing=False` status (`plan::failed`) and, when
//! it is news to the status, a Warning Event; every failure is retried with per-deployment
//! exponential back-off; other deployments are not disturbed.
//!
//! Metrics: besides reconcile counts and durations, the reaction times each carried-out plan
//! reports (`Plan::reactions`) go to their histograms.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use autocrane_api::{crd::AutoCraneDeployment, keys::DEPLOYMENT_LABEL};
use autocrane_controller::{
    model::{Action as PlanAction, EventType, Input, Plan, Reaction, ReactionKind, Timestamp},
    plan::{failed, failure_is_new, plan},
};
use autocrane_runtime::{admin::SharedRegistry, shutdown::Shutdown};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    Error,
    apply::{Executor, PINS_FINALIZER, SourceIds, has_pins_finalizer},
    events::EventPublisher,
    observe::{HealthMemory, pod_view},
    pod_builder::Injection,
    upstream::Upstream,
};

/// How long a reconcile waits for the stores to show its own writes.
const CATCH_UP: Duration = Duration::from_secs(10);
/// The controller name in Events and Leases.
pub const CONTROLLER_NAME: &str = "autocrane-controller";

/// What the controller is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Only this namespace; all when `None`.
    pub namespace: Option<String>,
    /// Deployments reconciled at once (0: unbounded).
    pub concurrency: u16,
    /// This replica's identity (Events' reporting instance).
    pub identity: String,
    /// How the DataDeployer is injected.
    pub injection: Injection,
}

/// The controller's metrics on the admin listener.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that failed.
    pub failures: Counter,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// A new-revision pod's `error` → its rollback started, in seconds.
    pub error_to_rollback: Histogram,
    /// A version first seen by the VersionWatcher → its first pod created, in seconds.
    pub version_to_first_pod: Histogram,
    /// A data version synced by the DataRepository → applied by every pod, in seconds.
    pub data_synced_to_applied: Histogram,
}

/// Buckets of reaction times: 0.25 s to about 17 min.
fn reaction_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.25, 2.0, 13)
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &SharedRegistry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            failures: Counter::default(),
            duration: Histogram::new(autocrane_runtime::admin::latency_buckets()),
            error_to_rollback: Histogram::new(reaction_buckets()),
            version_to_first_pod: Histogram::new(reaction_buckets()),
            data_synced_to_applied: Histogram::new(reaction_buckets()),
        };
        let mut registry = registry.lock().expect("metrics registry poisoned");
        registry.register(
            "autocrane_controller_reconciles",
            "Reconciles of AutoCraneDeployments",
            metrics.reconciles.clone(),
        );
        registry.register(
            "autocrane_controller_reconcile_failures",
            "Reconciles that ended in an error (retried with back-off)",
            metrics.failures.clone(),
        );
        registry.register(
            "autocrane_controller_reconcile_duration_seconds",
            "Duration of one reconcile, observation to status write",
            metrics.duration.clone(),
        );
        registry.register(
            "autocrane_controller_error_to_rollback_seconds",
            "From a new-revision pod's error watchdog to the start of its rollback",
            metrics.error_to_rollback.clone(),
        );
        registry.register(
            "autocrane_controller_version_to_first_pod_seconds",
            "From the VersionWatcher first seeing a version to the first pod of it created",
            metrics.version_to_first_pod.clone(),
        );
        registry.register(
            "autocrane_controller_data_synced_to_applied_seconds",
            "From the DataRepository syncing a data version to every pod having applied it",
            metrics.data_synced_to_applied.clone(),
        );
        metrics
    }

    /// Observes the reaction times of a plan that has been carried out.
    pub fn observe(&self, reactions: &[Reaction]) {
        for reaction in reactions {
            let histogram = match reaction.kind {
                ReactionKind::ErrorToRollback => &self.error_to_rollback,
                ReactionKind::VersionToFirstPod => &self.version_to_first_pod,
                ReactionKind::DataSyncedToApplied => &self.data_synced_to_applied,
            };
            histogram.observe(reaction.seconds());
        }
    }
}

/// What every reconcile shares.
struct Context {
    pods: Store<Pod>,
    deployments: Store<AutoCraneDeployment>,
    /// Bumped after every event applied to either store.
    changes: watch::Sender<u64>,
    executor: Executor,
    upstream: Arc<Upstream>,
    memory: Mutex<HealthMemory>,
    /// Consecutive failures per deployment, for the back-off.
    failures: Mutex<HashMap<ObjectRef<AutoCraneDeployment>, u32>>,
    metrics: Metrics,
}

impl Context {
    /// Waits (bounded) until `done` holds over the stores.
    async fn caught_up(&self, mut done: impl FnMut(&Self) -> bool) -> bool {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            if done(self) {
                return true;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return false },
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// The pods owned by `deployment` (by uid: a re-created deployment of the same name does not
    /// adopt the old one's pods, which the garbage collector is removing).
    fn pods_of(&self, deployment: &AutoCraneDeployment) -> Vec<Arc<Pod>> {
        let uid = deployment.uid().unwrap_or_default();
        let namespace = deployment.namespace();
        self.pods.state_filter(|pod| {
            pod.namespace() == namespace
                && pod
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
        })
    }
}

/// Backs off 1 s, 2 s, 4 s … up to 5 min per consecutive failure.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(9)).min(Duration::from_secs(300))
}

/// Runs the controller until `stop` fires.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    upstream: Arc<Upstream>,
    metrics: Metrics,
    stop: Shutdown,
) -> Result<(), Error> {
    let Settings {
        namespace,
        concurrency,
        identity,
        injection,
    } = settings;
    let (acd_api, pod_api): (Api<AutoCraneDeployment>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (changes, _) = watch::channel(0u64);
    let bump = {
        let changes = changes.clone();
        move || changes.send_modify(|n| *n = n.wrapping_add(1))
    };
    let (deployments, acd_writer) = reflector::store();
    let acd_stream = {
        let bump = bump.clone();
        watcher(acd_api, watcher::Config::default())
            .default_backoff()
            .reflect(acd_writer)
            .inspect(move |_| bump())
            .touched_objects()
    };
    let (pods, pod_writer) = reflector::store();
    let pod_stream = watcher(pod_api, watcher::Config::default().labels(DEPLOYMENT_LABEL))
        .default_backoff()
        .reflect(pod_writer)
        .inspect(move |_| bump())
        .touched_objects();

    let events = EventPublisher::new(client.clone(), CONTROLLER_NAME, &identity);
    let context = Arc::new(Context {
        pods: pods.clone(),
        deployments: deployments.clone(),
        changes,
        executor: Executor::new(client, events, upstream.clone(), injection),
        upstream: upstream.clone(),
        memory: Mutex::new(HealthMemory::default()),
        failures: Mutex::default(),
        metrics,
    });

    let controller = Controller::for_stream(acd_stream, deployments)
        .owns_stream(pod_stream)
        .reconcile_on(upstream.triggers())
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on({
            let stop = stop.clone();
            async move { stop.wait().await }
        });
    // A pass must never see a deployment before its pods: with an empty pod store it would plan a
    // full set of new pods beside the running ones.
    let ready = {
        let pods = pods.clone();
        async move { pods.wait_until_ready().await }
    };
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("*"),
        "Controller starting"
    );
    let running = controller
        .run(reconcile_gated(ready), error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::trace!(deployment = %object, "Reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, object)) => {
                    tracing::debug!(deployment = %object, error = %e, "Reconcile failed")
                }
                Err(e) => tracing::warn!(error = %e, "Controller trigger failed"),
            }
        });
    running.await;
    tracing::info!("Controller stopped");
    Ok(())
}

type ReadyFuture = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// The reconcile function, waiting first (once) for the pod store's initial list.
fn reconcile_gated(
    ready: impl std::future::Future<Output = Result<(), reflector::store::WriterDropped>>
    + Send
    + 'static,
) -> impl FnMut(
    Arc<AutoCraneDeployment>,
    Arc<Context>,
) -> futures::future::BoxFuture<'static, Result<Action, Error>> {
    use futures::FutureExt;
    let ready: ReadyFuture = async move {
        let _ = ready.await;
    }
    .boxed()
    .shared();
    move |deployment, context| {
        let ready = ready.clone();
        let span = tracing::info_span!(
            "reconcile",
            namespace = %deployment.namespace().unwrap_or_default(),
            name = %deployment.name_any()
        );
        async move {
            ready.await;
            reconcile(deployment, context).await
        }
        .instrument(span)
        .boxed()
    }
}

async fn reconcile(
    deployment: Arc<AutoCraneDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_once(&deployment, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("failures lock")
            .remove(&ObjectRef::from_obj(deployment.as_ref()));
    }
    result
}

async fn reconcile_once(deployment: &AutoCraneDeployment, ctx: &Context) -> Result<Action, Error> {
    let deleting = deployment.metadata.deletion_timestamp.is_some();
    if deleting && !has_pins_finalizer(deployment) {
        // Nothing of ours holds it: the garbage collector removes the pods (owner references,
        // blockOwnerDeletion).
        return Ok(Action::await_change());
    }
    let object = ObjectRef::from_obj(deployment);
    let now = Timestamp::now();
    let pods = ctx.pods_of(deployment);
    let views: Vec<_> = {
        let mut memory = ctx.memory.lock().expect("health memory lock");
        let views = pods
            .iter()
            .map(|pod| pod_view(pod, deployment, &mut memory, now))
            .collect();
        if memory.len() > 2 * ctx.pods.state().len() + 64 {
            let alive: HashSet<String> = ctx.pods.state().iter().filter_map(|p| p.uid()).collect();
            memory.retain(|uid| alive.contains(uid));
        }
        views
    };
    // A deployment being deleted only unpins data: it needs no app versions.
    let (app_id, app_versions) = match deployment
        .spec
        .version
        .as_ref()
        .and_then(|v| v.source.as_ref())
        .filter(|_| !deleting)
    {
        Some(source) => ctx.upstream.app_versions(&object, source)?,
        None => (None, Default::default()),
    };
    let (data_sources, data_versions) = ctx
        .upstream
        .data_versions(&object, &deployment.spec.data)
        .await?;
    let plan: Plan = plan(Input {
        deployment,
        pods: &views,
        app_versions: &app_versions,
        data_versions: &data_versions,
        data_sources: &data_sources,
        now,
    })
    .map_err(Error::Plan)?;
    tracing::debug!(
        pods = views.len(),
        actions = plan.actions.len(),
        events = plan.events.len(),
        requeue = ?plan.requeue_after,
        "Planned"
    );
    // The source ids the actions need: this process's, else (a deployment being deleted after a
    // restart) those the status recorded.
    let mut data_ids: std::collections::BTreeMap<String, String> = data_sources
        .into_iter()
        .filter_map(|(name, info)| Some((name, info.source_id?)))
        .collect();
    for source in deployment.status.iter().flat_map(|s| &s.data) {
        if let Some(id) = &source.source_id {
            data_ids
                .entry(source.name.clone())
                .or_insert_with(|| id.clone());
        }
    }
    let ids = SourceIds {
        app: app_id,
        data: data_ids,
    };
    // No pin before the finalizer that releases it.
    if plan.holds_pins && !deleting {
        ctx.executor.set_pins_finalizer(deployment, true).await?;
    }
    let written = ctx.executor.apply(deployment, &plan, &ids).await?;
    ctx.metrics.observe(&plan.reactions);
    if !plan.holds_pins {
        ctx.executor.set_pins_finalizer(deployment, false).await?;
        if deleting {
            tracing::info!(finalizer = PINS_FINALIZER, "Pins released");
            return Ok(Action::await_change());
        }
    }
    if !wait_for_writes(ctx, deployment, &plan, written.as_deref()).await {
        tracing::warn!("The watch did not show this pass's writes in time");
    }
    Ok(plan
        .requeue_after
        .map_or_else(Action::await_change, |after| {
            Action::requeue(after.max(Duration::from_millis(50)))
        }))
}

/// Waits until the stores show the pods this pass created and deleted, and the status it wrote.
async fn wait_for_writes(
    ctx: &Context,
    deployment: &AutoCraneDeployment,
    plan: &Plan,
    written_version: Option<&str>,
) -> bool {
    let namespace = deployment.namespace().unwrap_or_default();
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    for action in &plan.actions {
        match action {
            PlanAction::CreatePod { name, .. } => created.push(name.clone()),
            PlanAction::DeletePod { name, .. } => deleted.push(name.clone()),
            _ => {}
        }
    }
    let object = ObjectRef::from_obj(deployment);
    ctx.caught_up(|ctx| {
        let pod = |name: &str| ctx.pods.get(&ObjectRef::new(name).within(&namespace));
        created.iter().all(|name| pod(name).is_some())
            && deleted
                .iter()
                .all(|name| pod(name).is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
            && written_version.is_none_or(|rv| {
                ctx.deployments.get(&object).is_none_or(|d| {
                    d.resource_version().as_deref() == Some(rv)
                        || d.status == Some(plan.status.clone())
                })
            })
    })
    .await
}

fn error_policy(deployment: Arc<AutoCraneDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failures.inc();
    let object = ObjectRef::from_obj(deployment.as_ref());
    let failures = {
        let mut all = ctx.failures.lock().expect("failures lock");
        let count = all.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let message = chain(error);
    let delay = backoff(failures - 1);
    match error.failure() {
        Some(failure) => {
            tracing::warn!(error = %message, reason = failure.reason, retry_in = ?delay, "Reconcile failed; the deployment needs a fix");
            // The Event only when the status does not say so yet: a retry does not repeat it.
            let executor = ctx.executor.clone();
            tokio::spawn(
                async move {
                    if failure_is_new(&deployment, &failure) {
                        executor
                            .publish(
                                &deployment,
                                EventType::Warning,
                                failure.reason,
                                &failure.message,
                            )
                            .await;
                    }
                    let status = failed(&deployment, &failure, Timestamp::now());
                    if let Err(e) = executor.write_status(&deployment, &status).await {
                        tracing::warn!(error = %e, "Writing the failure condition failed");
                    }
                }
                .instrument(tracing::info_span!("report_failure")),
            );
        }
        None => tracing::info!(error = %message, retry_in = ?delay, "Reconcile failed; retrying"),
    }
    Action::requeue(delay)
}

pub use autocrane_runtime::errors::error_chain as chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let e = Error::Plan(autocrane_controller::model::PlanError::InvalidSpec {
            field: "spec.rollout.steps",
            rule: "must not be empty".into(),
        });
        assert_eq!(
            chain(&e),
            "planning: invalid spec.rollout.steps: must not be empty"
        );
        assert_eq!(
            e.failure().map(|f| f.reason),
            Some(autocrane_controller::conditions::reason::INVALID_SPEC)
        );
    }
}
