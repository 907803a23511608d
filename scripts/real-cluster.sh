#!/usr/bin/env bash
# A real Kubernetes control plane (upstream etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler at the version pinned in integration-tests/cluster/go.mod) on loopback, plus the
# kubelet-sim node agent when its binary has been built — for trying AutoCrane by hand.
#
#   scripts/real-cluster.sh --kubeconfig PATH [--image PATTERN=PATH]... [--dir DIR] [--node-name NAME]
#
#   --kubeconfig PATH      where the admin kubeconfig is written (required)
#   --image PATTERN=PATH   image map entry passed to kubelet-sim (repeatable), e.g.
#                          --image 'autocrane:*=target/debug/autocrane' (relative paths: from
#                          the repository root, where kubelet-sim runs)
#   --dir DIR              cluster directory (PKI, etcd data, component logs, audit log);
#                          default: a new /tmp/autocrane-cluster.XXXXXX, kept after exit
#   --node-name NAME       the node kubelet-sim registers (default autocrane-node)
#
# Builds .cache/cluster/cluster if needed (the block of scripts/install-test-tools.sh), runs
# `cluster up`, starts kubelet-sim with the node's kubeconfig (identity system:node:NAME) and the
# kubelet serving certificate (so `kubectl logs` works), and says when everything is ready.
# kubelet-sim is $KUBELET_SIM if set, else the newest of $CARGO_TARGET_DIR (default target/)
# {debug,release}/kubelet-sim, built with cargo when neither exists (NO_BUILD=1: run without it).
# Ctrl-C or SIGTERM stops it all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[real-cluster] %s\n' "$*" >&2; }
usage() { sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; }

KUBECONFIG_OUT="" DIR="" NODE=autocrane-node IMAGES=()
while (( $# )); do
  case "$1" in
    --kubeconfig) KUBECONFIG_OUT="${2:?--kubeconfig needs a path}"; shift 2 ;;
    --kubeconfig=*) KUBECONFIG_OUT="${1#*=}"; shift ;;
    --image) IMAGES+=("${2:?--image needs PATTERN=PATH}"); shift 2 ;;
    --image=*) IMAGES+=("${1#*=}"); shift ;;
    --dir) DIR="${2:?--dir needs a directory}"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --node-name) NODE="${2:?--node-name needs a name}"; shift 2 ;;
    --node-name=*) NODE="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument: $1"; usage; exit 2 ;;
  esac
done
[[ -n "$KUBECONFIG_OUT" ]] || { log "--kubeconfig PATH is required"; usage; exit 2; }
[[ "$KUBECONFIG_OUT" = /* ]] || KUBECONFIG_OUT="$ROOT/$KUBECONFIG_OUT"

# --- the binary: the build block of install-test-tools.sh, on its own ---------------------------
BLOCK="$(sed -n '/^# --- upstream Kubernetes control plane (integration-tests\/cluster) ---$/,/^# --- end of upstream Kubernetes control plane (integration-tests\/cluster) ---$/p' \
  scripts/install-test-tools.sh)"
[[ -n "$BLOCK" ]] || { log "cannot find the cluster build block in scripts/install-test-tools.sh"; exit 1; }
eval "$BLOCK"
CLUSTER="$ROOT/.cache/cluster/cluster"

if [[ -z "$DIR" ]]; then
  DIR="$(mktemp -d /tmp/autocrane-cluster.XXXXXX)"
fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

# --- the node agent: $KUBELET_SIM, or the newest build, or a fresh build ------------------------
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
find_kubelet_sim() {
  local candidate found=""
  for candidate in "$TARGET/debug/kubelet-sim" "$TARGET/release/kubelet-sim"; do
    if [[ -x "$candidate" && ( -z "$found" || "$candidate" -nt "$found" ) ]]; then found="$candidate"; fi
  done
  printf '%s' "$found"
}
if [[ -n "${KUBELET_SIM:-}" ]]; then
  [[ -x "$KUBELET_SIM" ]] || { log "KUBELET_SIM=$KUBELET_SIM is not an executable file"; exit 1; }
  [[ "$KUBELET_SIM" = /* ]] || KUBELET_SIM="$ROOT/$KUBELET_SIM"
else
  KUBELET_SIM="$(find_kubelet_sim)"
  if [[ -z "$KUBELET_SIM" && -z "${NO_BUILD:-}" ]]; then
    log "building kubelet-sim (cargo build -p kubelet-sim --bin kubelet-sim, target $TARGET)"
    CARGO_TARGET_DIR="$TARGET" cargo build -p kubelet-sim --bin kubelet-sim >&2 \
      || log "building kubelet-sim failed: going on without a node agent"
    KUBELET_SIM="$(find_kubelet_sim)"
  fi
fi

# --- processes and their teardown ---------------------------------------------------------------
UP_PID="" SIM_PID="" STOPPING=""
# setpriv gives each child SIGKILL as parent-death signal: if this script is SIGKILLed, the
# launcher dies and takes the control plane with it (its components have their own Pdeathsig).
PDEATH=()
if command -v setpriv >/dev/null; then PDEATH=(setpriv --pdeathsig KILL --); fi

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }
stop_all() {
  [[ -n "$STOPPING" ]] && return
  STOPPING=1
  trap '' INT TERM
  log "stopping ..."
  # Node agent first (it stops its containers), then the control plane (the launcher stops its
  # components in reverse order: SIGTERM, SIGKILL after 10 s).
  for pid in "$SIM_PID" "$UP_PID"; do
    alive "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "process $pid still running after 30 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  # Anything else still in our process group (only when this script leads one, i.e. was started
  # from an interactive shell): gone. (The control plane's components and kubelet-sim's
  # containers have process groups of their own, stopped by their parents above.)
  if [[ "$(ps -o pgid= -p $$ | tr -d ' ')" == "$$" ]]; then
    for pid in $(pgrep -g $$ || true); do
      if [[ "$pid" != "$$" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
  log "stopped (cluster directory kept: $DIR)"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

UP_ARGS=(up --dir "$DIR" --kubeconfig "$KUBECONFIG_OUT" --node-name "$NODE")
if [[ -n "$KUBELET_SIM" ]]; then UP_ARGS+=(--wait-node "$NODE"); fi
log "starting the control plane in $DIR (logs: $DIR/*.log)"
"${PDEATH[@]}" "$CLUSTER" "${UP_ARGS[@]}" > "$DIR/up.stdout" &
UP_PID=$!

NODE_KC="$DIR/node-$NODE.kubeconfig"
if [[ -n "$KUBELET_SIM" ]]; then
  # The node kubeconfig appears once the API server is ready; `cluster up --wait-node` then waits
  # for the Node to be Ready before it prints READY.
  until [[ -f "$NODE_KC" ]]; do
    alive "$UP_PID" || { log "cluster up failed (see above)"; exit 1; }
    sleep 0.2
  done
  # The kubelet API (what the API server proxies `kubectl logs` to) on a free loopback port,
  # reported in the Node's daemonEndpoints; only clients of the cluster CA are served.
  SIM_ARGS=(--kubeconfig "$NODE_KC" --node-name "$NODE" --state-dir "$DIR/kubelet-$NODE"
            --tls-cert-file "$DIR/kubelet-serving.crt" --tls-private-key-file "$DIR/kubelet-serving.key"
            --client-ca-file "$DIR/ca.crt" --port 0)
  for i in "${IMAGES[@]}"; do SIM_ARGS+=(--image "$i"); done
  log "starting $KUBELET_SIM for node $NODE (log: $DIR/kubelet-sim.log)"
  "${PDEATH[@]}" "$KUBELET_SIM" "${SIM_ARGS[@]}" >> "$DIR/kubelet-sim.log" 2>&1 &
  SIM_PID=$!
else
  log "################################################################################"
  log "NO NODE AGENT: no kubelet-sim in $TARGET/{debug,release} (NO_BUILD set, or the build failed)."
  log "Pods will stay Pending. Build it (cargo build -p kubelet-sim --bin kubelet-sim) and"
  log "start it by hand with: --kubeconfig $NODE_KC --node-name $NODE"
  log "################################################################################"
  if (( ${#IMAGES[@]} )); then log "(--image is ignored without kubelet-sim)"; fi
fi

until grep -q '^READY ' "$DIR/up.stdout" 2>/dev/null; do
  alive "$UP_PID" || { log "cluster up failed (see above)"; exit 1; }
  if [[ -n "$SIM_PID" ]] && ! alive "$SIM_PID"; then
    log "kubelet-sim exited during start-up; last lines of $DIR/kubelet-sim.log:"
    tail -n 30 "$DIR/kubelet-sim.log" >&2 || true
    exit 1
  fi
  sleep 0.2
done

log "READY: export KUBECONFIG=$KUBECONFIG_OUT"
log "  kubectl of the same version: $CLUSTER kubectl get nodes"
if [[ -n "$SIM_PID" ]]; then
  log "  node $NODE: Ready (kubelet-sim pid $SIM_PID)"
else
  log "  no node agent running (see above)"
fi
log "  API server logs, audit log: $DIR/kube-apiserver.log, $DIR/audit.log"
log "Ctrl-C (or SIGTERM) stops everything."

# Run until a signal, or until the launcher or the node agent exits by itself.
while true; do
  if ! alive "$UP_PID"; then
    rc=0
    wait "$UP_PID" || rc=$?
    if (( rc == 0 )); then log "the control plane was stopped (by a signal sent to it)"; exit 0; fi
    log "the control plane failed (exit status $rc; see above and $DIR/*.log)"
    exit 1
  fi
  if [[ -n "$SIM_PID" ]] && ! alive "$SIM_PID"; then
    log "kubelet-sim exited; last lines of $DIR/kubelet-sim.log:"
    tail -n 30 "$DIR/kubelet-sim.log" >&2 || true
    exit 1
  fi
  sleep 1 &
  wait $! || true
done
