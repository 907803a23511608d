#!/usr/bin/env bash
# Fails when the build graph holds two versions of a crate that must be unique: two tonic, prost,
# kube or k8s-openapi versions mean two incompatible sets of types on one wire or API.
# (Other duplicates, such as base64 or hashbrown pulled in by third-party crates, are reported.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
versions="$(cargo tree --workspace -e normal,build --prefix none --format '{p}' \
  | sed 's/ (\*)//; s/ (proc-macro)//; s/ (\/.*)//' | sort -u)"
status=0
for crate in tonic prost kube kube-client kube-core kube-runtime k8s-openapi; do
  found="$(grep -E "^${crate} v" <<<"$versions" || true)"
  count="$(grep -c . <<<"$found" || true)"
  if [[ "$count" -gt 1 ]]; then
    echo "More than one version of $crate:" >&2
    echo "$found" >&2
    status=1
  elif [[ "$count" -eq 0 ]]; then
    echo "$crate is not in the build graph (expected exactly one version)" >&2
    status=1
  else
    echo "$found"
  fi
done
others="$(cargo tree --workspace -d --depth 0 -e normal,build --prefix none --format '{p}' \
  | sed 's/ (\*)//; s/ (proc-macro)//' | sort -u | grep . | awk '{print $1}' | uniq | tr '\n' ' ' || true)"
echo "other crates with several versions (from third-party dependencies): ${others:-none}"
exit $status
