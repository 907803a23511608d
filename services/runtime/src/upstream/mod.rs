//! Reaching upstream sources safely.
//!
//! Source specs come from API callers, so everything a server does to reach an upstream goes
//! through this module: [`egress`] is the `--allow-upstream-host` policy (which addresses may be
//! reached at all), [`http`] the one HTTPS connector for OCI registries, HTTP sources and archives
//! (system roots, every connection checked against the policy), [`git`] the only way to run
//! `git` against a remote (URL grammar, policy check before the process starts, isolated
//! environment), and [`local_dirs`] the `--allow-directory` list a `directory` source must stay
//! under.

pub mod egress;
pub mod git;
pub mod http;
pub mod local_dirs;

pub use egress::{EgressArgs, EgressPolicy, HostPattern, is_metadata_address};
pub use http::{UpstreamConnector, connector};
pub use local_dirs::{AllowedDirectories, LocalDirectoryArgs};
