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
# WEFT_HOP_AUTHZ=1: B verifies a JWT (RS256) that A adds to every request, and evaluates
# 100 authorization rules that read it (weft-hop.sh reads the marker, the key set and the
# token written here with openssl).
if [[ ${WEFT_HOP_AUTHZ:-0} == 1 ]]; then
  openssl genrsa -out "$d/jwt-key.pem" 2048 2>/dev/null
  python3 - "$d" <<'PY'
import base64, json, subprocess, sys, time
d = sys.argv[1]
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
modulus = subprocess.run(["openssl", "rsa", "-in", f"{d}/jwt-key.pem", "-noout", "-modulus"],
                         capture_output=True, text=True, check=True).stdout
n = bytes.fromhex(modulus.strip().split("=", 1)[1])
jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "n": b64(n),
                  "e": b64((65537).to_bytes(3, "big"))}]}
header = b64(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())
claims = b64(json.dumps({"iss": "https://bench.test", "sub": "client", "aud": "b",
                         "group": "bench", "exp": int(time.time()) + 86400}).encode())
signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/jwt-key.pem"],
                           input=f"{header}.{claims}".encode(), capture_output=True,
                           check=True).stdout
with open(f"{d}/jwks.json", "w") as f:
    f.write(json.dumps(jwks))
with open(f"{d}/jwt", "w") as f:
    f.write(f"{header}.{claims}.{b64(signature)}")
PY
  touch "$d/authz"
fi
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
