#!/usr/bin/env bash
# The project's test command (README: "Run every test"); CI's .ci/run calls exactly this.
# Installs the third-party tools the tests use (idempotent), then checks formatting, lints,
# dependency versions, and runs every test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }

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

step "cargo test"
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=4
