#!/usr/bin/env bash
# Resource figures of `weft demo`: RSS of its sidecars, control plane and gateway at idle and
# under load, and the per-page latency through the mesh beside the same services wired to
# each other directly, in one run. Needs oha. Usage:
#   cargo build --release && bench/demo-resources.sh [PORT_BASE]
set -euo pipefail
WEFT="${WEFT_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/weft}"
B=${1:-18080}
D=$((B + 60))   # the directly wired services
work=$(mktemp -d)
"$WEFT" demo --dir "$work/mesh" --port-base "$B" > "$work/demo.out" 2> "$work/demo.err" &
demo=$!
direct=()
cleanup() {
  kill -INT "$demo" 2>/dev/null || true
  for p in "${direct[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q "Light traffic" "$work/demo.out" 2>/dev/null && break; sleep 0.1; done
grep -q "Light traffic" "$work/demo.out" || { cat "$work/demo.err" >&2; exit 1; }

rss() { local total=0 r; for p in "$@"; do r=$(awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0); total=$((total + ${r:-0})); done; echo $((total / 1024)); }
report() {
  local sidecars control gateway
  sidecars=$(pgrep -f "weft run --control 127.0.0.1:$((B + 1))" | tr '\n' ' ')
  control=$(pgrep -f "weft control --config-dir .* --xds-addr 127.0.0.1:$((B + 1))" | tr '\n' ' ')
  gateway=$(pgrep -f "weft gateway --control 127.0.0.1:$((B + 1))" | tr '\n' ' ')
  # shellcheck disable=SC2086
  echo "$1: sidecars (6) $(rss $sidecars) MiB, control plane $(rss $control) MiB, gateway $(rss $gateway) MiB"
}
sleep 5
report "RSS at idle (the demo's light traffic)"

"$WEFT" demo-app ratings --port "$D" & direct+=($!)
"$WEFT" demo-app details --port $((D + 1)) & direct+=($!)
"$WEFT" demo-app reviews --version v3 --port $((D + 2)) --ratings-url "http://127.0.0.1:$D" & direct+=($!)
"$WEFT" demo-app productpage --port $((D + 3)) --details-url "http://127.0.0.1:$((D + 1))" \
  --reviews-url "http://127.0.0.1:$((D + 2))" & direct+=($!)
# Both paths call ratings: the mesh's reviews all go to v3 as well.
cat > "$work/mesh/reviews.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v3}}]
YAML
sleep 3
for round in 1 2 3; do
  for path in "mesh http://127.0.0.1:$B/productpage" "direct http://127.0.0.1:$((D + 3))/productpage"; do
    read -r name url <<< "$path"
    oha -z 10s -c 4 -q 100 --no-tui "$url" > "$work/oha.txt" 2>&1 &
    load=$!
    sleep 5
    if [[ $name == mesh && $round == 1 ]]; then report "RSS under 100 pages/s"; fi
    wait "$load"
    echo "$name, round $round: $(grep -E '^\s+(50.00|99.00)%' "$work/oha.txt" | awk '{printf "p%s %s %s  ", $1, $3, $4}') $(grep -E '^\s+\[200\]' "$work/oha.txt" | tr -s ' ')"
  done
done
