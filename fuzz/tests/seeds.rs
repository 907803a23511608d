//! Replays every committed seed (fuzz/seeds/<target>/, including the inputs of crashes found and
//! fixed) through the same property checks as the fuzz targets, on any toolchain:
//! `cargo test --manifest-path fuzz/Cargo.toml`. libFuzzer is not involved.

use std::{fs, path::Path};

use autocrane_fuzz::stage::Format;

fn replay(target: &str, check: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a seed").path();
        let data = fs::read(&path).expect("a readable seed");
        eprintln!("{target}: {}", path.display());
        check(&data);
        count += 1;
    }
    assert!(count > 0, "no seeds for {target}");
}

#[test]
fn every_target_has_seeds() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets");
    for entry in fs::read_dir(targets).expect("fuzz_targets") {
        let name = entry.expect("a target").path();
        let name = name.file_stem().expect("a name").to_string_lossy();
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(&*name);
        assert!(seeds.is_dir(), "{name} has no seeds/{name}/");
    }
}

#[test]
fn watchdog_annotation() {
    replay(
        "watchdog_annotation",
        autocrane_fuzz::watchdog_annotation::check,
    );
}

#[test]
fn annotations_file() {
    replay("annotations_file", autocrane_fuzz::annotations_file::check);
}

#[test]
fn data_report() {
    replay("data_report", autocrane_fuzz::data_report::check);
}

#[test]
fn manifest_path() {
    replay("manifest_path", autocrane_fuzz::manifest_path::check);
}

#[test]
fn manifest_tree() {
    replay("manifest_tree", autocrane_fuzz::manifest_tree::check);
}

#[test]
fn stage_tar() {
    replay("stage_tar", |data| {
        autocrane_fuzz::stage::check(data, Format::Raw)
    });
}

#[test]
fn stage_tar_gz() {
    replay("stage_tar_gz", |data| {
        autocrane_fuzz::stage::check(data, Format::Gzip)
    });
}

#[test]
fn stage_zip() {
    replay("stage_zip", |data| {
        autocrane_fuzz::stage::check(data, Format::Raw)
    });
}

#[test]
fn duration() {
    replay("duration", autocrane_fuzz::duration::check);
}

#[test]
fn source_spec() {
    replay("source_spec", autocrane_fuzz::source_spec::check);
}

#[test]
fn registry_notification() {
    replay(
        "registry_notification",
        autocrane_fuzz::registry_notification::check,
    );
}

#[test]
fn kube_sim_label_selector() {
    replay(
        "kube_sim_label_selector",
        autocrane_fuzz::kube_sim_label_selector::check,
    );
}

#[test]
fn kube_sim_field_selector() {
    replay(
        "kube_sim_field_selector",
        autocrane_fuzz::kube_sim_field_selector::check,
    );
}

#[test]
fn kube_sim_patch() {
    replay("kube_sim_patch", autocrane_fuzz::kube_sim_patch::check);
}
