#!/usr/bin/env bash
# Writes scripts/sidecar-functions.txt: the functions a Weft sidecar runs, hottest first, by
# their symbol names in the binary `scripts/dist.sh` builds. `scripts/dist.sh` asks the linker
# to lay them out together at the start of the code, so that the pages of the binary a
# sidecar maps are mostly pages it uses (the kernel maps code 64 KiB around each page touched;
# with the sidecar's functions spread among the control plane's, the web console's and the
# command line's, a sidecar mapped three quarters of a 10 MiB binary).
#
# Run it again when `scripts/dist.sh` warns that the list is stale (a new Rust toolchain or
# new dependency versions rename the symbols). It runs one sidecar of each kind under
# callgrind (a plain hop, and a pair of sidecars with mTLS between them, configured by `weft
# control` through the benchmark's adapter, bench/weft-hop.sh), sends them requests, then
# stops them. Needs valgrind, openssl and curl; takes about five minutes.
#
#   scripts/sidecar-functions.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
for tool in valgrind openssl curl nm python3; do
  command -v "$tool" > /dev/null || { echo "sidecar-functions.sh: needs $tool" >&2; exit 1; }
done
bin="$root/$(scripts/dist.sh)"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # URL: waits until it answers (callgrind makes a sidecar start slowly)
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "sidecar-functions.sh: nothing answered at $1" >&2
  exit 1
}

origin=$(free_port) hop=$(free_port) a=$(free_port) b=$(free_port)
"$bin" demo-app details --port "$origin" & pids+=($!)
wait_http "http://127.0.0.1:$origin/details/1"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=weft-profile-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2> /dev/null
export HOP_SHARED="$work/shared" HOP_CA="$work/ca.pem" HOP_CA_KEY="$work/ca.key"
mkdir -p "$HOP_SHARED"
WEFT_BIN="$bin" bench/weft-setup.sh & pids+=($!)
for _ in $(seq 1 600); do [[ -e $HOP_SHARED/ready ]] && break; sleep 0.1; done
[[ -e $HOP_SHARED/ready ]] || { echo "sidecar-functions.sh: weft control did not start" >&2; exit 1; }

cat > "$work/callgrind" << EOF
#!/bin/sh
exec valgrind --quiet --tool=callgrind --demangle=no --callgrind-out-file=$work/profile.%p "$bin" "\$@"
EOF
chmod +x "$work/callgrind"
sidecars=()
start_sidecar() { # ROLE LISTEN-PORT UPSTREAM-PORT NAME
  HOP_ROLE=$1 HOP_LISTEN=127.0.0.1:$2 HOP_UPSTREAM=127.0.0.1:$3 HOP_NAME=$4 \
    WEFT_BIN="$work/callgrind" bench/weft-hop.sh 2> "$work/$4.log" &
  sidecars+=($!)
  pids+=($!)
}
start_sidecar plain "$hop" "$origin" hop
start_sidecar inbound "$b" "$origin" b
wait_http "http://127.0.0.1:$hop/details/1"
start_sidecar outbound "$a" "$b" a
wait_http "http://127.0.0.1:$a/details/1"

# Keep-alive requests (curl reuses its connection across a URL range), HTTP/2 from the
# client, a request with a body and one with no route.
for port in "$hop" "$a"; do
  curl -sSf -o /dev/null "http://127.0.0.1:$port/details/[1-300]"
  for i in $(seq 1 20); do
    curl -sSf -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$port/details/$i"
  done
  curl -s -o /dev/null -X POST --data 'a request body' "http://127.0.0.1:$port/details/1"
  curl -s -o /dev/null -H 'Host: nowhere.example' "http://127.0.0.1:$port/"
done

# SIGTERM: each sidecar drains and exits, and callgrind writes what it ran.
for pid in "${sidecars[@]}"; do kill -TERM "$pid"; done
for pid in "${sidecars[@]}"; do wait "$pid" || true; done

nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ {print $3}' > "$work/symbols"
python3 - "$work" > scripts/sidecar-functions.txt << 'PY'
import collections, glob, re, sys
work = sys.argv[1]
symbols = set(open(f"{work}/symbols").read().split())
cost = collections.Counter()
for path in glob.glob(f"{work}/profile.*"):
    names, function, after_call = {}, None, False
    for line in open(path):
        if line.startswith(("fn=", "cfn=")):
            match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if match.group(2):
                names[match.group(1)] = re.sub(r"'\d+$", "", match.group(2))
            if line.startswith("fn="):
                function = names.get(match.group(1))
                cost[function] += 0
        elif line.startswith("calls="):
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False  # a call's inclusive cost, not this function's own
            elif function is not None:
                fields = line.split()
                if len(fields) > 1:
                    cost[function] += int(fields[1])
for name, _ in sorted(cost.items(), key=lambda item: (-item[1], item[0])):
    if name in symbols:
        print(name)
PY
echo "scripts/sidecar-functions.txt: $(wc -l < scripts/sidecar-functions.txt) functions" >&2
