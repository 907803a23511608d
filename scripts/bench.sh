#!/usr/bin/env bash
# One command for every benchmark of the project, from release builds.
#
# Each benchmark stays runnable alone (`cargo bench …` / `cargo run --release --example …`, see
# the header of each); this script runs them in turn, collects the `BENCH-RESULT {json}` lines
# they print (one per figure: value, baseline measured in the same run, ratio, goal, met), prints
# one table and writes it as JSON to target/bench/results-<UTC time>.json (and results.json, the
# latest). With --runs N each benchmark runs N times and the table shows the median figure, the
# spread (min–max of the N values) as the noise.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/bench.sh [--runs N] [--only NAME]... [--list] [--help]

Runs the project's benchmarks from release builds and prints one table: figure, value, baseline
measured in the same run, ratio, goal, met. Writes the table as JSON under target/bench/.

  --runs N      run each benchmark N times (default 1; issue 14 asks for the median of >= 3)
  --only NAME   run only this benchmark (repeatable); see --list
  --list        list the benchmarks and exit
  --help        this text

Benchmarks (each also runnable alone, see its header):
  kube-sim          integration-tests/kube-sim/benches/kube_sim_bench.rs (10,000 pods)
  controller-plan   services/controller/benches/plan.rs (planning time)
  version-watcher   services/version-watcher/examples/bench.rs (needs docker-registry)
  watchdog          services/watchdog-listener/examples/watchdog_bench.rs
  data-transfer     services/data-deployer/examples/data_transfer.rs (needs nginx, git)

Environment: each benchmark's own knobs (BENCH_* variables, see its header) pass through.
Every benchmark runs on 127.0.0.1 only and is bounded in count and time.
EOF
}

ALL=(kube-sim controller-plan version-watcher watchdog data-transfer)
runs=1
only=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
    --only) only+=("${2:?--only needs a benchmark name}"); shift 2 ;;
    --list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --runs must be a positive number, got: $runs" >&2; exit 2; }
for name in ${only[@]+"${only[@]}"}; do
  [[ " ${ALL[*]} " == *" $name "* ]] || { echo "bench.sh: unknown benchmark: $name (known: ${ALL[*]})" >&2; exit 2; }
done
if [[ ${#only[@]} -gt 0 ]]; then selected=("${only[@]}"); else selected=("${ALL[@]}"); fi

cd "$(dirname "$0")/.."
root=$(pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
out_dir="$target/bench"
mkdir -p "$out_dir"
raw="$out_dir/raw-$(date -u +%Y%m%dT%H%M%SZ).txt"
: > "$raw"

command -v python3 >/dev/null || { echo "bench.sh: python3 is needed to build the table" >&2; exit 1; }
# The tools the benchmarks need, as the tests install them; nginx (the data path's baseline) only
# here, since no test needs it.
scripts/install-test-tools.sh >/dev/null
if [[ " ${selected[*]} " == *" data-transfer "* ]] && ! command -v nginx >/dev/null; then
  echo "==> installing Debian's nginx-light (the data-transfer baseline)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi

if [[ " ${selected[*]} " == *" data-transfer "* ]]; then
  echo "==> release build of the autocrane binary (the data-transfer benchmark's servers run it)"
  cargo build --release --locked -p autocrane
  # Benchmarks that start `autocrane` processes take them from the release build, not the debug
  # one the tests build (autocrane_test_support::workspace_binary).
  export AUTOCRANE_TEST_BIN_DIR="$target/release"
fi

run_one() {
  case "$1" in
    kube-sim) cargo bench --locked -p kube-sim --bench kube_sim_bench ;;
    controller-plan) cargo bench --locked -p autocrane-controller --bench plan ;;
    version-watcher) cargo run --release --locked -p autocrane-version-watcher --example bench ;;
    watchdog) cargo run --release --locked -p autocrane-watchdog-listener --example watchdog_bench ;;
    data-transfer) cargo run --release --locked -p autocrane-data-deployer --example data_transfer ;;
  esac
}

failed=()
for name in "${selected[@]}"; do
  for run in $(seq 1 "$runs"); do
    echo "==> $name (run $run of $runs)"
    started=$SECONDS
    if run_one "$name" 2>&1 | tee -a "$raw" | { grep --line-buffered -v '^BENCH-RESULT ' || true; }; then
      echo "    $name run $run finished in $((SECONDS - started)) s"
    else
      echo "    $name run $run FAILED after $((SECONDS - started)) s (output in $raw)" >&2
      failed+=("$name#$run")
    fi
  done
done

stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
json="$out_dir/results-${stamp//:/}.json"
python3 - "$raw" "$json" "$runs" "$stamp" <<'PY'
import json, platform, statistics, subprocess, sys

raw, out, runs, stamp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = {}
for line in open(raw, errors="replace"):
    if not line.startswith("BENCH-RESULT "):
        continue
    r = json.loads(line[len("BENCH-RESULT "):])
    key = (r["bench"], r["figure"], r.get("baseline_what"))
    rows.setdefault(key, []).append(r)

def cpu():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()

machine = {
    "cpu": cpu(),
    "cores": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
    "memory": next((l.split(":", 1)[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal")), "?"),
    "kernel": platform.release(),
}
table = []
for (bench, figure, what), rs in rows.items():
    values = [r["value"] for r in rs]
    ratios = [r["ratio"] for r in rs]
    mid = statistics.median(ratios)
    chosen = min(rs, key=lambda r: abs(r["ratio"] - mid))
    mets = [r.get("met") for r in rs]
    table.append({
        "bench": bench, "figure": figure, "unit": chosen["unit"],
        "value": statistics.median(values), "value_min": min(values), "value_max": max(values),
        "baseline": chosen["baseline"], "baseline_what": what,
        "ratio": mid, "goal": chosen.get("goal"),
        "met": None if mets[0] is None else (statistics.median([1 if m else 0 for m in mets]) >= 0.5),
        "runs": len(rs),
    })
json.dump({"at": stamp, "runs": runs, "machine": machine, "results": table}, open(out, "w"), indent=2)

def num(x):
    return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
print()
print(f"# AutoCrane benchmarks, {stamp}; {machine['cores']} cores, {machine['cpu']}, {machine['memory']}; median of {runs} run(s)")
head = ("benchmark", "figure", "value", "spread", "baseline (same run)", "ratio", "goal", "met")
lines = [head]
for t in table:
    spread = "" if t["runs"] < 2 else f"{num(t['value_min'])}–{num(t['value_max'])}"
    met = "—" if t["met"] is None else ("yes" if t["met"] else "NO")
    lines.append((t["bench"], t["figure"], f"{num(t['value'])} {t['unit']}", spread,
                  f"{num(t['baseline'])} ({t['baseline_what']})", f"{t['ratio']:.2f}x",
                  t["goal"] or "—", met))
widths = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
for i, l in enumerate(lines):
    print("  ".join(str(c).ljust(w) for c, w in zip(l, widths)).rstrip())
    if i == 0:
        print("  ".join("-" * w for w in widths))
print(f"\nJSON: {out}")
PY
cp "$json" "$out_dir/results.json"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "bench.sh: failed: ${failed[*]} (output in $raw)" >&2
  exit 1
fi
