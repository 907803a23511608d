#!/usr/bin/env bash
# The README's main job: a local AutoCrane playground on loopback, showing what exists today.
#  1. kube-sim (the project's Kubernetes API emulator) starts with its kubelet simulator (pods run
#     as local processes, each on its own loopback IP) and writes a kubeconfig;
#  2. the real kubectl installs the AutoCraneDeployment CRD and an example deployment, and the API
#     rejects a nonsensical one with the field named;
#  3. a pod runs a real HTTP server; the WatchdogListener starts against the API with its prober,
#     which probes the pod (`probe.autocrane.io/http`) and posts the result; grpcurl lists the API
#     through reflection;
#  4. `autocrane watchdog post` marks a pod's watchdog `error`, and `kubectl get pods -L
#     status.autocrane.io/health` shows the rollup change; a TTL'd `info` status follows;
#     `kubectl logs` shows the pod's own output through the API;
#  5. everything stops when the script ends (also on Ctrl-C).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\n\033[1m## %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

scripts/install-test-tools.sh >/dev/null
# DEMO_BIN_DIR: use already-built `autocrane` and `kube-sim` from there (the test of this script
# passes the workspace build, so CI does not compile a second feature set).
if [[ -n "${DEMO_BIN_DIR:-}" ]]; then
  BIN="$DEMO_BIN_DIR"
else
  say "Building autocrane and kube-sim"
  cargo build --quiet -p autocrane -p kube-sim
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
fi
[[ -x "$BIN/autocrane" && -x "$BIN/kube-sim" ]] || { echo "autocrane or kube-sim missing in $BIN" >&2; exit 1; }
GRPCURL="$ROOT/.venv/bin/grpcurl"

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

say "Starting kube-sim (Kubernetes API emulator) on loopback"
"$BIN/kube-sim" --listen 127.0.0.1:0 --kubeconfig "$WORK/kubeconfig" --kubelet >"$WORK/kube-sim.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$WORK/kubeconfig" ]] && break; sleep 0.1; done
[[ -s "$WORK/kubeconfig" ]] || { cat "$WORK/kube-sim.log"; echo "kube-sim did not start" >&2; exit 1; }
export KUBECONFIG="$WORK/kubeconfig" KUBECACHEDIR="$WORK/kube-cache"

say "Installing the CRD and an example AutoCraneDeployment with kubectl"
run kubectl apply -f deploy/crds/autocranedeployment.yaml
run kubectl create namespace demo
run kubectl apply -f examples/web.yaml
run kubectl get acd -n demo
say "A nonsensical deployment is refused by the API, naming the field"
sed -e 's/name: web$/name: broken/' -e 's/replicas: 3/replicas: -1/' -e 's/{percent: 100}/{percent: 90}/' examples/web.yaml \
  | kubectl apply -f - 2>&1 | sed 's/^/  /' || true

say "A pod running a real HTTP server on its own loopback IP, with an HTTP probe annotation"
kubectl apply -f - <<'POD'
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: demo
  labels: {app: web}
  annotations: {probe.autocrane.io/http: "8080/"}
spec:
  nodeName: sim-node
  containers:
    - name: web
      image: python:3
      command: ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"]
      env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
      readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
POD
run kubectl wait --for=condition=Ready pod/web-0 -n demo --timeout=60s
run kubectl get pods -n demo -o wide

say "Starting the WatchdogListener (anonymous posts allowed: local play only)"
"$BIN/autocrane" watchdog-listener --listen 127.0.0.1:0 --admin-listen off --insecure-allow-anonymous \
  --prober --probe-interval 2s \
  >"$WORK/listener.log" 2>&1 &
PIDS+=($!)
ADDR=""
for _ in $(seq 100); do
  ADDR="$(grep -o 'gRPC server listening address=[0-9.:]*' "$WORK/listener.log" | head -1 | cut -d= -f2 || true)"
  [[ -n "$ADDR" ]] && break; sleep 0.1
done
[[ -n "$ADDR" ]] || { cat "$WORK/listener.log"; echo "the WatchdogListener did not start" >&2; exit 1; }
export AUTOCRANE_WATCHDOG_SERVER="http://$ADDR" AUTOCRANE_WATCHDOG_NO_TOKEN=true
run "$GRPCURL" -plaintext "$ADDR" list

say "The prober found the pod's probe annotation and posted watchdog \`http\`"
for _ in $(seq 50); do
  kubectl get pod web-0 -n demo -o jsonpath='{.metadata.annotations}' | grep -q 'status.autocrane.io/http' && break
  sleep 0.2
done
run "$BIN/autocrane" watchdog get --pod demo/web-0
run kubectl get pods -n demo -L status.autocrane.io/health

say "A person posts an error watchdog: the rollup label turns to error"
run "$BIN/autocrane" watchdog post --pod demo/web-0 --name smoke --level error --message "checkout smoke test failed"
sleep 0.5
run kubectl get pods -n demo -L status.autocrane.io/health
run "$BIN/autocrane" watchdog post --pod demo/web-0 --name smoke --level warning --message "checkout slow (2.1 s)" --ttl 2s
sleep 0.5
run kubectl get pods -n demo -L status.autocrane.io/health
run "$BIN/autocrane" watchdog get --pod demo/web-0
say "After the 2 s TTL the warning no longer counts and the rollup follows the prober's info"
sleep 2.5
run kubectl get pods -n demo -L status.autocrane.io/health
run "$GRPCURL" -plaintext -d '{"pod":{"namespace":"demo","name":"web-0"}}' "$ADDR" autocrane.watchdog.v1.WatchdogListener/GetPodHealth

say "kubectl logs reads the pod's output through the API (the readiness probe's and prober's GETs)"
run kubectl logs web-0 -n demo --tail 3

say "Done: every process stops now"
