#!/usr/bin/env bash
# proxy-hop --setup command for Weft: runs `weft control` for the Weft proxies of a run.
#
# The control plane signs with the run's CA (Istio's plug-in CA layout: ca-cert.pem and
# ca-key.pem in its state directory), so the certificates the sidecars obtain by CSR chain to
# the same root as the nginx and HAProxy pairs' certificates. Mesh-wide STRICT mTLS makes B
# refuse clients without a mesh certificate. Writes to HOP_SHARED: the control plane's xDS
# and debug addresses (`xds`, `debug`), a join token per service account (`token-*`), the
# configuration folder (`config/`, where weft-hop.sh adds ServiceEntries), then `ready`.
set -euo pipefail
WEFT="${WEFT_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/dist/weft}"
d="$HOP_SHARED"
mkdir -p "$d/config" "$d/state"
install -m 600 "$HOP_CA" "$d/state/ca-cert.pem"
install -m 600 "$HOP_CA_KEY" "$d/state/ca-key.pem"
cat > "$d/config/mesh.yaml" <<'YAML'
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
YAML
# WEFT_HOP_H2=1: B's service gets h2UpgradePolicy UPGRADE (weft-hop.sh reads this marker).
if [[ ${WEFT_HOP_H2:-0} == 1 ]]; then touch "$d/h2"; fi
for account in a b hop; do
  "$WEFT" join-token --namespace bench --service-account "$account" \
    --config-dir "$d/config" --state-dir "$d/state" > "$d/token-$account"
done
"$WEFT" control --config-dir "$d/config" --state-dir "$d/state" --trust-domain weft.test \
  --xds-addr 127.0.0.1:0 --debug-addr 127.0.0.1:0 --log info 2> "$d/control.log" &
control=$!
trap 'kill -TERM $control 2>/dev/null; wait $control' TERM INT EXIT
for _ in $(seq 1 600); do
  xds=$(sed -n 's/.*serving xDS on //p' "$d/control.log" | head -n 1)
  debug=$(sed -n 's/.*serving debug pages on //p' "$d/control.log" | head -n 1)
  if [[ -n $xds && -n $debug ]]; then
    echo "$xds" > "$d/xds"; echo "$debug" > "$d/debug"; touch "$d/ready"
    break
  fi
  kill -0 $control 2>/dev/null || { cat "$d/control.log" >&2; exit 1; }
  sleep 0.05
done
wait $control
