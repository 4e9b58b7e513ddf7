#!/usr/bin/env bash
# Build the real control plane the tests run (kube-apiserver, kube-controller-manager,
# kube-scheduler and etcd) from Go modules, once per machine, into the user cache.
#
#   tests/cluster/build.sh          # prints the folder holding the four binaries
#
# The versions are those of tools/go.mod; the cache folder is keyed by them and by a
# hash of go.sum, so a change of version builds anew and an unchanged one costs nothing.
# Nothing here is committed: the binaries live under ${XDG_CACHE_HOME:-~/.cache}/qeval.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tools="$here/tools"
k8s=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$tools/go.mod")
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" && NF > 1 {print $2}' "$tools/go.mod")
sum=$(sha256sum "$tools/go.sum" | cut -c1-12)
out="${XDG_CACHE_HOME:-$HOME/.cache}/qeval/control-plane/kubernetes-$k8s-etcd-$etcd-$sum"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd)

have() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is needed (Go 1.25 or newer) to build the control plane" >&2; exit 1; }
mkdir -p "$out.tmp"
start=$(date +%s)
cd "$tools"
# Stamp the release into the binaries: unstamped they say v0.0.0-master, which fails a
# chart's kubeVersion and makes kubectl warn about skew.
v=k8s.io/component-base/version
ldflags="-s -w -X $v.gitVersion=$k8s -X $v.gitMajor=$(echo "${k8s#v}" | cut -d. -f1) -X $v.gitMinor=$(echo "${k8s#v}" | cut -d. -f2) -X $v.gitTreeState=clean"
echo "build.sh: building Kubernetes $k8s and etcd $etcd into $out (once per machine)" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
echo "$(( $(date +%s) - start ))" > "$out.tmp/build-seconds"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build.sh: built in $(cat "$out/build-seconds") s" >&2
echo "$out"
