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

# The test targets that hold real-control-plane tests (`tests/real_cluster.rs`, `tests/differential.rs`).
real_targets() {
  local file
  for file in integration-tests/*/tests/real_cluster.rs integration-tests/*/tests/differential.rs \
    services/*/tests/real_cluster.rs; do
    [[ -f "$file" ]] && printf -- '--test %s ' "$(basename "$file" .rs)"
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
# The same workspace build (so no feature set is rebuilt), only the real-control-plane test targets,
# only their real-only tests: each starts upstream etcd, kube-apiserver, controller-manager and
# scheduler (.cache/cluster/cluster, built by install-test-tools.sh) and fails loudly without them.
AUTOCRANE_TEST_RUN="$RUN_ID" AUTOCRANE_TEST_CLUSTER=real \
  cargo test --workspace --locked $(real_targets) -- --ignored --test-threads=1 || tests=$?

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
