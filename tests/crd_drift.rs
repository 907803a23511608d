//! `deploy/crds/autocranedeployment.yaml` must be exactly what `autocrane crd` prints, so the
//! manifests users apply never drift from the Rust types the controller uses.

use autocrane_api::crd::AutoCraneDeployment;

#[test]
fn deployed_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/crds/autocranedeployment.yaml"
    );
    let on_disk =
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {path}: {err}"));
    let generated = AutoCraneDeployment::crd_yaml();
    assert!(
        on_disk == generated,
        "{path} drifted from src/crd.rs; regenerate it with\n  cargo run -p autocrane -- crd > deploy/crds/autocranedeployment.yaml"
    );
}
