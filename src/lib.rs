//! # autocrane-api: the contracts of AutoCrane
//!
//! Everything the AutoCrane components agree on lives here, so that each service crate depends on
//! the contracts and not on another service:
//! - [`proto`]: the gRPC API generated from `proto/` (packages `autocrane.watchdog.v1`,
//!   `autocrane.version.v1`, `autocrane.data.v1`) and its encoded descriptor set for reflection;
//! - [`crd`]: the `AutoCraneDeployment` custom resource (`autocrane.io/v1alpha1`);
//! - [`keys`]: the pod label and annotation keys; [`health`]: the rollup health values;
//! - [`duration`]: the duration format of the CRD (`90s`, `5m`, `1h30m`);
//! - [`watchdog`]: the watchdog annotation codec and the rollup (written by the WatchdogListener,
//!   read by the controller);
//! - [`data_report`]: what a DataDeployer reports in its `data-<source>` watchdog;
//! - [`manifest`]: the path, link and digest rules of a data version (DataRepository and
//!   DataDeployer);
//! - [`names`]: DNS-1123 name rules.
//!
//! Nothing here starts a server or opens a connection: the shared runtime is `autocrane-runtime`,
//! so a client in another Rust project can depend on this crate for the generated code and the
//! CRD types alone.

pub mod crd;
pub mod data_report;
pub mod duration;
pub mod health;
pub mod keys;
pub mod manifest;
pub mod names;
pub mod proto;
pub mod watchdog;
