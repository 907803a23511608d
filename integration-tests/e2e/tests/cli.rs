//! The `autocrane` binary as a user meets it: `--help` lists every subcommand with a one-line
//! description, each subcommand has its own help, `autocrane crd` prints exactly the CRD shipped in
//! `deploy/`, and a usage error exits 2 with a message naming the problem.

use std::process::Command;

use autocrane_test_support::{autocrane_bin, run, workspace_root};

#[test]
fn help_lists_every_subcommand_with_a_description() {
    let (ok, help, stderr) = run(Command::new(autocrane_bin()).arg("--help"));
    assert!(ok, "{stderr}");
    let commands: Vec<(&str, &str)> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands section")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("  ")?;
            let (name, about) = line.split_once(char::is_whitespace)?;
            (!name.is_empty() && !name.starts_with(' ')).then_some((name, about.trim()))
        })
        .collect();
    for expected in [
        "watchdog-listener",
        "version-watcher",
        "data-repository",
        "data-deployer",
        "watchdog",
        "watchdog-prober",
        "crd",
        "yaml",
    ] {
        let about = commands
            .iter()
            .find(|(name, _)| *name == expected)
            .unwrap_or_else(|| panic!("{expected} missing from --help:\n{help}"))
            .1;
        assert!(!about.is_empty(), "{expected} has no description");
    }
    for (name, _) in commands.iter().filter(|(name, _)| *name != "help") {
        let (ok, sub_help, stderr) = run(Command::new(autocrane_bin()).args([name, "--help"]));
        assert!(ok, "{name} --help failed: {stderr}");
        assert!(sub_help.contains("Usage: autocrane"), "{sub_help}");
    }
}

#[test]
fn crd_subcommand_prints_the_shipped_crd() {
    let (ok, printed, stderr) = run(Command::new(autocrane_bin()).arg("crd"));
    assert!(ok, "{stderr}");
    let shipped =
        std::fs::read_to_string(workspace_root().join("deploy/crds/autocranedeployment.yaml"))
            .unwrap();
    assert_eq!(printed, shipped);
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let output = Command::new(autocrane_bin())
        .args(["watchdog-listener", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");

    let output = Command::new(autocrane_bin())
        .arg("no-such-component")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn yaml_prints_every_install_manifest_with_the_chosen_image() {
    let (ok, printed, stderr) = run(Command::new(autocrane_bin()).args([
        "yaml",
        "--image",
        "registry.example/autocrane:1.2.3",
    ]));
    assert!(ok, "{stderr}");
    let documents: Vec<serde_json::Value> = printed
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).unwrap())
        .filter(|doc: &serde_json::Value| !doc.is_null())
        .collect();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|doc| doc["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds[0], "CustomResourceDefinition", "the CRD comes first");
    assert!(!printed.contains("image: autocrane:latest"));
    assert!(printed.contains("image: registry.example/autocrane:1.2.3"));

    let output = Command::new(autocrane_bin())
        .args(["yaml", "--image", "not an image"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_server_without_kubeconfig_says_once_what_to_do() {
    let output = Command::new(autocrane_bin())
        .args([
            "watchdog-listener",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("hint:").count(), 1, "{stderr}");
    assert!(stderr.contains("set KUBECONFIG"), "{stderr}");
    assert_eq!(
        stderr.matches("/nonexistent").count(),
        1,
        "each cause once:\n{stderr}"
    );
    assert!(stderr.lines().all(|line| line.len() < 400), "{stderr}");
}
