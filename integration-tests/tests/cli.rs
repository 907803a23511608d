//! The `autocrane` binary as a user meets it: `--help` lists every subcommand with a one-line
//! description, each subcommand has its own help, `autocrane crd` prints exactly the CRD shipped in
//! `deploy/`, and a usage error exits 2 with a message naming the problem.

use std::process::Command;

use autocrane_integration_tests::{autocrane_bin, run, workspace_root};

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
        "crd",
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
