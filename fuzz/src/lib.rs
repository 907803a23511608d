//! The properties the fuzz targets check, one module per target. Each module's `check` takes the
//! raw fuzz input and panics when a property fails; inputs that are not even text, or that the
//! parser rightly refuses, just return. The targets in `fuzz_targets/` are one-line wrappers, so the
//! same functions replay the committed seeds on the stable toolchain (`tests/seeds.rs`).

#![forbid(unsafe_code)]

pub mod annotations_file;
pub mod data_report;
pub mod duration;
pub mod kube_sim_field_selector;
pub mod kube_sim_label_selector;
pub mod kube_sim_patch;
pub mod manifest_path;
pub mod manifest_tree;
pub mod registry_notification;
pub mod source_spec;
pub mod stage;
pub mod watchdog_annotation;

/// The input as UTF-8 text, if it is.
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
