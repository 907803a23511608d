//! The AutoCraneDeployment CRD as a kubectl user meets it, on the cluster of
//! `AUTOCRANE_TEST_CLUSTER` (kube-sim by default, which validates custom resources with the CRD's
//! schema and CEL rules; the real API server in `scripts/test.sh`'s real pass): the shipped CRD
//! and example install; nonsense is refused with the field named, in the real API server's words;
//! the printer columns show.

use autocrane_test_support::{ClusterOptions, TestCluster, workspace_root};

/// A cluster with the shipped CRD installed and namespace `demo`.
async fn cluster() -> TestCluster {
    let cluster = TestCluster::start(ClusterOptions::new()).await;
    let crd = workspace_root().join("deploy/crds/autocranedeployment.yaml");
    cluster
        .kubectl_ok(&["apply", "-f", crd.to_str().unwrap()])
        .await;
    // The API server serves a new CRD's resource shortly after it is created.
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/autocranedeployments.autocrane.io",
            "--timeout=60s",
        ])
        .await;
    cluster.kubectl_ok(&["create", "namespace", "demo"]).await;
    cluster
}

fn example() -> String {
    std::fs::read_to_string(workspace_root().join("examples/web.yaml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_crd_and_example_install_and_print_their_columns() {
    let cluster = cluster().await;
    let example = workspace_root().join("examples/web.yaml");
    cluster
        .kubectl_ok(&["apply", "-f", example.to_str().unwrap()])
        .await;
    let table = cluster.kubectl_ok(&["get", "acd", "-n", "demo"]).await;
    let header = table.lines().next().unwrap();
    for column in [
        "NAME", "DESIRED", "READY", "HEALTHY", "CURRENT", "TARGET", "PHASE", "AGE",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");
    // Defaults from the schema are filled in by the API server.
    let yaml = cluster
        .kubectl_ok(&[
            "get",
            "autocranedeployment",
            "web",
            "-n",
            "demo",
            "-o",
            "yaml",
        ])
        .await;
    assert!(yaml.contains("exclusiveWithAppRollout: true"), "{yaml}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_is_refused_with_the_field_named() {
    let cluster = cluster().await;
    let base = example().replace("name: web\n", "name: bad\n");
    // Each refusal as the real kube-apiserver (v1.37) words it; kube-sim must say the same.
    let cases: [(&str, String, &str); 6] = [
        (
            "negative replicas",
            base.replace("replicas: 3", "replicas: -2"),
            "spec.replicas: Invalid value: -2: spec.replicas in body should be greater than or equal to 0",
        ),
        (
            "a canary percent over 100",
            base.replace("canaryPercent: 34", "canaryPercent: 150"),
            "spec.dataRollout.canaryPercent: Invalid value: 150: spec.dataRollout.canaryPercent in body should be less than or equal to 100",
        ),
        (
            "a step percent over 100",
            base.replace("{percent: 34, bake: 1m}", "{percent: 340, bake: 1m}"),
            "spec.rollout.steps[0].percent: Invalid value: 340: spec.rollout.steps[0].percent in body should be less than or equal to 100",
        ),
        (
            "an unparsable duration",
            base.replace("progressDeadline: 10m", "progressDeadline: ten minutes"),
            "spec.rollout.progressDeadline: Invalid value: \"ten minutes\": spec.rollout.progressDeadline in body should match '^([0-9]{1,9}(ms|s|m|h))+$'",
        ),
        (
            // A CEL rule on a list: the real API server names no value.
            "steps that do not end at 100%",
            base.replace("{percent: 100}", "{percent: 90}"),
            "spec.rollout.steps: Invalid value: the last rollout step must be 100 percent",
        ),
        (
            // A CEL rule on an object: no value either.
            "a source with two upstreams",
            base.replace(
                "oci: {registry: \"registry.example:5000\", repository: acme/web}",
                "oci: {registry: \"registry.example:5000\", repository: acme/web}\n      directory: {path: /srv}",
            ),
            "spec.version.source: Invalid value: set exactly one of oci, git, http and directory",
        ),
    ];
    for (what, manifest, expected) in cases {
        let output = cluster
            .kubectl_with_input(&["apply", "-f", "-"], Some(&manifest))
            .await;
        assert!(!output.ok, "{what} was accepted:\n{}", output.text());
        assert!(
            output.text().contains(expected),
            "{what}: expected {expected:?} on {}, got:\n{}",
            cluster.backend().name(),
            output.text()
        );
    }
    // Nothing of the refused objects was stored.
    let output = cluster.kubectl(&["get", "acd", "bad", "-n", "demo"]).await;
    assert!(
        !output.ok && output.text().contains("NotFound"),
        "{}",
        output.text()
    );
    cluster.stop().await;
}
