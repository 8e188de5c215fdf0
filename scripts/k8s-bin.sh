#!/usr/bin/env bash
# Prints the folder holding a real Kubernetes control plane for the tests: kube-apiserver,
# kube-controller-manager and kubectl from the k8s.io/kubernetes Go module, and etcd from
# go.etcd.io/etcd, built with Go at pinned releases and cached, so only the first run on a
# machine builds them (about a quarter of an hour on two cores).
#
# KUBEBUILDER_ASSETS, as controller-runtime's envtest reads it, names a folder that already
# holds them; it is used as it is.
set -euo pipefail

KUBERNETES_VERSION=1.37.2
ETCD_VERSION=3.6.16
binaries=(kube-apiserver kube-controller-manager kubectl etcd)

has_all() {
  for binary in "${binaries[@]}"; do
    [ -x "$1/$binary" ] || return 1
  done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  if ! has_all "$KUBEBUILDER_ASSETS"; then
    echo "k8s-bin.sh: KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of: ${binaries[*]}" >&2
    exit 1
  fi
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

cache="${WEFT_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weft/k8s}/v$KUBERNETES_VERSION-etcd$ETCD_VERSION"
if has_all "$cache/bin"; then
  echo "$cache/bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "k8s-bin.sh: Go is needed to build kube-apiserver and etcd; install it (golang-go)" >&2
  exit 1
fi
echo "k8s-bin.sh: building Kubernetes v$KUBERNETES_VERSION and etcd v$ETCD_VERSION into $cache (once per machine)" >&2
mkdir -p "$cache/bin"

# Kubernetes: its go.mod pins its staging modules (k8s.io/api, apiserver, client-go, ...) at
# v0.0.0 and replaces them with folders of its own repository; a module that builds it
# replaces each with the published release of the same minor.
module="$cache/kubernetes-module"
mkdir -p "$module"
cd "$module"
kubernetes_mod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
{
  echo "module weft.test/kubernetes"
  echo
  echo "go 1.26"
  echo
  echo "require k8s.io/kubernetes v$KUBERNETES_VERSION"
  echo
  sed -n 's/^[[:space:]]*\(k8s\.io\/[a-z0-9-]*\) v0\.0\.0$/replace \1 => \1 v0.'"${KUBERNETES_VERSION#1.}"'/p' "$kubernetes_mod" | sort -u
} >go.mod
cat >tools.go <<'GO'
//go:build tools

// Package tools names the programs this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go mod tidy >&2
version_flags="-X k8s.io/component-base/version.gitVersion=v$KUBERNETES_VERSION"
version_flags+=" -X k8s.io/component-base/version.gitMajor=${KUBERNETES_VERSION%%.*}"
minor=${KUBERNETES_VERSION#*.}
version_flags+=" -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
version_flags+=" -X k8s.io/client-go/pkg/version.gitVersion=v$KUBERNETES_VERSION"
for binary in kube-apiserver kube-controller-manager kubectl; do
  go build -ldflags "$version_flags" -o "$cache/bin/$binary.tmp" "k8s.io/kubernetes/cmd/$binary" >&2
  mv "$cache/bin/$binary.tmp" "$cache/bin/$binary"
done

# etcd: its server module is the etcd program.
module="$cache/etcd-module"
mkdir -p "$module"
cd "$module"
cat >go.mod <<MOD
module weft.test/etcd

go 1.26

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
MOD
cat >tools.go <<'GO'
//go:build tools

// Package tools names the programs this module builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
GO
go mod tidy >&2
go build -o "$cache/bin/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
mv "$cache/bin/etcd.tmp" "$cache/bin/etcd"

echo "$cache/bin"
