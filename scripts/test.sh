#!/usr/bin/env bash
# The project's test command (README: "Run every test"); CI's .ci/run calls exactly this.
# Installs the third-party tools the tests use (idempotent), then checks formatting, lints,
# dependency versions, and runs every test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }
# A test run builds from scratch once: incremental artifacts would only cost disk (GBs) and time.
export CARGO_INCREMENTAL=0

step "Installing test tools"
scripts/install-test-tools.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "One version each of tonic, prost, kube, k8s-openapi"
scripts/check-dependency-versions.sh

step "buf lint"
(cd proto && ../.tools/node_modules/.bin/buf lint)

# The test targets that talk to Kubernetes: every `tests/*.rs` that takes its cluster from the
# harness (`TestCluster`, integration-tests/e2e/src/cluster.rs), itself or through its
# `tests/common/mod.rs`. They run on kube-sim in the main pass and again on the real control plane
# below; a new suite joins by using the harness.
real_targets() {
  local file common
  for file in integration-tests/*/tests/*.rs services/*/tests/*.rs tests/*.rs; do
    [[ -f "$file" ]] || continue
    common="$(dirname "$file")/common/mod.rs"
    if grep -q 'TestCluster' "$file" ||
      { grep -q '^mod common;' "$file" && grep -qs 'TestCluster' "$common"; }; then
      printf -- '--test %s ' "$(basename "$file" .rs)"
    fi
  done
}

step "cargo test"
cargo build --workspace --all-targets --locked
# Every process the tests start inherits this tag (only cargo test's descendants carry it), so
# whatever is still running afterwards is ours, whoever started it.
RUN_ID="$$-$(date +%s%N)"
tests=0
AUTOCRANE_TEST_RUN="$RUN_ID" cargo test --workspace --locked -- --test-threads=4 || tests=$?

step "Kubernetes-facing suites on the real control plane (AUTOCRANE_TEST_CLUSTER=real)"
# The same workspace build (so no feature set is rebuilt), only the targets of real_targets, one
# test at a time (each starts upstream etcd, kube-apiserver, controller-manager and scheduler from
# .cache/cluster/cluster, built by install-test-tools.sh, and fails loudly without it): first their
# backend-agnostic tests, then their `#[ignore]`d `real_control_plane_only_…` tests.
targets="$(real_targets)"
real_started=$SECONDS
AUTOCRANE_TEST_RUN="$RUN_ID" AUTOCRANE_TEST_CLUSTER=real \
  cargo test --workspace --locked $targets -- --test-threads=1 || tests=$?
AUTOCRANE_TEST_RUN="$RUN_ID" AUTOCRANE_TEST_CLUSTER=real \
  cargo test --workspace --locked $targets -- --ignored real_control_plane_only_ --test-threads=1 ||
  tests=$?
echo "real pass: $((SECONDS - real_started)) s"

step "No test process outlives the suite"
leftovers() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid="${environ#/proc/}"; pid="${pid%/environ}"
    if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qx "AUTOCRANE_TEST_RUN=$RUN_ID"; then
      printf '%s %s\n' "$pid" "$({ tr '\0' ' ' </proc/"$pid"/cmdline; } 2>/dev/null)"
    fi
  done
}
# SIGKILLed processes may take a moment to go; a leak stays.
for _ in $(seq 50); do
  [ -z "$(leftovers)" ] && break
  sleep 0.1
done
left="$(leftovers)"
if [ -n "$left" ]; then
  printf 'FAIL: processes started by the tests are still running (pid, command line):\n%s\n' "$left" >&2
  exit 1
fi
echo "none left"
exit "$tests"
