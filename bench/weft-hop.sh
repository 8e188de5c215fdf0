#!/usr/bin/env bash
# proxy-hop adapter for Weft's sidecar (the hop contract is in bench/README.md). Needs the
# control plane that bench/weft-setup.sh starts:
#   bench/proxy-hop.sh --hops 'nginx,haproxy,weft=bench/weft-hop.sh' --setup 'weft=bench/weft-setup.sh'
#
# Roles, as a mesh would deploy them:
#   inbound  (B): the sidecar of workload b, serving service b-<port>:80 on its inbound
#                 port, in front of the origin as its application. Its certificate comes
#                 from Weft's CA by CSR, except for the rogue Bs of the negative checks
#                 (HOP_NAME neg-*), which must present the harness's bad certificates and
#                 so load them as file-mounted certificates.
#   outbound (A): the sidecar of workload a; its local port HOP_LISTEN leads to service
#                 b-<upstream port>, over mTLS to whichever sidecar registered it, whose
#                 certificate must carry spiffe://weft.test/ns/bench/sa/b (learned from EDS).
#   plain       : a sidecar whose local port leads to the origin, declared as a mesh-external
#                 ServiceEntry (plaintext, no peer sidecar).
# Between A and B the sidecars speak whatever Weft speaks between sidecars (see README.md).
set -euo pipefail
WEFT="${WEFT_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/dist/weft}"
: "${HOP_SHARED:?run with --setup 'weft=bench/weft-setup.sh'}"
listen_port=${HOP_LISTEN##*:}
upstream_port=${HOP_UPSTREAM##*:}
common=(--control "$(cat "$HOP_SHARED/xds")" --namespace bench --trust-domain weft.test
  --concurrency "${HOP_WORKERS:-1}" --admin-port 0 --metrics-port 0 --log "${WEFT_HOP_LOG:-warn}")

# Waits until the control plane has loaded a ServiceEntry just written, so that the proxy's
# first configuration has it.
wait_for_registry() {
  for _ in $(seq 1 200); do
    curl -sf "http://$(cat "$HOP_SHARED/debug")/debug/registry" | grep -q "$1" && return 0
    sleep 0.05
  done
}

case "$HOP_ROLE" in
  plain)
    origin="origin-$upstream_port"
    cat > "$HOP_SHARED/config/$origin.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: $origin, namespace: bench}
spec:
  hosts: [$origin.bench.svc.cluster.local]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: $upstream_port}}]
YAML
    wait_for_registry "$origin"
    exec "$WEFT" proxy "${common[@]}" --name "hop-$listen_port" --service-account hop \
      --token-file "$HOP_SHARED/token-hop" --inbound-port 0 --outbound-port 0 \
      --upstream "$listen_port=$origin.bench.svc.cluster.local:80"
    ;;
  inbound)
    service="b-$listen_port"
    cat > "$HOP_SHARED/config/$service.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: $service, namespace: bench}
spec:
  hosts: [$service.bench.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector:
    labels: {app: $service}
YAML
    if [[ -e $HOP_SHARED/h2 ]]; then
      cat >> "$HOP_SHARED/config/$service.yaml" <<YAML
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: $service, namespace: bench}
spec:
  host: $service.bench.svc.cluster.local
  trafficPolicy:
    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
YAML
    fi
    if [[ -e $HOP_SHARED/authz ]]; then
      # A adds the token to every request (a route header); B verifies it, then walks 99
      # rules that read it and do not match (principal, claim) before the one that does.
      {
        cat <<YAML
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: $service, namespace: bench}
spec:
  selector: {matchLabels: {app: $service}}
  jwtRules:
  - issuer: https://bench.test
    audiences: [b]
    jwks: '$(cat "$HOP_SHARED/jwks.json")'
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: $service, namespace: bench}
spec:
  hosts: [$service.bench.svc.cluster.local]
  http:
  - headers: {request: {set: {authorization: "Bearer $(cat "$HOP_SHARED/jwt")"}}}
    route: [{destination: {host: $service.bench.svc.cluster.local}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: $service, namespace: bench}
spec:
  selector: {matchLabels: {app: $service}}
  rules:
YAML
        for i in $(seq 0 98); do
          echo "  - from: [{source: {requestPrincipals: [https://bench.test/user-$i]}}]"
          echo "    to: [{operation: {paths: ['/*']}}]"
          echo "    when: [{key: 'request.auth.claims[group]', values: [group-$i]}]"
        done
        echo "  - to: [{operation: {paths: ['/*'], methods: [GET, HEAD]}}]"
      } >> "$HOP_SHARED/config/$service.yaml"
    fi
    wait_for_registry "$service"
    identity=(--token-file "$HOP_SHARED/token-b")
    if [[ $HOP_NAME == neg-* ]]; then
      identity=(--cert-chain "$HOP_CERT" --key "$HOP_KEY" --root-cert "$HOP_CA")
    fi
    exec "$WEFT" proxy "${common[@]}" --name "$service" --service-account b \
      "${identity[@]}" --service "$service:80" --labels "app=$service" --app-port "$upstream_port" \
      --inbound-port "$listen_port" --outbound-port 0
    ;;
  outbound)
    exec "$WEFT" proxy "${common[@]}" --name "a-$listen_port" --service-account a \
      --token-file "$HOP_SHARED/token-a" --inbound-port 0 --outbound-port 0 \
      --upstream "$listen_port=b-$upstream_port.bench.svc.cluster.local:80"
    ;;
  *) echo "weft-hop.sh: unknown HOP_ROLE=$HOP_ROLE" >&2; exit 2 ;;
esac
