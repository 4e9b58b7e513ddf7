#!/usr/bin/env bash
# Build toxiproxy (Shopify's TCP fault-injecting proxy: latency, resets, timeouts, sliced
# and limited data) from its Go module, once per machine, into the user cache; the fault
# tests put it between the operator and the API server (tests/cluster/faults.py).
#
#   tests/cluster/build-toxiproxy.sh   # prints the path of the toxiproxy-server binary
#
# The cache folder is keyed by the version, so a change of version builds anew and an
# unchanged one costs nothing. Nothing here is committed.
set -euo pipefail
version="${TOXIPROXY_VERSION:-v2.5.0}"
out="${XDG_CACHE_HOME:-$HOME/.cache}/qeval/toxiproxy-$version"
if [ -x "$out/toxiproxy-server" ]; then echo "$out/toxiproxy-server"; exit 0; fi

command -v go >/dev/null || { echo "build-toxiproxy.sh: Go is needed to build toxiproxy" >&2; exit 1; }
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build-toxiproxy.sh: building toxiproxy $version into $out (once per machine)" >&2
# `go install module@version` builds the released module with its own go.mod and go.sum.
GOBIN="$work/bin" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$version"
mkdir -p "$out.tmp"
mv "$work/bin/server" "$out.tmp/toxiproxy-server"
echo "$(( $(date +%s) - start ))" > "$out.tmp/build-seconds"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build-toxiproxy.sh: built in $(cat "$out/build-seconds") s" >&2
echo "$out/toxiproxy-server"
