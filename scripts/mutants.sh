#!/usr/bin/env bash
# Mutation testing of the controller's decision core (`autocrane-controller`): cargo-mutants
# injects small bugs (a `<` for a `<=`, a function returning a default, a `!` dropped) and checks
# that some test fails for each. A mutant no test catches is a behaviour nothing pins down.
#
#   scripts/mutants.sh                            # every mutant of the crate (~45 min on 2 cores)
#   scripts/mutants.sh --file src/failing.rs      # one file; --file may repeat
#   scripts/mutants.sh --file failing.rs -j 2     # any other cargo-mutants flag passes through
#
# Not run in CI (too slow). Needs `cargo install cargo-mutants --locked`.
# Environment: CARGO_TARGET_DIR (results go to $CARGO_TARGET_DIR/mutants, else target/mutants),
# MUTANTS_TIMEOUT (seconds per test run, default 120), MUTANTS_JOBS (default 1).
# Exit status is cargo-mutants': 0 all caught, 2 some missed, 3 some timed out.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CRATE_DIR=services/controller

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2
  exit 1
fi

# `--file src/x.rs` is relative to the crate; cargo-mutants matches globs with a slash against
# the path from the workspace root.
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -f | --file)
      file="${2:?--file needs a path}"
      [[ "$file" == src/* ]] && file="$CRATE_DIR/$file"
      args+=(--file "$file")
      shift 2
      ;;
    *)
      args+=("$1")
      shift
      ;;
  esac
done

OUT="${CARGO_TARGET_DIR:-$ROOT/target}/mutants"
mkdir -p "$OUT"
status=0
cargo mutants \
  --package autocrane-controller \
  --timeout "${MUTANTS_TIMEOUT:-120}" \
  --jobs "${MUTANTS_JOBS:-1}" \
  --output "$OUT" \
  "${args[@]}" || status=$?

results="$OUT/mutants.out"
count() { if [[ -f "$results/$1" ]]; then grep -c . "$results/$1" || true; else echo 0; fi; }
echo
echo "== cargo-mutants: autocrane-controller =="
echo "caught:   $(count caught.txt)"
echo "missed:   $(count missed.txt)"
echo "timeout:  $(count timeout.txt)"
echo "unviable: $(count unviable.txt)"
if [[ -s "$results/missed.txt" ]]; then
  echo
  echo "Missed (no test fails with these changes):"
  sed 's/^/  /' "$results/missed.txt"
fi
echo
echo "Details: $results (outcomes.json, diffs, logs)"
exit "$status"
