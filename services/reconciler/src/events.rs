//! Events (`events.k8s.io/v1`) on deployments. A repeated Event — the same type, reason, note and
//! object within [`SERIES_WINDOW`] of the last time — raises the series of the Event already
//! published instead of creating another, as client-go's recorder does.
//!
//! kube-runtime's `Recorder` is not used because it folds Events on type, reason and action only,
//! leaving the note out: a rollout's second `RolloutStepAdvanced` ("step 3 of 3") merely counted
//! up the first one ("step 2 of 3") and its message was lost, as was the note of a second
//! `RolloutStarted` within minutes of the first. The Events must tell a rollout as it happened.
//!
//! The decision (create, or count up which Event) is [`next_publication`], a pure function; the
//! [`EventPublisher`] only remembers what it published and sends it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};

/// How long after its last occurrence a repeated Event still counts up the same series (as
/// client-go and kube-runtime: 6 minutes).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two Events the same occurrence repeated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventKey {
    /// `Normal` or `Warning`.
    pub type_: String,
    /// The reason.
    pub reason: String,
    /// The note: Events that say different things are different Events.
    pub note: String,
    /// The object's namespace, name and uid.
    pub regarding: (Option<String>, Option<String>, Option<String>),
}

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent<'a> {
    /// `Normal` or `Warning`.
    pub type_: &'a str,
    /// The reason (CamelCase).
    pub reason: &'a str,
    /// For people.
    pub note: &'a str,
    /// What was done (machine-readable).
    pub action: &'a str,
}

impl NewEvent<'_> {
    /// Its key for `regarding`.
    pub fn key(&self, regarding: &ObjectReference) -> EventKey {
        EventKey {
            type_: self.type_.into(),
            reason: self.reason.into(),
            note: self.note.into(),
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
        }
    }
}

/// What publishing one Event does.
#[derive(Clone, Debug, PartialEq)]
pub enum Publication {
    /// Create this new Event.
    Create(Event),
    /// Patch the series of this Event published before.
    Repeat(Event),
}

impl Publication {
    /// The Event as it will be stored.
    pub fn event(&self) -> &Event {
        match self {
            Publication::Create(event) | Publication::Repeat(event) => event,
        }
    }
}

/// When `event` last occurred.
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
}

/// Whether `event` can still be counted up at `now`.
pub fn in_window(event: &Event, now: Timestamp) -> bool {
    last_seen(event).is_some_and(|at| at + SERIES_WINDOW > now)
}

/// What to do for `new` about `regarding` at `now`, given the same Event published before (if
/// any): count up its series while it is within [`SERIES_WINDOW`], else create a new Event named
/// after the object and the time, reported by `controller`/`instance`.
pub fn next_publication(
    previous: Option<&Event>,
    new: &NewEvent<'_>,
    regarding: &ObjectReference,
    controller: &str,
    instance: &str,
    now: Timestamp,
) -> Publication {
    if let Some(previous) = previous.filter(|p| in_window(p, now)) {
        let mut repeated = previous.clone();
        repeated.series = Some(EventSeries {
            count: previous.series.as_ref().map_or(2, |s| s.count + 1),
            last_observed_time: MicroTime(now),
        });
        return Publication::Repeat(repeated);
    }
    Publication::Create(Event {
        action: Some(new.action.into()),
        reason: Some(new.reason.into()),
        note: Some(new.note.chars().take(1024).collect()),
        type_: Some(new.type_.into()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(controller.into()),
        reporting_instance: Some(instance.into()),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(controller),
                now.as_nanosecond()
            )),
            ..ObjectMeta::default()
        },
        ..Event::default()
    })
}

/// Publishes Events as one controller instance, remembering what it published for
/// [`SERIES_WINDOW`] so repeats count up a series. Cheap to clone (the memory is shared).
#[derive(Clone)]
pub struct EventPublisher {
    client: kube::Client,
    controller: String,
    instance: String,
    published: Arc<Mutex<HashMap<EventKey, Event>>>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher writing with `client` as `controller` (reportingController), `instance`
    /// (reportingInstance).
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            published: Arc::default(),
        }
    }

    /// Publishes `new` about `regarding` (in its namespace).
    pub async fn publish(
        &self,
        new: &NewEvent<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = new.key(regarding);
        let publication = {
            let mut published = self.published.lock().expect("events lock poisoned");
            published.retain(|_, event| in_window(event, now));
            next_publication(
                published.get(&key),
                new,
                regarding,
                &self.controller,
                &self.instance,
                now,
            )
        };
        let events: Api<Event> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        match &publication {
            Publication::Create(event) => {
                events.create(&PostParams::default(), event).await?;
            }
            Publication::Repeat(event) => {
                let name = event.metadata.name.clone().unwrap_or_default();
                let patch = serde_json::json!({"series": event.series});
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        self.published
            .lock()
            .expect("events lock poisoned")
            .insert(key, publication.event().clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ObjectReference {
        ObjectReference {
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        }
    }

    fn step(note: &str) -> NewEvent<'_> {
        NewEvent {
            type_: "Normal",
            reason: "RolloutStepAdvanced",
            note,
            action: "Reconcile",
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn events_with_the_same_reason_but_different_notes_are_different_events() {
        let second = step("2.0: step 2 of 3 (50%)");
        let third = step("2.0: step 3 of 3 (100%)");
        assert_ne!(second.key(&web()), third.key(&web()));
        let first = next_publication(None, &second, &web(), "c", "a", at(0));
        let Publication::Create(event) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(event.note.as_deref(), Some("2.0: step 2 of 3 (50%)"));
        assert_eq!(event.reporting_instance.as_deref(), Some("a"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert!(event.series.is_none());
    }

    #[test]
    fn a_repeat_within_the_window_counts_up_the_series_and_later_starts_anew() {
        let warning = NewEvent {
            type_: "Warning",
            reason: "TemplateRejected",
            note: "spec.containers[1].image: Required value",
            action: "Reconcile",
        };
        let Publication::Create(first) = next_publication(None, &warning, &web(), "c", "a", at(0))
        else {
            panic!("the first occurrence is created")
        };
        let Publication::Repeat(second) =
            next_publication(Some(&first), &warning, &web(), "c", "a", at(60))
        else {
            panic!("a repeat a minute later counts up")
        };
        assert_eq!(second.metadata.name, first.metadata.name);
        let series = second.series.clone().unwrap();
        assert_eq!((series.count, series.last_observed_time.0), (2, at(60)));
        let Publication::Repeat(third) =
            next_publication(Some(&second), &warning, &web(), "c", "a", at(60 + 300))
        else {
            panic!("within 6 minutes of the last occurrence it still counts up")
        };
        assert_eq!(third.series.unwrap().count, 3);
        let later = next_publication(Some(&second), &warning, &web(), "c", "a", at(60 + 360));
        assert!(
            matches!(&later, Publication::Create(e) if e.metadata.name != first.metadata.name),
            "{later:?}"
        );
    }
}
