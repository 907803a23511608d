//! # autocrane-api: the contracts of AutoCrane
//!
//! Everything the AutoCrane components agree on lives here, so that each service crate depends on
//! the contracts and not on another service:
//! - [`proto`]: the gRPC API generated from `proto/` (packages `autocrane.watchdog.v1`,
//!   `autocrane.version.v1`, `autocrane.data.v1`) and its encoded descriptor set for reflection;
//! - [`crd`]: the `AutoCraneDeployment` custom resource (`autocrane.io/v1alpha1`);
//! - [`keys`]: the pod label and annotation keys; [`health`]: the rollup health values;
//! - [`duration`]: the duration format of the CRD (`90s`, `5m`, `1h30m`).
//!
//! With the `runtime` feature it also carries [`runtime`], the one way every AutoCrane server and
//! client starts: gRPC server builder (health, reflection, limits, TLS, tracing, graceful
//! shutdown), telemetry, the admin listener and the reconnecting watch-stream client.

pub mod crd;
pub mod duration;
pub mod health;
pub mod keys;
pub mod proto;

#[cfg(feature = "runtime")]
pub mod runtime;
