//! The deployer's decisions, sans-IO: what to do next, given what the loop has seen.
//!
//! The loop in [`crate::run`] works in passes. A pass begins when the annotations file may have
//! changed (or a back-off elapsed): the loop reads the desired versions and which are live, and
//! hands them to [`State::begin_pass`]. Then it asks [`next_step`] what to do, carries the step
//! out (an apply, a watchdog post), records the outcome in the [`State`] and asks again, until the
//! answer is to exit, to give up or to wait for the next pass.
//!
//! Within a pass the desired sources are taken in order: each is applied unless live, then its
//! outcome is reported unless that exact report was already posted. A failed apply or post is not
//! retried within the pass; it makes the wait a back-off (200 ms doubling to 10 s) instead of
//! waiting idle for the next change.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use autocrane_api::data_report::DataReport;
use tokio::time::Instant;

use crate::{Mode, desired::Desired};

/// The first back-off after a failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the loop waits for a change of the annotations file when all is well.
pub const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The `failures` key of an unreadable annotations file.
const ANNOTATIONS: &str = "<annotations>";

/// What the loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make this desired version live (it is not, and was not tried in this pass).
    Apply(Desired),
    /// Post `report` as the watchdog `data-<name>` (it differs from the last one posted).
    Report {
        /// The data source name.
        name: String,
        /// The outcome to post.
        report: DataReport,
    },
    /// `init`: every desired version is live (and reported); exit successfully.
    Exit,
    /// `init`: the deadline passed with work left; fail with what is not live.
    GiveUp {
        /// `<name>: <why>` of each failure, `; `-separated.
        pending: String,
    },
    /// Wait for a change of the annotations file, or until `until`, then begin the next pass.
    Wait {
        /// When to begin the next pass without a change.
        until: Instant,
        /// Whether this is a back-off after a failure (rather than idling until a change).
        retry: bool,
    },
}

/// What the loop knows: the current pass, and what lasts across passes.
#[derive(Clone, Debug)]
pub struct State {
    mode: Mode,
    /// `init`: when to give up.
    deadline: Instant,
    /// Whether outcomes are posted as watchdogs.
    reporting: bool,
    /// The desired versions of this pass, or why the annotations file cannot be read.
    desired: Result<Vec<Desired>, String>,
    /// Names whose desired version was live when the pass began.
    live: BTreeSet<String>,
    /// The outcome of each source applied in this pass.
    applied: BTreeMap<String, DataReport>,
    /// Sources whose post failed in this pass.
    report_failed: BTreeSet<String>,
    /// The message last posted per source (across passes): the same report is not posted twice.
    posted: BTreeMap<String, String>,
    /// What keeps the deployer from being done: `<name>`, `<name>/report` or `<annotations>`.
    /// Kept while the annotations file is unreadable, so the init timeout still names them.
    failures: BTreeMap<String, String>,
    /// The wait after the next failed pass.
    backoff: Duration,
}

impl State {
    /// The state before the first pass. `deadline` matters in `init` mode only.
    pub fn new(mode: Mode, deadline: Instant, reporting: bool) -> Self {
        Self {
            mode,
            deadline,
            reporting,
            desired: Ok(Vec::new()),
            live: BTreeSet::new(),
            applied: BTreeMap::new(),
            report_failed: BTreeSet::new(),
            posted: BTreeMap::new(),
            failures: BTreeMap::new(),
            backoff: INITIAL_BACKOFF,
        }
    }

    /// Begins a pass over `desired` (or the reason the annotations file cannot be read); `is_live`
    /// says whether a desired version is already live.
    pub fn begin_pass(
        &mut self,
        desired: Result<Vec<Desired>, String>,
        is_live: impl Fn(&Desired) -> bool,
    ) {
        self.applied.clear();
        self.report_failed.clear();
        match &desired {
            Ok(wanted) => {
                self.failures.clear();
                self.live = wanted
                    .iter()
                    .filter(|d| is_live(d))
                    .map(|d| d.name.clone())
                    .collect();
            }
            Err(why) => {
                self.failures.insert(ANNOTATIONS.into(), why.clone());
                self.live.clear();
            }
        }
        self.desired = desired;
    }

    /// Records the outcome of [`Step::Apply`]: `Err` holds the reason, for people.
    pub fn record_apply(&mut self, desired: &Desired, result: Result<(), String>) -> DataReport {
        let report = match result {
            Ok(()) => DataReport::Applied {
                version: desired.version.clone(),
            },
            Err(reason) => {
                let report = DataReport::Failed {
                    version: desired.version.clone(),
                    reason,
                };
                self.failures
                    .insert(desired.name.clone(), report.to_string());
                report
            }
        };
        self.applied.insert(desired.name.clone(), report.clone());
        report
    }

    /// Records the outcome of [`Step::Report`].
    pub fn record_report(&mut self, name: &str, report: &DataReport, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.posted.insert(name.to_string(), report.format());
            }
            Err(why) => {
                self.report_failed.insert(name.to_string());
                self.failures.entry(format!("{name}/report")).or_insert(why);
            }
        }
    }

    /// Records the end of [`Step::Wait`]: `elapsed` when the time ran out (rather than the file
    /// changing). A good pass resets the back-off; each elapsed wait doubles it.
    pub fn waited(&mut self, retry: bool, elapsed: bool) {
        if !retry {
            self.backoff = INITIAL_BACKOFF;
        }
        if elapsed {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The outcome of `desired` in this pass, if it has one yet.
    fn outcome(&self, desired: &Desired) -> Option<DataReport> {
        if let Some(report) = self.applied.get(&desired.name) {
            return Some(report.clone());
        }
        self.live
            .contains(&desired.name)
            .then(|| DataReport::Applied {
                version: desired.version.clone(),
            })
    }
}

/// What to do next, at `now`.
pub fn next_step(state: &State, now: Instant) -> Step {
    if let Ok(desired) = &state.desired {
        for wanted in desired {
            let Some(report) = state.outcome(wanted) else {
                return Step::Apply(wanted.clone());
            };
            let posted = state.posted.get(&wanted.name) == Some(&report.format());
            if state.reporting && !posted && !state.report_failed.contains(&wanted.name) {
                return Step::Report {
                    name: wanted.name.clone(),
                    report,
                };
            }
        }
    }
    let init = state.mode == Mode::Init;
    if state.failures.is_empty() && init {
        return Step::Exit;
    }
    if init && now >= state.deadline {
        let pending = state
            .failures
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Step::GiveUp { pending };
    }
    let retry = !state.failures.is_empty();
    let until = now + if retry { state.backoff } else { IDLE_WAIT };
    Step::Wait {
        until: if init {
            until.min(state.deadline)
        } else {
            until
        },
        retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(name: &str, version: &str) -> Desired {
        Desired {
            name: name.into(),
            source_id: format!("git-{name}"),
            version: version.into(),
        }
    }

    fn applied(version: &str) -> DataReport {
        DataReport::Applied {
            version: version.into(),
        }
    }

    /// A state in `mode` with a deadline a minute away, posting watchdogs.
    fn state(mode: Mode) -> (State, Instant) {
        let now = Instant::now();
        (State::new(mode, now + Duration::from_secs(60), true), now)
    }

    /// The first back-off after a failed pass at `now`.
    fn backing_off(now: Instant) -> Step {
        Step::Wait {
            until: now + INITIAL_BACKOFF,
            retry: true,
        }
    }

    fn nothing_live(_: &Desired) -> bool {
        false
    }

    fn all_live(_: &Desired) -> bool {
        true
    }

    #[test]
    fn unreadable_annotations_wait_with_backoff() {
        let (mut state, now) = state(Mode::Sidecar);
        state.begin_pass(
            Err("reading /etc/podinfo/annotations: gone".into()),
            all_live,
        );
        assert_eq!(next_step(&state, now), backing_off(now));
    }

    #[test]
    fn a_desired_version_that_is_not_live_is_applied() {
        let (mut state, now) = state(Mode::Sidecar);
        state.begin_pass(Ok(vec![desired("config", "v2")]), nothing_live);
        assert_eq!(next_step(&state, now), Step::Apply(desired("config", "v2")));
    }

    #[test]
    fn sources_are_applied_and_reported_in_order() {
        let (mut state, now) = state(Mode::Sidecar);
        let (a, b) = (desired("a", "v1"), desired("b", "v1"));
        state.begin_pass(Ok(vec![a.clone(), b.clone()]), nothing_live);
        assert_eq!(next_step(&state, now), Step::Apply(a.clone()));
        let report = state.record_apply(&a, Ok(()));
        assert_eq!(
            next_step(&state, now),
            Step::Report {
                name: "a".into(),
                report: report.clone()
            }
        );
        state.record_report("a", &report, Ok(()));
        assert_eq!(next_step(&state, now), Step::Apply(b));
    }

    #[test]
    fn a_live_version_is_reported_not_applied() {
        let (mut state, now) = state(Mode::Sidecar);
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        assert_eq!(
            next_step(&state, now),
            Step::Report {
                name: "config".into(),
                report: applied("v1")
            }
        );
    }

    #[test]
    fn a_failed_apply_is_reported_then_backs_off() {
        let (mut state, now) = state(Mode::Sidecar);
        let config = desired("config", "v2");
        state.begin_pass(Ok(vec![config.clone()]), nothing_live);
        let report = state.record_apply(&config, Err("fetching the files: gone".into()));
        assert_eq!(
            report,
            DataReport::Failed {
                version: "v2".into(),
                reason: "fetching the files: gone".into()
            }
        );
        assert_eq!(
            next_step(&state, now),
            Step::Report {
                name: "config".into(),
                report: report.clone()
            }
        );
        state.record_report("config", &report, Ok(()));
        assert_eq!(next_step(&state, now), backing_off(now));
    }

    #[test]
    fn a_report_already_posted_is_not_posted_again() {
        let (mut state, now) = state(Mode::Sidecar);
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        state.record_report("config", &applied("v1"), Ok(()));
        state.waited(false, false);
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        assert_eq!(
            next_step(&state, now),
            Step::Wait {
                until: now + IDLE_WAIT,
                retry: false
            }
        );
    }

    #[test]
    fn a_failed_post_is_retried_in_the_next_pass_only() {
        let (mut state, now) = state(Mode::Sidecar);
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        state.record_report("config", &applied("v1"), Err("Unavailable: down".into()));
        assert!(matches!(
            next_step(&state, now),
            Step::Wait { retry: true, .. }
        ));
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        assert!(matches!(next_step(&state, now), Step::Report { .. }));
    }

    #[test]
    fn without_a_reporter_nothing_is_posted() {
        let now = Instant::now();
        let mut state = State::new(Mode::Init, now + Duration::from_secs(60), false);
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        assert_eq!(next_step(&state, now), Step::Exit);
    }

    #[test]
    fn init_exits_once_everything_is_live_and_reported() {
        let (mut state, now) = state(Mode::Init);
        state.begin_pass(Ok(vec![desired("config", "v1")]), all_live);
        state.record_report("config", &applied("v1"), Ok(()));
        assert_eq!(next_step(&state, now), Step::Exit);
    }

    #[test]
    fn init_with_no_data_sources_exits_at_once() {
        let (mut state, now) = state(Mode::Init);
        state.begin_pass(Ok(Vec::new()), all_live);
        assert_eq!(next_step(&state, now), Step::Exit);
    }

    #[test]
    fn init_gives_up_at_the_deadline_naming_what_is_pending() {
        let (mut state, now) = state(Mode::Init);
        let config = desired("config", "v2");
        state.begin_pass(Ok(vec![config.clone()]), nothing_live);
        let report = state.record_apply(&config, Err("no such version".into()));
        state.record_report("config", &report, Err("Unavailable: down".into()));
        assert_eq!(next_step(&state, now), backing_off(now));
        let late = now + Duration::from_secs(61);
        assert_eq!(
            next_step(&state, late),
            Step::GiveUp {
                pending: "config: version v2: no such version; config/report: Unavailable: down"
                    .into()
            }
        );
    }

    #[test]
    fn init_waits_no_longer_than_the_deadline() {
        let (mut state, now) = state(Mode::Init);
        state.begin_pass(Err("unreadable".into()), all_live);
        for _ in 0..10 {
            state.waited(true, true);
        }
        let Step::Wait { until, .. } = next_step(&state, now + Duration::from_secs(55)) else {
            panic!("expected a wait");
        };
        assert_eq!(until, now + Duration::from_secs(60));
    }

    #[test]
    fn an_unreadable_file_keeps_the_previous_failures_for_the_timeout_message() {
        let (mut state, now) = state(Mode::Init);
        let config = desired("config", "v2");
        state.begin_pass(Ok(vec![config.clone()]), nothing_live);
        state.record_apply(&config, Err("no such version".into()));
        state.begin_pass(Err("unreadable".into()), all_live);
        let Step::GiveUp { pending } = next_step(&state, now + Duration::from_secs(60)) else {
            panic!("expected to give up");
        };
        assert_eq!(
            pending,
            "<annotations>: unreadable; config: version v2: no such version"
        );
    }

    #[test]
    fn the_backoff_doubles_to_ten_seconds_and_resets_after_a_good_pass() {
        let (mut state, now) = state(Mode::Sidecar);
        state.begin_pass(Err("unreadable".into()), all_live);
        let wait = |state: &State| match next_step(state, now) {
            Step::Wait { until, .. } => until - now,
            other => panic!("expected a wait, got {other:?}"),
        };
        assert_eq!(wait(&state), Duration::from_millis(200));
        state.waited(true, true);
        assert_eq!(wait(&state), Duration::from_millis(400));
        for _ in 0..10 {
            state.waited(true, true);
        }
        assert_eq!(wait(&state), MAX_BACKOFF);
        state.waited(false, false);
        assert_eq!(wait(&state), INITIAL_BACKOFF);
    }
}
