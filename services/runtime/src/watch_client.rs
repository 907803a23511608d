//! The client side of a server-streaming `Watch…` call, held as a `tokio::sync::watch` receiver.
//!
//! A [`WatchClient`] opens the stream, folds each message into the state the caller keeps, and
//! publishes the state through a `watch` channel, so consumers read the latest state or await a
//! change and never see a raw stream. When the stream ends or breaks it reconnects with jittered
//! exponential backoff, passing the last resume token so the server continues where it left off.
//! INVALID_ARGUMENT and FAILED_PRECONDITION mean the request itself is wrong: retrying cannot help,
//! so they end the watch and are published as its terminal error.
//! (Modelled on linkerd2-proxy's `tonic-watch`.)

use std::{future::Future, time::Duration};

use rand::Rng;
use tokio::{sync::watch, task::JoinHandle};
use tonic::{Code, Status, Streaming};

use crate::shutdown::Shutdown;

/// Backoff between reconnection attempts.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based): exponential, capped, with full jitter in the
    /// upper half so that many clients do not reconnect in lock-step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// What a watch currently knows.
#[derive(Clone, Debug)]
pub struct Watched<S> {
    /// The state folded from the messages so far; `None` until the first message.
    pub state: Option<S>,
    /// Whether a stream is open right now.
    pub connected: bool,
    /// How many times the stream was (re)opened successfully.
    pub connections: u64,
    /// Set when the watch ended on a terminal status; the task has stopped.
    pub terminal: Option<Status>,
}

impl<S> Default for Watched<S> {
    fn default() -> Self {
        Self {
            state: None,
            connected: false,
            connections: 0,
            terminal: None,
        }
    }
}

/// Whether a status means retrying the same request cannot succeed.
pub fn is_terminal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument | Code::FailedPrecondition
    )
}

/// A running watch; dropping it stops the task.
#[derive(Debug)]
pub struct WatchClient<S> {
    receiver: watch::Receiver<Watched<S>>,
    task: JoinHandle<()>,
}

impl<S> Drop for WatchClient<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Clone + Send + Sync + 'static> WatchClient<S> {
    /// Starts watching.
    ///
    /// - `open(resume_token)` opens the stream (a generated client's `watch_…` call);
    /// - `fold(&mut state, message)` applies one message (a snapshot replaces, a change updates);
    /// - `resume_token(&message)` extracts the token to resume from after a reconnect.
    pub fn spawn<M, Open, Fut, Fold, Token>(
        name: &'static str,
        backoff: Backoff,
        shutdown: Shutdown,
        mut open: Open,
        mut fold: Fold,
        resume_token: Token,
    ) -> Self
    where
        M: Send + 'static,
        Open: FnMut(Option<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Streaming<M>, Status>> + Send,
        Fold: FnMut(&mut Option<S>, M) + Send + 'static,
        Token: Fn(&M) -> Option<String> + Send + 'static,
    {
        let (sender, receiver) = watch::channel(Watched::default());
        let task = tokio::spawn(async move {
            let mut token: Option<String> = None;
            let mut attempt: u32 = 0;
            loop {
                if shutdown.is_triggered() {
                    return;
                }
                let opened = tokio::select! {
                    opened = open(token.clone()) => opened,
                    () = shutdown.wait() => return,
                };
                match opened {
                    Ok(mut stream) => {
                        sender.send_modify(|w| {
                            w.connected = true;
                            w.connections += 1;
                        });
                        tracing::debug!(
                            watch = name,
                            resume = token.is_some(),
                            "Watch stream open"
                        );
                        loop {
                            let next = tokio::select! {
                                next = stream.message() => next,
                                () = shutdown.wait() => return,
                            };
                            match next {
                                Ok(Some(message)) => {
                                    attempt = 0;
                                    if let Some(next_token) = resume_token(&message) {
                                        token = Some(next_token);
                                    }
                                    sender.send_modify(|w| fold(&mut w.state, message));
                                }
                                Ok(None) => {
                                    tracing::info!(
                                        watch = name,
                                        "Watch stream ended by the server; reconnecting"
                                    );
                                    break;
                                }
                                Err(status) if is_terminal(&status) => {
                                    return finish(&sender, name, status);
                                }
                                Err(status) => {
                                    tracing::warn!(watch = name, code = ?status.code(), message = status.message(), "Watch stream broke; reconnecting");
                                    break;
                                }
                            }
                        }
                        sender.send_modify(|w| w.connected = false);
                    }
                    Err(status) if is_terminal(&status) => return finish(&sender, name, status),
                    Err(status) => {
                        tracing::warn!(watch = name, code = ?status.code(), message = status.message(), "Opening the watch failed; retrying");
                    }
                }
                let delay = backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.wait() => return,
                }
            }
        });
        Self { receiver, task }
    }

    /// A receiver of the watch's state.
    pub fn receiver(&self) -> watch::Receiver<Watched<S>> {
        self.receiver.clone()
    }

    /// The current state, if a first message arrived.
    pub fn current(&self) -> Option<S> {
        self.receiver.borrow().state.clone()
    }

    /// Waits until the first message arrived and returns the state, or the terminal error.
    pub async fn first(&self) -> Result<S, Status> {
        let mut receiver = self.receiver.clone();
        let watched = receiver
            .wait_for(|w| w.state.is_some() || w.terminal.is_some())
            .await
            .map_err(|_| Status::cancelled("watch task stopped"))?;
        match (&watched.state, &watched.terminal) {
            (Some(state), _) => Ok(state.clone()),
            (None, Some(status)) => Err(status.clone()),
            (None, None) => unreachable!("wait_for returned without state or error"),
        }
    }

    /// Waits until `predicate` holds for the watched state (or the watch ended terminally).
    pub async fn wait_until(&self, mut predicate: impl FnMut(&S) -> bool) -> Result<S, Status> {
        let mut receiver = self.receiver.clone();
        let watched = receiver
            .wait_for(|w| w.terminal.is_some() || w.state.as_ref().is_some_and(&mut predicate))
            .await
            .map_err(|_| Status::cancelled("watch task stopped"))?;
        if let Some(status) = &watched.terminal {
            return Err(status.clone());
        }
        Ok(watched.state.clone().expect("predicate held on a state"))
    }
}

fn finish<S>(sender: &watch::Sender<Watched<S>>, name: &'static str, status: Status) {
    tracing::error!(watch = name, code = ?status.code(), message = status.message(), "Watch ended: the server rejected the request");
    sender.send_modify(|w| {
        w.connected = false;
        w.terminal = Some(status);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let first = backoff.delay(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = backoff.delay(30);
            assert!(late >= Duration::from_secs(1) && late <= Duration::from_secs(2));
        }
    }

    #[test]
    fn only_request_errors_are_terminal() {
        assert!(is_terminal(&Status::invalid_argument("bad")));
        assert!(is_terminal(&Status::failed_precondition("bad")));
        assert!(!is_terminal(&Status::unavailable("down")));
        assert!(!is_terminal(&Status::internal("oops")));
    }
}
