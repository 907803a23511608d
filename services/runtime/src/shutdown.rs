//! Graceful shutdown as a cloneable signal.
//!
//! Servers stop accepting and end their streams when the signal fires; telemetry is flushed after.
//! One type for SIGTERM/SIGINT in production and for an explicit trigger in tests.

use tokio::sync::watch;

/// A cloneable view of "the process is shutting down".
#[derive(Clone, Debug)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Fires the paired [`Shutdown`]s.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    /// A signal fired by the returned trigger (tests, embedded servers).
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// A signal fired by SIGTERM or SIGINT (Ctrl-C). Must be called inside a tokio runtime.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Shutdown signal received");
            trigger.trigger();
        });
        shutdown
    }

    /// A signal that never fires.
    pub fn never() -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        std::mem::forget(trigger);
        shutdown
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once the signal fires (at once if it already has, or if every trigger is gone
    /// without firing, which means nobody can stop us any more and we keep running).
    pub async fn wait(&self) {
        let mut receiver = self.receiver.clone();
        if receiver.wait_for(|fired| *fired).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ShutdownTrigger {
    /// Fires the signal; idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let (trigger, shutdown) = Shutdown::new();
        let other = shutdown.clone();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn(async move { other.wait().await });
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let shutdown = Shutdown::never();
        let waited = tokio::time::timeout(Duration::from_millis(50), shutdown.wait()).await;
        assert!(waited.is_err());
    }
}
