//! Reaching upstream sources safely.
//!
//! Source specs come from API callers, so everything a server does to reach an upstream goes
//! through this module: [`http`] is the one HTTPS connector for OCI registries, HTTP sources and
//! archives (system roots, cloud metadata addresses refused), and [`local_dirs`] is the
//! `--allow-directory` list a `directory` source must stay under.

pub mod http;
pub mod local_dirs;

pub use http::{UpstreamConnector, connector, is_metadata_address};
pub use local_dirs::{AllowedDirectories, LocalDirectoryArgs};
