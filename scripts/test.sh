#!/usr/bin/env bash
# The test command of Weft: formatting, lints and the whole test suite.
# It installs what the suite needs on a fresh machine, so CI and a new checkout run it as is.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is not installed; install Rust with rustup first" >&2
  exit 1
fi
# rustfmt and clippy ship as rustup components; add them if this toolchain lacks them.
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
  done
fi

# Debian packages, reading the package lists first where this machine has none yet (a new
# machine may come without them, and then every install fails).
apt_install() {
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    apt-get update -qq
  fi
  apt-get install -y -qq "$@" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; }
}

# Python with grpcio, a real, unmodified xDS client (gRPC C-core) for the control-plane
# tests, and jwcrypto, a real JOSE library that signs the tokens of the JWT tests.
GRPCIO_VERSION=1.85.3
JWCRYPTO_VERSION=1.6.1
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "
import sys, grpc, importlib.metadata as m
sys.exit(grpc.__version__ != '$GRPCIO_VERSION' or m.version('jwcrypto') != '$JWCRYPTO_VERSION')" 2>/dev/null; then
  echo "== installing Python test clients into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv || { apt_install python3-venv && python3 -m venv .venv; }
  .venv/bin/pip install --quiet --disable-pip-version-check "grpcio==$GRPCIO_VERSION" "jwcrypto==$JWCRYPTO_VERSION"
fi
export WEFT_TEST_PYTHON="$PWD/.venv/bin/python"

# Node.js with @grpc/grpc-js-xds: a second, independent xDS client.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing Node.js"
  apt_install nodejs npm
fi
clients=crates/weft-cli/tests/clients
if [ ! -d "$clients/node_modules/@grpc/grpc-js-xds" ]; then
  echo "== installing Node.js test clients"
  npm ci --prefix "$clients" --silent --no-audit --no-fund
fi

# ip and iptables: the transparent-interception tests make a network namespace with
# redirect rules (they need root, and fail saying so without it). curl: the unmodified HTTP
# client the `weft run` tests mesh.
if ! command -v ip >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1 ||
  ! command -v curl >/dev/null 2>&1; then
  echo "== installing iproute2, iptables and curl"
  apt_install iproute2 iptables curl
fi

# Kubernetes' own etcd, kube-apiserver, kube-controller-manager and kubectl, built from their
# Go modules once per machine (about a quarter of an hour on two cores) and cached: the
# Kubernetes tests run Weft against them. KUBEBUILDER_ASSETS names a folder holding them
# instead, as for controller-runtime's envtest.
if ! command -v go >/dev/null 2>&1; then
  echo "== installing Go"
  apt_install golang-go
fi
echo "== Kubernetes control plane for the tests"
WEFT_K8S_BIN=$(bash scripts/k8s-bin.sh)
export WEFT_K8S_BIN

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
