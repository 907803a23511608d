//! The AutoCraneDeployment CRD as a kubectl user meets it, against kube-sim (which validates custom
//! resources with the CRD's schema and CEL rules like the real API server): the shipped CRD and
//! example install; nonsense is refused with the field named; the printer columns show.

use std::process::Command;

use autocrane_test_support::{run, system_tool, workspace_root};
use kube_sim::KubeSim;

struct Cluster {
    _sim: KubeSim,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let sim = KubeSim::builder().start().await.expect("kube-sim starts");
        let dir = tempfile::tempdir().unwrap();
        sim.write_kubeconfig(dir.path().join("kubeconfig")).unwrap();
        let cluster = Self { _sim: sim, dir };
        cluster.ok(&[
            "apply",
            "-f",
            workspace_root()
                .join("deploy/crds/autocranedeployment.yaml")
                .to_str()
                .unwrap(),
        ]);
        cluster.ok(&["create", "namespace", "demo"]);
        cluster
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut command = Command::new(system_tool("kubectl"));
        command
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("KUBECACHEDIR", self.dir.path().join("cache"));
        if let Some(text) = stdin {
            let file = self.dir.path().join("stdin.yaml");
            std::fs::write(&file, text).unwrap();
            command.args(["-f", file.to_str().unwrap()]);
        }
        let (ok, out, err) = run(&mut command);
        (ok, format!("{out}{err}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args, None);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }
}

fn example() -> String {
    std::fs::read_to_string(workspace_root().join("examples/web.yaml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_crd_and_example_install_and_print_their_columns() {
    let cluster = Cluster::start().await;
    let example = workspace_root().join("examples/web.yaml");
    cluster.ok(&["apply", "-f", example.to_str().unwrap()]);
    let table = cluster.ok(&["get", "acd", "-n", "demo"]);
    let header = table.lines().next().unwrap();
    for column in [
        "NAME", "DESIRED", "READY", "HEALTHY", "CURRENT", "TARGET", "PHASE", "AGE",
    ] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");
    // Defaults from the schema are filled in by the API server.
    let yaml = cluster.ok(&[
        "get",
        "autocranedeployment",
        "web",
        "-n",
        "demo",
        "-o",
        "yaml",
    ]);
    assert!(yaml.contains("exclusiveWithAppRollout: true"), "{yaml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_is_refused_with_the_field_named() {
    let cluster = Cluster::start().await;
    let base = example().replace("name: web\n", "name: bad\n");
    let cases: [(&str, String, &str); 6] = [
        (
            "negative replicas",
            base.replace("replicas: 3", "replicas: -2"),
            "spec.replicas",
        ),
        (
            "a canary percent over 100",
            base.replace("canaryPercent: 34", "canaryPercent: 150"),
            "spec.dataRollout.canaryPercent",
        ),
        (
            "a step percent over 100",
            base.replace("{percent: 34, bake: 1m}", "{percent: 340, bake: 1m}"),
            "spec.rollout.steps[0].percent",
        ),
        (
            "an unparsable duration",
            base.replace("progressDeadline: 10m", "progressDeadline: ten minutes"),
            "spec.rollout.progressDeadline",
        ),
        (
            "steps that do not end at 100%",
            base.replace("{percent: 100}", "{percent: 90}"),
            "the last rollout step must be 100 percent",
        ),
        (
            "a source with two upstreams",
            base.replace(
                "oci: {registry: \"registry.example:5000\", repository: acme/web}",
                "oci: {registry: \"registry.example:5000\", repository: acme/web}\n      directory: {path: /srv}",
            ),
            "set exactly one of oci, git, http and directory",
        ),
    ];
    for (what, manifest, named) in cases {
        let (ok, output) = cluster.kubectl(&["apply"], Some(&manifest));
        assert!(!ok, "{what} was accepted:\n{output}");
        assert!(
            output.contains(named),
            "{what}: the error does not name {named}:\n{output}"
        );
    }
    // Nothing of the refused objects was stored.
    let (ok, output) = cluster.kubectl(&["get", "acd", "bad", "-n", "demo"], None);
    assert!(!ok && output.contains("NotFound"), "{output}");
}
