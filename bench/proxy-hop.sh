#!/usr/bin/env bash
# proxy-hop.sh - measure what one proxy hop (and one mTLS sidecar pair) costs on loopback.
#
# Topologies (client = load generator, origin = nginx returning a fixed 100-byte body):
#   direct : client -> origin                                   (physical baseline)
#   hop    : client -> P (plain HTTP) -> origin                 (one reverse-proxy hop)
#   pair   : client -> A (plain in) =mTLS=> B -> origin         (the sidecar pair pattern)
# For every proxy under test ("hop implementation") and topology it measures
#   (a) latency p50/p90/p99 at fixed request rates (oha, keep-alive, coordinated-omission corrected),
#   (b) max throughput with many connections (wrk),
#   (c) peak RSS (VmHWM) and CPU time of the proxy processes (from /proc).
# Hop implementations are pluggable: see README.md ("Hop contract") and --hops. An
# implementation that needs a process of its own besides the proxies (Weft's control plane,
# which gives the sidecars their configuration and certificates) names it with --setup.
# Everything binds to 127.0.0.1 only, every command is time-bounded, and only the
# processes this script started are ever signalled.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
BODY_BYTES=100
BODY="$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'w')"

# ---------------------------------------------------------------------------
# Built-in hop adapters (they follow the same contract as an external hop command).
# Invoked as:  proxy-hop.sh __hop nginx|haproxy   with the HOP_* environment set.
# They exec the proxy in the foreground so that the PID the harness holds is the proxy.
# ---------------------------------------------------------------------------
builtin_hop_nginx() {
  local w="$HOP_WORKDIR" listen_extra="" upstream_scheme="http" proxy_tls="" user_line=""
  mkdir -p "$w/tmp"
  [[ $EUID -eq 0 ]] && user_line="user root;"
  case "$HOP_ROLE" in
    plain) ;;
    inbound)
      listen_extra=" ssl"
      proxy_tls="
      ssl_certificate $HOP_CERT;
      ssl_certificate_key $HOP_KEY;
      ssl_client_certificate $HOP_CA;
      ssl_verify_client on;
      ssl_verify_depth 2;
      ssl_protocols TLSv1.3;
      ssl_session_cache shared:in:1m;"
      ;;
    outbound)
      upstream_scheme="https"
      proxy_tls="
        proxy_ssl_certificate $HOP_CERT;
        proxy_ssl_certificate_key $HOP_KEY;
        proxy_ssl_trusted_certificate $HOP_CA;
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_name $HOP_SNI;
        proxy_ssl_server_name on;
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_session_reuse on;"
      ;;
    *) echo "nginx adapter: unknown HOP_ROLE=$HOP_ROLE" >&2; exit 2 ;;
  esac
  local server_tls="" location_tls=""
  if [[ $HOP_ROLE == inbound ]]; then server_tls="$proxy_tls"; else location_tls="$proxy_tls"; fi
  cat > "$w/nginx.conf" <<EOF
$user_line
worker_processes ${HOP_WORKERS:-1};
pid $w/nginx.pid;
error_log $w/error.log warn;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $w/tmp/body;
  proxy_temp_path $w/tmp/proxy;
  fastcgi_temp_path $w/tmp/fastcgi;
  uwsgi_temp_path $w/tmp/uwsgi;
  scgi_temp_path $w/tmp/scgi;
  upstream next {
    server $HOP_UPSTREAM;
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }
  server {
    listen $HOP_LISTEN$listen_extra;
    $server_tls
    location / {
      proxy_pass $upstream_scheme://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      $location_tls
    }
  }
}
EOF
  exec nginx -p "$w" -c "$w/nginx.conf"
}

builtin_hop_haproxy() {
  local w="$HOP_WORKDIR" bind_tls="" server_tls=""
  mkdir -p "$w"
  case "$HOP_ROLE" in
    plain) ;;
    inbound)
      cat "$HOP_CERT" "$HOP_KEY" > "$w/self.pem"
      bind_tls=" ssl crt $w/self.pem ca-file $HOP_CA verify required ssl-min-ver TLSv1.3 alpn http/1.1"
      ;;
    outbound)
      cat "$HOP_CERT" "$HOP_KEY" > "$w/self.pem"
      server_tls=" ssl crt $w/self.pem ca-file $HOP_CA verify required verifyhost $HOP_SNI sni str($HOP_SNI) ssl-min-ver TLSv1.3 alpn http/1.1"
      ;;
    *) echo "haproxy adapter: unknown HOP_ROLE=$HOP_ROLE" >&2; exit 2 ;;
  esac
  cat > "$w/haproxy.cfg" <<EOF
global
  nbthread ${HOP_WORKERS:-1}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  http-reuse always
frontend in
  bind $HOP_LISTEN$bind_tls
  default_backend next
backend next
  server s1 $HOP_UPSTREAM$server_tls
EOF
  exec haproxy -db -f "$w/haproxy.cfg"
}

# The origin server (not pluggable): nginx, one worker, fixed 100-byte body, keep-alive forever.
builtin_origin() {
  local w="$1" listen="$2" user_line=""
  mkdir -p "$w/tmp"
  [[ $EUID -eq 0 ]] && user_line="user root;"
  cat > "$w/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $w/nginx.pid;
error_log $w/error.log warn;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $w/tmp/body;
  proxy_temp_path $w/tmp/proxy;
  fastcgi_temp_path $w/tmp/fastcgi;
  uwsgi_temp_path $w/tmp/uwsgi;
  scgi_temp_path $w/tmp/scgi;
  default_type text/plain;
  server {
    listen $listen;
    location / { return 200 "$BODY"; }
  }
}
EOF
  exec nginx -p "$w" -c "$w/nginx.conf"
}

if [[ ${1:-} == __hop ]]; then
  case "${2:-}" in
    nginx) builtin_hop_nginx ;;
    haproxy) builtin_hop_haproxy ;;
    *) echo "unknown built-in hop: ${2:-}" >&2; exit 2 ;;
  esac
fi
if [[ ${1:-} == __origin ]]; then builtin_origin "$2" "$3"; fi

# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------
usage() {
  cat <<'EOF'
Usage: proxy-hop.sh [options]

  --hops LIST          comma list of hop implementations; each is a built-in name
                       (nginx, haproxy) or NAME=COMMAND (a shell command that follows
                       the hop contract in README.md). Default: nginx,haproxy
  --topologies LIST    direct,hop,pair (default: all three)
  --rates LIST         fixed request rates for the latency test (default: 500,2000)
  --conns N            keep-alive connections for the fixed-rate test (default: 8)
  --tput-conns N       connections for the max-throughput test (default: 32)
  --duration S         seconds per measured run (default: 10)
  --warmup S           seconds of discarded load before each fixed-rate run (default: 2)
  --repeats N          repeats; the table shows medians (default: 3)
  --loadgen-cpus LIST  taskset CPU list for the load generator (default: 0; "none" = no pinning)
  --sut-cpus LIST      taskset CPU list for origin + proxies (default: 1; "none" = no pinning)
  --workers N          HOP_WORKERS passed to every proxy (default: 1)
  --port-base N        first of the loopback ports used (default: 28100; uses 8 ports)
  --max-load X         start only when the 1-min load average is below X (default: 0.7)
  --max-foreign PCT    before each run, the machine's CPU use by others (sampled 1 s while
                       the benchmark is idle) must be below PCT percent (default: 10)
  --max-foreign-run PCT  after each run, the CPU others used during it (machine busy time minus
                       this benchmark's processes) must be below PCT percent of the machine,
                       else the run is repeated (default: 5)
  --retries N          repeats of a disturbed run; the least disturbed attempt is kept (default: 2)
  --load-wait S        give up waiting for a quiet machine after S seconds (default: 900)
  --max-runtime S      abort the whole run after S seconds (default: 5400)
  --no-negative        skip the mTLS negative checks
  --setup LIST         comma list of NAME=COMMAND: a process that hop implementation NAME
                       needs besides its proxies (e.g. a control plane). Started once before
                       NAME's first proxy, stopped at the end, not counted as proxy CPU or RSS.
                       It gets HOP_SHARED (a directory all of NAME's proxies also get), HOP_CA
                       and HOP_CA_KEY (the run's CA), and must create HOP_SHARED/ready within 60 s.
  --out DIR            where raw results, logs and summary.md go (default: a new temp dir)
  --quick              smoke test: --duration 3 --warmup 1 --repeats 1
  -h, --help           this text
EOF
}

HOPS="nginx,haproxy"
TOPOLOGIES="direct,hop,pair"
RATES="500,2000"
CONNS=8
TPUT_CONNS=32
DURATION=10
WARMUP=2
REPEATS=3
LOADGEN_CPUS=0
SUT_CPUS=1
WORKERS=1
PORT_BASE=28100
MAX_LOAD=0.7
MAX_FOREIGN=10
MAX_FOREIGN_RUN=5
RETRIES=2
LOAD_WAIT=900
MAX_RUNTIME=5400
NEGATIVE=1
SETUPS=""
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hops) HOPS="$2"; shift 2 ;;
    --topologies) TOPOLOGIES="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --conns) CONNS="$2"; shift 2 ;;
    --tput-conns) TPUT_CONNS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --repeats) REPEATS="$2"; shift 2 ;;
    --loadgen-cpus) LOADGEN_CPUS="$2"; shift 2 ;;
    --sut-cpus) SUT_CPUS="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --port-base) PORT_BASE="$2"; shift 2 ;;
    --max-load) MAX_LOAD="$2"; shift 2 ;;
    --max-foreign) MAX_FOREIGN="$2"; shift 2 ;;
    --max-foreign-run) MAX_FOREIGN_RUN="$2"; shift 2 ;;
    --retries) RETRIES="$2"; shift 2 ;;
    --load-wait) LOAD_WAIT="$2"; shift 2 ;;
    --max-runtime) MAX_RUNTIME="$2"; shift 2 ;;
    --no-negative) NEGATIVE=0; shift ;;
    --setup) SETUPS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --quick) DURATION=3; WARMUP=1; REPEATS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for tool in nginx haproxy wrk oha openssl curl taskset timeout python3 ps /usr/bin/time; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    [[ $tool == haproxy && $HOPS != *haproxy* ]] && continue
    echo "missing tool: $tool (see README.md, 'Install')" >&2; exit 2
  fi
done

if [[ -z $OUT ]]; then OUT="$(mktemp -d "${TMPDIR:-/tmp}/proxy-hop.XXXXXX")"; fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RAW="$OUT/raw.tsv"
LOG="$OUT/run.log"
START_TS=$(date +%s)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }

# taskset prefixes (plain arrays, so that "&" and "timeout" see a real command and $! is the proxy itself)
PIN_SUT=(); PIN_LG=()
[[ $SUT_CPUS != none && -n $SUT_CPUS ]] && PIN_SUT=(taskset -c "$SUT_CPUS")
[[ $LOADGEN_CPUS != none && -n $LOADGEN_CPUS ]] && PIN_LG=(taskset -c "$LOADGEN_CPUS")

# ---------------------------------------------------------------------------
# Process bookkeeping: only PIDs started here are ever signalled.
# ---------------------------------------------------------------------------
STARTED_PIDS=()

descendants() { # all descendant PIDs of $1 (not including $1)
  local p kids
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
  for p in $kids; do echo "$p"; descendants "$p"; done
}

tree() { echo "$1"; descendants "$1"; }

stop_pid() { # stop a PID we started, and its descendants
  local pid="$1" all p i
  [[ -d /proc/$pid ]] || return 0
  all="$(tree "$pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do
    [[ -d /proc/$pid ]] || break
    sleep 0.1
  done
  for p in $all; do
    [[ -d /proc/$p ]] && kill -KILL "$p" 2>/dev/null || true
  done
  wait "$pid" 2>/dev/null || true
}

stop_all() {
  local p
  for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done
  STARTED_PIDS=()
}

cleanup() { stop_all; }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

check_runtime() {
  if (( $(date +%s) - START_TS > MAX_RUNTIME )); then
    log "max runtime ${MAX_RUNTIME}s exceeded, aborting"; exit 3
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait until 127.0.0.1:$1 accepts connections (max $2 s); $3 = pid that must stay alive
  local port="$1" max="$2" pid="$3" i
  for i in $(seq 1 $((max * 20))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    [[ -d /proc/$pid ]] || return 1
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------------------
# Throwaway CA and identities (ECDSA P-256, like Istio/Linkerd workload certs)
# ---------------------------------------------------------------------------
make_certs() {
  local d="$1"; mkdir -p "$d"
  (
    cd "$d"
    gen_ca() { # name
      openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.crt" -days 2 -subj "/O=weft-bench/CN=$1" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    }
    gen_leaf() { # name dns spiffe-sa ca
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "/O=weft-bench/CN=$2" 2>/dev/null
      printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:%s,URI:spiffe://weft.test/ns/bench/sa/%s\n' "$2" "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$4.crt" -CAkey "$4.key" -CAcreateserial \
        -days 2 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    gen_ca ca
    gen_ca rogue-ca
    gen_leaf a a.weft.test a ca                 # client-side sidecar identity
    gen_leaf b b.weft.test b ca                 # server-side sidecar identity
    gen_leaf wrong-name evil.weft.test evil ca  # right CA, wrong identity
    gen_leaf rogue-b b.weft.test b rogue-ca     # right name, wrong CA
    gen_leaf rogue-a a.weft.test a rogue-ca
    chmod 600 ./*.key
  )
}

# ---------------------------------------------------------------------------
# Starting the origin and hops
# ---------------------------------------------------------------------------
P_ORIGIN=$PORT_BASE
P_IN=$((PORT_BASE + 1))      # client-facing port of the single hop / proxy A
P_B=$((PORT_BASE + 2))       # mTLS port of proxy B
P_NEG=$((PORT_BASE + 3))     # port of rogue B instances during negative checks

hop_cmd() { # NAME -> command line
  local spec="$1"
  case "$spec" in
    nginx|haproxy) printf 'bash %q __hop %q' "$SELF" "$spec" ;;
    *=*) printf '%s' "${spec#*=}" ;;
    *) echo "unknown hop '$spec' (use nginx, haproxy or NAME=COMMAND)" >&2; return 2 ;;
  esac
}
hop_name() { local spec="$1"; echo "${spec%%=*}"; }
shared_dir() { echo "$OUT/work/$(hop_name "$1")-shared"; }

# --setup: the processes an implementation needs besides its proxies, one per implementation.
start_setup() { # spec
  local name setup cmd d pid i
  name="$(hop_name "$1")"
  IFS=',' read -r -a setup <<< "$SETUPS"
  for cmd in "${setup[@]}"; do
    [[ ${cmd%%=*} == "$name" ]] || continue
    d="$(shared_dir "$1")"
    rm -rf "$d"; mkdir -p "$d"
    HOP_SHARED="$d" HOP_CA="$C/ca.crt" HOP_CA_KEY="$C/ca.key" \
      "${PIN_SUT[@]}" bash -c "exec ${cmd#*=}" >"$d/setup.log" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    for i in $(seq 1 1200); do
      [[ -e $d/ready ]] && { log "setup for $name is ready"; return 0; }
      [[ -d /proc/$pid ]] || break
      sleep 0.05
    done
    log "setup for $name did not become ready; its output:"; tail -n 20 "$d/setup.log" >&2
    exit 1
  done
}

ORIGIN_PID=""
start_origin() {
  local w="$OUT/work/origin"
  rm -rf "$w"; mkdir -p "$w"
  "${PIN_SUT[@]}" bash "$SELF" __origin "$w" "127.0.0.1:$P_ORIGIN" >"$w/stdout.log" 2>&1 &
  ORIGIN_PID=$!
  STARTED_PIDS+=("$ORIGIN_PID")
  wait_port "$P_ORIGIN" 15 "$ORIGIN_PID" || { log "origin failed to start:"; cat "$w/stdout.log" "$w/error.log" >&2 2>/dev/null; exit 1; }
}

LAST_PID=""
start_hop() { # spec label role listen_port upstream_port cert key ca sni peer_id
  local spec="$1" label="$2" role="$3" lport="$4" uport="$5" cert="${6:-}" key="${7:-}" ca="${8:-}" sni="${9:-}" peer="${10:-}"
  local w cmd
  w="$OUT/work/$(hop_name "$spec")-$label"
  cmd="$(hop_cmd "$spec")"
  rm -rf "$w"; mkdir -p "$w"
  port_free "$lport" || { log "port $lport is busy"; exit 1; }
  HOP_ROLE="$role" HOP_LISTEN="127.0.0.1:$lport" HOP_UPSTREAM="127.0.0.1:$uport" \
  HOP_WORKDIR="$w" HOP_WORKERS="$WORKERS" HOP_CERT="$cert" HOP_KEY="$key" HOP_CA="$ca" \
  HOP_SNI="$sni" HOP_PEER_ID="$peer" HOP_NAME="$label" HOP_SHARED="$(shared_dir "$spec")" \
    "${PIN_SUT[@]}" bash -c "exec $cmd" >"$w/stdout.log" 2>&1 &
  LAST_PID=$!
  STARTED_PIDS+=("$LAST_PID")
  if ! wait_port "$lport" 15 "$LAST_PID"; then
    log "hop $(hop_name "$spec") ($label, role $role) did not listen on 127.0.0.1:$lport; its output:"
    tail -n 20 "$w/stdout.log" "$w/error.log" >&2 2>/dev/null || true
    stop_pid "$LAST_PID"
    return 1
  fi
}

C="$OUT/certs"
SPIFFE_A="spiffe://weft.test/ns/bench/sa/a"
SPIFFE_B="spiffe://weft.test/ns/bench/sa/b"
HOP_PIDS=()
start_topology() { # spec topology -> sets URL, HOP_PIDS
  local spec="$1" topo="$2"
  HOP_PIDS=()
  case "$topo" in
    direct) URL="http://127.0.0.1:$P_ORIGIN/" ;;
    hop)
      start_hop "$spec" hop plain "$P_IN" "$P_ORIGIN" || return 1
      HOP_PIDS+=("$LAST_PID")
      URL="http://127.0.0.1:$P_IN/" ;;
    pair)
      start_hop "$spec" B inbound "$P_B" "$P_ORIGIN" "$C/b.crt" "$C/b.key" "$C/ca.crt" b.weft.test "$SPIFFE_A" || return 1
      HOP_PIDS+=("$LAST_PID")
      start_hop "$spec" A outbound "$P_IN" "$P_B" "$C/a.crt" "$C/a.key" "$C/ca.crt" b.weft.test "$SPIFFE_B" || return 1
      HOP_PIDS+=("$LAST_PID")
      URL="http://127.0.0.1:$P_IN/" ;;
    *) log "unknown topology $topo"; return 1 ;;
  esac
  local got
  got="$(curl -sS --max-time 5 "$URL" 2>&1 || true)"
  if [[ $got != "$BODY" ]]; then
    log "sanity request through $topo ($(hop_name "$spec")) did not return the origin body: ${got:0:200}"
    return 1
  fi
}

stop_topology() {
  local p keep=()
  for p in "${HOP_PIDS[@]}"; do stop_pid "$p"; done
  for p in "${STARTED_PIDS[@]}"; do [[ -d /proc/$p ]] && keep+=("$p"); done
  STARTED_PIDS=("${keep[@]}")
  HOP_PIDS=()
}

# mTLS negative checks: B must reject clients without a valid client cert, and
# A must reject a B whose certificate is from another CA or names another identity.
NEG_RESULT=""
# The checks of B test which clients B accepts, so curl does not check B's own certificate:
# a mesh sidecar's certificate names its SPIFFE ID only (Istio's and Linkerd's, and Weft's),
# not a DNS name such as b.weft.test.
negative_checks() { # spec -> sets NEG_RESULT to "pass" or "FAIL(...)"
  local spec="$1" fails=() got pid
  NEG_RESULT=""
  start_hop "$spec" B inbound "$P_B" "$P_ORIGIN" "$C/b.crt" "$C/b.key" "$C/ca.crt" b.weft.test "$SPIFFE_A" || { NEG_RESULT="FAIL(B did not start)"; return 0; }
  pid=$LAST_PID
  got="$(curl -s --max-time 5 --insecure --resolve "b.weft.test:$P_B:127.0.0.1" "https://b.weft.test:$P_B/" 2>/dev/null || true)"
  [[ $got == "$BODY" ]] && fails+=("B accepted a client without certificate")
  got="$(curl -s --max-time 5 --insecure --cert "$C/rogue-a.crt" --key "$C/rogue-a.key" --resolve "b.weft.test:$P_B:127.0.0.1" "https://b.weft.test:$P_B/" 2>/dev/null || true)"
  [[ $got == "$BODY" ]] && fails+=("B accepted a client certificate from another CA")
  got="$(curl -s --max-time 5 --insecure --cert "$C/a.crt" --key "$C/a.key" --resolve "b.weft.test:$P_B:127.0.0.1" "https://b.weft.test:$P_B/" 2>/dev/null || true)"
  [[ $got != "$BODY" ]] && fails+=("B rejected a valid client certificate")
  stop_pid "$pid"
  local bad
  for bad in rogue-b wrong-name; do
    start_hop "$spec" "neg-$bad" inbound "$P_NEG" "$P_ORIGIN" "$C/$bad.crt" "$C/$bad.key" "$C/ca.crt" b.weft.test "$SPIFFE_A" || { fails+=("rogue B did not start"); continue; }
    local bpid=$LAST_PID
    start_hop "$spec" "neg-A-$bad" outbound "$P_IN" "$P_NEG" "$C/a.crt" "$C/a.key" "$C/ca.crt" b.weft.test "$SPIFFE_B" || { stop_pid "$bpid"; fails+=("A did not start"); continue; }
    local apid=$LAST_PID
    got="$(curl -s --max-time 5 "http://127.0.0.1:$P_IN/" 2>/dev/null || true)"
    [[ $got == "$BODY" ]] && fails+=("A accepted a server certificate ($bad)")
    stop_pid "$apid"; stop_pid "$bpid"
  done
  local keep=() p
  for p in "${STARTED_PIDS[@]}"; do [[ -d /proc/$p ]] && keep+=("$p"); done
  STARTED_PIDS=("${keep[@]}")
  if [[ ${#fails[@]} -eq 0 ]]; then NEG_RESULT=pass; else NEG_RESULT="FAIL($(IFS=';'; echo "${fails[*]}"))"; fi
}

# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------
cpu_ticks() { # sum of utime+stime (clock ticks) over the trees of the given PIDs
  local total=0 root p t
  for root in "$@"; do
    for p in $(tree "$root"); do
      t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)
      total=$((total + t))
    done
  done
  echo "$total"
}

rss_hwm() { # "sum max": VmHWM (KiB) summed over each instance's process tree; sum and max over instances
  local sum=0 max=0 root p v inst
  for root in "$@"; do
    inst=0
    for p in $(tree "$root"); do
      v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      inst=$((inst + ${v:-0}))
    done
    sum=$((sum + inst)); (( inst > max )) && max=$inst
  done
  echo "$sum $max"
}

loadavg1() { cut -d' ' -f1 /proc/loadavg; }

cpu_busy_pct() { # whole-machine CPU busy % over a 1 s sample
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); d=y[2]-x[2]; if (d<=0) d=1; printf "%.1f", 100*(y[1]-x[1])/d}'
}

wait_quiet_start() {
  local waited=0 l
  while :; do
    l=$(loadavg1)
    if awk -v l="$l" -v m="$MAX_LOAD" 'BEGIN{exit !(l < m)}'; then log "load average $l < $MAX_LOAD, starting"; return 0; fi
    if (( waited >= LOAD_WAIT )); then log "load average still $l after ${LOAD_WAIT}s; giving up"; exit 4; fi
    (( waited % 60 == 0 )) && log "waiting for 1-min load average < $MAX_LOAD (now $l)"
    sleep 10; waited=$((waited + 10))
  done
}

FOREIGN=""
wait_quiet_run() { # the benchmark is idle here, so CPU busy time is someone else's
  local waited=0
  while :; do
    FOREIGN=$(cpu_busy_pct)
    if awk -v f="$FOREIGN" -v m="$MAX_FOREIGN" 'BEGIN{exit !(f < m)}'; then return 0; fi
    if (( waited >= LOAD_WAIT )); then log "machine still busy ($FOREIGN%) after ${LOAD_WAIT}s; giving up"; exit 4; fi
    (( waited % 30 == 0 )) && log "other processes use ${FOREIGN}% CPU; waiting"
    sleep 5; waited=$((waited + 6))
    check_runtime
  done
}

emit() { # one raw row
  printf '%s\n' "$(IFS=$'\t'; echo "$*")"
}

# user+nice+system+steal; irq/softirq time is left out because loopback packet processing of this
# benchmark's own traffic can be accounted there rather than to its processes.
machine_busy_ticks() { awk '/^cpu /{print $2+$3+$4+$9}' /proc/stat; }
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

# A measurement window: CPU used on the whole machine minus CPU used by the processes of this
# benchmark (origin, proxies, load generator) = CPU used by someone else while we measured.
window_begin() {
  W_T0=$(date +%s.%N); W_BUSY0=$(machine_busy_ticks)
  W_PROXY0=$(cpu_ticks "${HOP_PIDS[@]}"); W_ORIGIN0=$(cpu_ticks "$ORIGIN_PID")
}
window_end() { # $1 = file written by /usr/bin/time -f '%U %S' for the load generator
  local t1 busy1 proxy1 origin1 lg
  busy1=$(machine_busy_ticks); t1=$(date +%s.%N)
  proxy1=$(cpu_ticks "${HOP_PIDS[@]}"); origin1=$(cpu_ticks "$ORIGIN_PID")
  lg=$(awk 'NF>=2 && $1 ~ /^[0-9.]+$/ {u=$1; s=$2} END{printf "%.2f", u+s}' "$1" 2>/dev/null || echo 0)
  W_PROXY_S=$(awk -v t=$((proxy1 - W_PROXY0)) -v hz="$HZ" 'BEGIN{printf "%.2f", t/hz}')
  W_FOREIGN=$(awk -v b=$((busy1 - W_BUSY0)) -v p=$((proxy1 - W_PROXY0)) -v o=$((origin1 - W_ORIGIN0)) \
    -v lg="${lg:-0}" -v hz="$HZ" -v n="$NCPU" -v t0="$W_T0" -v t1="$t1" \
    'BEGIN{f = (b - p - o - lg*hz) / (n * (t1 - t0) * hz) * 100; if (f < 0) f = 0; printf "%.1f", f}')
}

better() { awk -v a="$1" -v b="$2" 'BEGIN{exit !(a < b)}'; }

run_fixed() { # repeat hopname topo rate
  local rep="$1" hname="$2" topo="$3" rate="$4" f l1 attempt row best_row="" best_f=1000
  mkdir -p "$OUT/oha"
  for attempt in $(seq 1 $((RETRIES + 1))); do
    f="$OUT/oha/$hname-$topo-$rate-r$rep-a$attempt.json"
    wait_quiet_run
    l1=$(loadavg1)
    if (( WARMUP > 0 )); then
      timeout $((WARMUP + 20)) "${PIN_LG[@]}" oha --worker-threads 1 --no-tui --output-format quiet -w \
        -z "${WARMUP}s" -c "$CONNS" -q "$rate" "$URL" >/dev/null 2>&1 || true
    fi
    window_begin
    timeout $((DURATION + 30)) /usr/bin/time -f '%U %S' -o "$f.time" "${PIN_LG[@]}" oha --worker-threads 1 \
      --no-tui --output-format json -w --latency-correction -z "${DURATION}s" -c "$CONNS" -q "$rate" "$URL" \
      > "$f" 2>"$f.err" || true
    window_end "$f.time"
    row=$(python3 - "$f" "$rep" "$hname" "$topo" "$rate" "$W_PROXY_S" "$DURATION" "$l1" "$FOREIGN" "$W_FOREIGN" "$attempt" <<'PY'
import json, sys
f, rep, hop, topo, rate, cpu_s, dur, load1, foreign, foreign_run, attempt = sys.argv[1:]
tail = [cpu_s, dur, load1, foreign, foreign_run, attempt]
try:
    d = json.load(open(f))
except Exception:
    print("\t".join([rep, hop, topo, "fixed", rate] + ["nan"] * 7 + tail))
    sys.exit(0)
s = d.get("summary", {})
p = d.get("latencyPercentiles", {})
def us(v):
    return "nan" if v is None else "%.0f" % (float(v) * 1e6)
codes = d.get("statusCodeDistribution", {}) or {}
bad = sum(v for k, v in codes.items() if str(k) != "200")
# requests cut off by the end of the run are not errors of the system under test
errs = sum(v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k) + bad
rps = s.get("requestsPerSec") or 0
print("\t".join([rep, hop, topo, "fixed", rate, "%.1f" % rps, us(p.get("p50")), us(p.get("p90")),
                 us(p.get("p99")), us(p.get("p99.9")), us(s.get("slowest")), str(errs)] + tail))
PY
)
    if better "$W_FOREIGN" "$best_f"; then best_row="$row"; best_f="$W_FOREIGN"; fi
    if better "$W_FOREIGN" "$MAX_FOREIGN_RUN"; then break; fi
    log "  $hname/$topo @$rate rps: other processes took ${W_FOREIGN}% of the machine during the run (attempt $attempt)"
  done
  printf '%s\n' "$best_row" >> "$RAW"
}

run_tput() { # repeat hopname topo
  local rep="$1" hname="$2" topo="$3" f l1 attempt row best_row="" best_f=1000 rps errs
  mkdir -p "$OUT/wrk"
  for attempt in $(seq 1 $((RETRIES + 1))); do
    f="$OUT/wrk/$hname-$topo-r$rep-a$attempt.txt"
    wait_quiet_run
    l1=$(loadavg1)
    window_begin
    timeout $((DURATION + 30)) /usr/bin/time -f '%U %S' -o "$f.time" "${PIN_LG[@]}" wrk -t1 -c"$TPUT_CONNS" \
      -d"${DURATION}s" --latency "$URL" > "$f" 2>&1 || true
    window_end "$f.time"
    rps=$(awk '/^Requests\/sec:/{print $2}' "$f"); rps=${rps:-nan}
    errs=$(awk '/Non-2xx or 3xx responses:/{n+=$NF} /Socket errors:/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' "$f")
    row=$(emit "$rep" "$hname" "$topo" tput "$TPUT_CONNS" "$rps" nan nan nan nan nan "$errs" \
      "$W_PROXY_S" "$DURATION" "$l1" "$FOREIGN" "$W_FOREIGN" "$attempt")
    if better "$W_FOREIGN" "$best_f"; then best_row="$row"; best_f="$W_FOREIGN"; fi
    if better "$W_FOREIGN" "$MAX_FOREIGN_RUN"; then break; fi
    log "  $hname/$topo throughput: other processes took ${W_FOREIGN}% of the machine during the run (attempt $attempt)"
  done
  printf '%s\n' "$best_row" >> "$RAW"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
IFS=',' read -r -a HOP_LIST <<< "$HOPS"
IFS=',' read -r -a TOPO_LIST <<< "$TOPOLOGIES"
IFS=',' read -r -a RATE_LIST <<< "$RATES"

for i in 0 1 2 3; do port_free $((PORT_BASE + i)) || { echo "port $((PORT_BASE + i)) is in use; pick another --port-base" >&2; exit 2; }; done

{
  echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel=$(uname -r)"
  echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo) x $(nproc)"
  echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  command -v haproxy >/dev/null && echo "haproxy=$(haproxy -v 2>/dev/null | awk 'NR==1{print $3}')"
  echo "openssl=$(openssl version | awk '{print $2}')"
  echo "oha=$(oha --version | awk '{print $2}')"
  echo "wrk=$(wrk -v 2>&1 | awk 'NR==1{print $2}')"
  echo "hops=$HOPS"; echo "topologies=$TOPOLOGIES"; echo "rates=$RATES"; echo "conns=$CONNS"
  echo "tput_conns=$TPUT_CONNS"; echo "duration=${DURATION}s"; echo "warmup=${WARMUP}s"; echo "repeats=$REPEATS"
  echo "loadgen_cpus=$LOADGEN_CPUS"; echo "sut_cpus=$SUT_CPUS"; echo "workers=$WORKERS"
  echo "max_foreign_run=$MAX_FOREIGN_RUN"; echo "retries=$RETRIES"
} > "$OUT/conditions.txt"

printf 'repeat\thop\ttopology\ttest\ttarget\trps\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\terrors\tproxy_cpu_s\tduration_s\tload1\tforeign_before_pct\tforeign_during_pct\tattempts\n' > "$RAW"
printf 'hop\ttopology\trepeat\trss_hwm_kib_sum\trss_hwm_kib_max_instance\n' > "$OUT/rss.tsv"
: > "$OUT/mtls-checks.tsv"
: > "$OUT/skipped.tsv"

log "results in $OUT"
make_certs "$C"
wait_quiet_start
echo "load1_at_start=$(loadavg1)" >> "$OUT/conditions.txt"
start_origin

# The list of (hop, topology) cells; "direct" does not depend on the hop, so it runs once.
CELLS=()
for t in "${TOPO_LIST[@]}"; do
  if [[ $t == direct ]]; then CELLS+=("-|direct"); continue; fi
  for h in "${HOP_LIST[@]}"; do CELLS+=("$h|$t"); done
done

for h in "${HOP_LIST[@]}"; do start_setup "$h"; done

if (( NEGATIVE )) && [[ ,$TOPOLOGIES, == *,pair,* ]]; then
  for h in "${HOP_LIST[@]}"; do
    negative_checks "$h"; r=$NEG_RESULT
    printf '%s\t%s\n' "$(hop_name "$h")" "$r" >> "$OUT/mtls-checks.tsv"
    log "mTLS negative checks for $(hop_name "$h"): $r"
  done
fi

for rep in $(seq 1 "$REPEATS"); do
  for cell in "${CELLS[@]}"; do
    check_runtime
    spec="${cell%%|*}"; topo="${cell#*|}"
    if [[ $spec == - ]]; then hname=none; else hname=$(hop_name "$spec"); fi
    log "repeat $rep/$REPEATS: $hname / $topo"
    if ! start_topology "$spec" "$topo"; then
      log "skipping $hname/$topo in repeat $rep"; printf '%s\t%s\t%s\n' "$hname" "$topo" "$rep" >> "$OUT/skipped.tsv"
      stop_topology; continue
    fi
    for rate in "${RATE_LIST[@]}"; do run_fixed "$rep" "$hname" "$topo" "$rate"; done
    run_tput "$rep" "$hname" "$topo"
    if (( ${#HOP_PIDS[@]} > 0 )); then
      read -r s m <<< "$(rss_hwm "${HOP_PIDS[@]}")"
      printf '%s\t%s\t%s\t%s\t%s\n' "$hname" "$topo" "$rep" "$s" "$m" >> "$OUT/rss.tsv"
    fi
    stop_topology
  done
done
echo "load1_at_end=$(loadavg1)" >> "$OUT/conditions.txt"

python3 - "$OUT" > "$OUT/summary.md" <<'PY'
import csv, statistics, sys, os
out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "raw.tsv")), delimiter="\t"))
rss = list(csv.DictReader(open(os.path.join(out, "rss.tsv")), delimiter="\t"))
checks = {}
for line in open(os.path.join(out, "mtls-checks.tsv")):
    if line.strip():
        k, v = line.rstrip("\n").split("\t", 1)
        checks[k] = v
cond = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "conditions.txt")) if "=" in l)

def med(vals):
    v = [float(x) for x in vals if x not in ("nan", "", None)]
    return statistics.median(v) if v else float("nan")

def sfmt(x):
    return "n/a" if x != x else "%+.0f" % x

def fmt(x, nd=0):
    if x != x:
        return "n/a"
    return ("%." + str(nd) + "f") % x

if not rows:
    print("No measurements were made. Skipped cells and mTLS checks:")
    for l in open(os.path.join(out, "skipped.tsv")):
        print("  skipped " + "/".join(l.split("\t")[:2]))
    for h, v in checks.items():
        print("  mTLS checks for %s: %s" % (h, v))
    sys.exit(0)

cells = []
for r in rows:
    k = (r["hop"], r["topology"])
    if k not in cells:
        cells.append(k)
rates = []
for r in rows:
    if r["test"] == "fixed" and r["target"] not in rates:
        rates.append(r["target"])

def sel(hop, topo, test, target=None):
    return [r for r in rows if r["hop"] == hop and r["topology"] == topo and r["test"] == test
            and (target is None or r["target"] == target)]

base = {}
for rate in rates:
    rs = sel("none", "direct", "fixed", rate)
    if rs:
        base[rate] = {q: med([r[q] for r in rs]) for q in ("p50_us", "p90_us", "p99_us")}

label = {"direct": "direct (no proxy)", "hop": "1 hop, plain HTTP", "pair": "2 hops, mTLS pair"}
print("Latency in microseconds, median over repeats; 'added' = that percentile minus the direct "
      "baseline at the same rate (for the pair it is the cost of both proxies together). "
      "A '*' marks a fixed-rate cell whose achieved rate was below 95% of the target.")
print()
hdr = ["proxy", "topology"]
for rate in rates:
    hdr += ["p50 @%s" % rate, "p90 @%s" % rate, "p99 @%s" % rate, "added p50/p99 @%s" % rate]
hdr += ["max rps (%s conns)" % (sel(*cells[0], "tput")[0]["target"] if sel(*cells[0], "tput") else "?"),
        "proxy CPU, vCPU per 1k rps @%s" % rates[-1], "peak RSS per proxy (MiB)", "errors", "mTLS checks"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for hop, topo in cells:
    line = [hop if hop != "none" else "-", label.get(topo, topo)]
    errs = 0
    for rate in rates:
        rs = sel(hop, topo, "fixed", rate)
        errs += sum(int(r["errors"]) for r in rs if r["errors"] not in ("nan", ""))
        p = {q: med([r[q] for r in rs]) for q in ("p50_us", "p90_us", "p99_us")}
        star = "*" if med([r["rps"] for r in rs]) < 0.95 * float(rate) else ""
        line += [fmt(p["p50_us"]) + star, fmt(p["p90_us"]) + star, fmt(p["p99_us"]) + star]
        b = base.get(rate, {})
        if topo == "direct":
            line.append("-")
        elif not b:
            line.append("n/a")
        else:
            line.append("%s / %s" % (sfmt(p["p50_us"] - b["p50_us"]), sfmt(p["p99_us"] - b["p99_us"])))
    ts = sel(hop, topo, "tput")
    errs += sum(int(r["errors"]) for r in ts if r["errors"] not in ("nan", ""))
    line.append(fmt(med([r["rps"] for r in ts])))
    if topo == "direct":
        line += ["-", "-"]
    else:
        rs = sel(hop, topo, "fixed", rates[-1])
        vcpu = med([float(r["proxy_cpu_s"]) / float(r["duration_s"]) / (float(r["target"]) / 1000.0)
                    / (2 if topo == "pair" else 1) for r in rs if r["proxy_cpu_s"] != "nan"])
        line.append(fmt(vcpu, 3) + (" each" if topo == "pair" else ""))
        m = med([int(r["rss_hwm_kib_max_instance"]) / 1024.0 for r in rss if r["hop"] == hop and r["topology"] == topo])
        line.append(fmt(m, 1))
    line.append(str(errs))
    line.append(checks.get(hop, "-") if topo == "pair" else "-")
    print("| " + " | ".join(line) + " |")
print()
fd = [float(r["foreign_during_pct"]) for r in rows if r["foreign_during_pct"] not in ("", "nan")]
lim = float(cond.get("max_foreign_run", "5"))
print("Machine load: 1-min load average at the start of each run %s to %s (it includes this benchmark's own "
      "previous run); CPU used by other processes during the measured runs: median %s%%, max %s%% of the "
      "machine; %d of %d runs were repeated because others used more than %s%%; %d kept runs still exceeded it." % (
          fmt(min(float(r["load1"]) for r in rows), 2), fmt(max(float(r["load1"]) for r in rows), 2),
          fmt(statistics.median(fd) if fd else float("nan"), 1), fmt(max(fd) if fd else float("nan"), 1),
          sum(1 for r in rows if r["attempts"] not in ("", "1")), len(rows), fmt(lim, 0),
          sum(1 for x in fd if x >= lim)))
skipped = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "skipped.tsv")) if l.strip()]
if skipped:
    print()
    print("NOT MEASURED (the proxy did not start or failed the sanity request; see run.log): " +
          ", ".join(sorted(set("%s/%s" % (h, t) for h, t, _ in skipped))))
for h, v in checks.items():
    if not any(r["hop"] == h for r in rows):
        print("mTLS checks for %s (no measurements): %s" % (h, v))
print()
print("Conditions: " + "; ".join("%s=%s" % kv for kv in cond.items()))
PY

log "done; summary:"
cat "$OUT/summary.md"
