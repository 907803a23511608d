//! # autocrane-controller: the AutoCraneDeployment controller
//!
//! This crate starts with its decision core: pure functions from observed state to actions, with
//! no Kubernetes client, no gRPC and no clock (time is an input), so every promise — never take
//! down more pods than allowed, roll back a bad version, restart within the failing limit, canary
//! data versions, call a version last-known-good only when it is — is tested directly.
//!
//! - [`model`]: the input (deployment, pods, offered versions, now) and the output (actions,
//!   status, Events, requeue);
//! - [`revision`]: which version and revision to run; bad versions are never chosen again;
//! - [`rollout`]: steps, surge/unavailability budget, progress deadline and rollback triggers;
//! - [`failing`]: restarts of long-failing pods within the failing limit;
//! - [`data_oracle`]: canary → promote → last-known-good, or revert, per data source;
//! - [`conditions`]: conditions with preserved transition times, and the reason vocabulary;
//! - [`plan`]: one pass combining them in an order that makes re-planning a no-op.

pub mod conditions;
pub mod data_oracle;
pub mod failing;
pub mod model;
pub mod plan;
pub mod revision;
pub mod rollout;

#[cfg(test)]
mod tests;
