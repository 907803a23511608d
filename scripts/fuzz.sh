#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a bounded time each; see --help and fuzz/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/fuzz.sh [--list] [SECONDS] [FILTER...]

Fuzzes every parser that takes outside input (the targets in fuzz/fuzz_targets/), one target
after the other, each for SECONDS (default: $FUZZ_SECONDS, else 60), then prints a table of
target, executions, seconds and result. Exits non-zero when any target crashed (a panic, which
includes a failed property assertion), naming the input that crashed it.

  SECONDS    seconds per target; 0 replays the seeds and the saved corpus once, no fuzzing
  FILTER     run only the targets whose name contains one of these words (e.g. stage kube_sim)
  --list     print the target names and exit
  -h, --help this text

Needs the nightly toolchain (cargo +nightly) and cargo-fuzz (cargo install cargo-fuzz --locked),
and a C++ compiler for libFuzzer. Builds with debug assertions (overflow checks) and no sanitizer:
the fuzzed code is safe Rust, so the sanitizer would only cost executions.

Environment:
  FUZZ_SECONDS      default seconds per target (60)
  FUZZ_TARGET_DIR   the cargo target directory (default /work/target-fuzz when /work is writable,
                    else ~/.cache/autocrane-target-fuzz); never the repository's target/
  FUZZ_SANITIZER    cargo fuzz --sanitizer (default none; address, memory, thread, leak)
  FUZZ_ARGS         extra libFuzzer flags (e.g. "-max_len=65536")

The committed seeds (fuzz/seeds/<target>/) are copied into a scratch corpus under
$FUZZ_TARGET_DIR/corpus/<target>/, which keeps growing across runs; crashing inputs are written to
$FUZZ_TARGET_DIR/artifacts/<target>/. Nothing in the repository changes.
EOF
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=()
while IFS= read -r file; do
  targets+=("$(basename "$file" .rs)")
done < <(ls "$repo"/fuzz/fuzz_targets/*.rs | sort)

seconds="${FUZZ_SECONDS:-60}"
filters=()
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --list) printf '%s\n' "${targets[@]}"; exit 0 ;;
    -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    *[!0-9]*) filters+=("$arg") ;;
    *) seconds="$arg" ;;
  esac
done
if [[ ! "$seconds" =~ ^[0-9]+$ ]]; then
  echo "FUZZ_SECONDS must be a whole number of seconds, not $seconds" >&2
  exit 2
fi

selected=()
for target in "${targets[@]}"; do
  if [[ ${#filters[@]} -eq 0 ]]; then
    selected+=("$target")
    continue
  fi
  for filter in "${filters[@]}"; do
    if [[ "$target" == *"$filter"* ]]; then
      selected+=("$target")
      break
    fi
  done
done
if [[ ${#selected[@]} -eq 0 ]]; then
  echo "no target matches ${filters[*]} (see --list)" >&2
  exit 2
fi

if [[ -z "${FUZZ_TARGET_DIR:-}" ]]; then
  if [[ -d /work && -w /work ]]; then
    FUZZ_TARGET_DIR=/work/target-fuzz
  else
    FUZZ_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/autocrane-target-fuzz"
  fi
fi
export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"
export CARGO_INCREMENTAL=0
sanitizer="${FUZZ_SANITIZER:-none}"
read -r -a extra <<<"${FUZZ_ARGS:-}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

cd "$repo"
logs="$CARGO_TARGET_DIR/logs"
mkdir -p "$logs"
echo "Building the fuzz targets into $CARGO_TARGET_DIR (nightly, sanitizer $sanitizer; log $logs/build.log)"
if ! cargo +nightly fuzz build --sanitizer "$sanitizer" --debug-assertions >"$logs/build.log" 2>&1; then
  tail -n 30 "$logs/build.log" >&2
  echo "building the fuzz targets failed (full log: $logs/build.log)" >&2
  exit 1
fi

rows=()
failed=0
index=0
for target in "${selected[@]}"; do
  index=$((index + 1))
  corpus="$CARGO_TARGET_DIR/corpus/$target"
  artifacts="$CARGO_TARGET_DIR/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  cp -n "$repo/fuzz/seeds/$target"/* "$corpus"/ 2>/dev/null || true
  if [[ "$seconds" -eq 0 ]]; then
    budget=(-runs=0)
    echo "[$index/${#selected[@]}] $target: replaying $(ls "$corpus" | wc -l) inputs"
  else
    budget=("-max_total_time=$seconds")
    echo "[$index/${#selected[@]}] $target: fuzzing for $seconds s ($(ls "$corpus" | wc -l) corpus inputs)"
  fi
  log="$logs/$target.log"
  start=$(date +%s)
  status=0
  cargo +nightly fuzz run --sanitizer "$sanitizer" --debug-assertions "$target" "$corpus" -- \
    "${budget[@]}" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
    "-artifact_prefix=$artifacts/" "${extra[@]}" >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - start))
  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  # libFuzzer's own time (the wall time also counts cargo checking the build).
  fuzzed="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)"
  elapsed="${fuzzed:-$elapsed}"
  if [[ "$status" -eq 0 ]]; then
    result="ok"
  else
    failed=1
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
    result="CRASH ${artifact:-(exit $status; see $log)}"
  fi
  echo "[$index/${#selected[@]}] $target: ${executions:-?} executions in $elapsed s: $result"
  rows+=("$target|${executions:-?}|$elapsed|$result")
done

echo
printf '| %-25s | %10s | %7s | %s |\n' target executions seconds result
printf '|%s|%s|%s|%s|\n' "---------------------------" "-----------:" "--------:" "--------"
for row in "${rows[@]}"; do
  IFS='|' read -r target executions elapsed result <<<"$row"
  printf '| %-25s | %10s | %7s | %s |\n' "$target" "$executions" "$elapsed" "$result"
done
echo "Logs: $logs/<target>.log"
if [[ "$failed" -ne 0 ]]; then
  echo "A target crashed: reproduce with cargo +nightly fuzz run --sanitizer $sanitizer --debug-assertions <target> <artifact>" >&2
fi
exit "$failed"
