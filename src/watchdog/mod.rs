//! Watchdogs as stored on pods, shared by every component that reads or writes them: the
//! WatchdogListener writes them, the controller and clients read them.
//!
//! - [`annotation`]: the codec of one watchdog annotation `status.autocrane.io/<name>`;
//! - [`rollup`]: a pod's annotations → its unexpired watchdogs and one health value;
//! - [`MAX_MESSAGE_BYTES`]: the longest message a watchdog may carry.

pub mod annotation;
pub mod rollup;

pub use crate::health::Health;
pub use annotation::{Level, ParseError, Watchdog, format_time, format_value, parse_value};
pub use rollup::{PodHealth, Rollup, rollup, stored_watchdogs, watchdog_name};

/// The longest watchdog message, in bytes of UTF-8. The WatchdogListener rejects longer posts and
/// the DataDeployer shortens its reports to fit.
pub const MAX_MESSAGE_BYTES: usize = 1024;
