#!/usr/bin/env bash
# The load bench, in one command (from anywhere in the repository):
#
#   bench/load/run.sh
#
# Builds the NativeAOT sidecar and the load generator, installs the npm proxies from the lockfile, starts every
# target on 127.0.0.1, runs every scenario against every target alternating (round 1 in one order, round 2 in the
# reverse order), measures start-up, idle RSS and binary size, and writes bench/load/results/latest.md (+ .jsonl).
#
# Everything binds and targets loopback only; every load run is capped in time and in requests.
# Knobs (environment): ROUNDS (2), DURATION (5 s measured per run), WARMUP (2 s), MAX_REQUESTS (500000 per run),
# SCENARIOS (space-separated subset), SKIP_BUILD=1 (reuse out/linux-x64/sidecar and the built generator),
# SKIP_NPM=1 (reuse bench/load/node_modules).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-2}"
MAX_REQUESTS="${MAX_REQUESTS:-500000}"
RESULTS="$HERE/results"
SIDECAR="$ROOT/out/linux-x64/sidecar"
LOAD="$ROOT/bench/Sidecar.Load/bin/Release/net10.0/Sidecar.Load"
# Node servers (echo, mcp-proxy, supergateway) get the repository's loopback preload: whatever host they ask for,
# they listen on 127.0.0.1 (supergateway has no host option; mcp-proxy defaults to "::").
LOOPBACK_PRELOAD="$ROOT/tests/fixtures/mcp-servers/loopback.cjs"

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

START_TS=$(date +%s)
LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$RESULTS"

# ---------------------------------------------------------------- build
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "publishing the NativeAOT sidecar"
  dotnet publish src/Sidecar -c Release -r linux-x64 -o out/linux-x64 -nologo -v quiet >&2
  log "building the load generator"
  dotnet build bench/Sidecar.Load/Sidecar.Load.csproj -c Release -nologo -v quiet >&2
fi
if [[ "${SKIP_NPM:-0}" != 1 || ! -d "$HERE/node_modules" ]]; then
  log "npm ci (mcp-proxy, supergateway from the lockfile)"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# ---------------------------------------------------------------- targets
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

wait_port() { # port, seconds
  local i
  for ((i = 0; i < $2 * 50; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.02
  done
  log "nothing listens on 127.0.0.1:$1"; return 1
}

start() { # name, port, command...
  local name=$1 port=$2; shift 2
  NODE_OPTIONS="--require $LOOPBACK_PRELOAD" "$@" > "$RESULTS/$name.log" 2>&1 &
  PIDS+=("$!")
  declare -g "PID_${name//-/_}=$!"
  wait_port "$port" 30
}

log "starting targets"
rm -rf "$RESULTS/audit" # each Sidecar target writes its audit trail here (config: "audit"), verified after the run
start echo-http    9100 node "$HERE/echo-server/http.cjs" 9100
start sidecar-http  9101 "$SIDECAR" run --config "$HERE/config/sidecar-http.json"
start sidecar-stdio 9102 "$SIDECAR" run --config "$HERE/config/sidecar-stdio.json"
# Diagnostic: the same Sidecar with the .NET thread pool's spin-before-sleep back at the runtime's default (70).
# Sidecar ships with it off (0: idle workers sleep at once); this shows what spinning costs and buys.
DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=70 start sidecar-spin 9106 "$SIDECAR" run --config "$HERE/config/sidecar-spin.json"
start sidecar-trip  9103 "$SIDECAR" run --config "$HERE/config/sidecar-trip.json"
start mcp-proxy     9104 node "$HERE/node_modules/mcp-proxy/dist/bin/mcp-proxy.mjs" --host 127.0.0.1 --port 9104 \
                         --server stream --sessionIdleTimeout 300000 -- node "$HERE/echo-server/stdio.cjs"
start supergateway  9105 node "$HERE/node_modules/supergateway/dist/index.js" --stdio "node $HERE/echo-server/stdio.cjs" \
                         --outputTransport streamableHttp --stateful --sessionTimeout 300000 --port 9105 --logLevel none

# Every listener of the bench must be on loopback.
if command -v ss > /dev/null; then
  ss -ltnpH '( sport >= :9100 and sport <= :9106 )' > "$RESULTS/listeners.txt" || true
  if awk '{print $4}' "$RESULTS/listeners.txt" | grep -v -E '^(127\.0\.0\.1|\[::1\]):' > /dev/null; then
    log "a target listens beyond loopback:"; cat "$RESULTS/listeners.txt" >&2; exit 1
  fi
  log "listeners (all loopback): $(awk '{print $4}' "$RESULTS/listeners.txt" | sort | tr '\n' ' ')"
fi

# target name -> URL and the PIDs whose CPU counts (first = the gateway itself; the rest = its upstream)
declare -A URL=(
  [direct]=http://127.0.0.1:9100/mcp
  [sidecar-http]=http://127.0.0.1:9101/servers/echo/mcp
  [sidecar-stdio]=http://127.0.0.1:9102/servers/echo/mcp
  [sidecar-trip]=http://127.0.0.1:9103/servers/echo/mcp
  [sidecar-spin]=http://127.0.0.1:9106/servers/echo/mcp
  [mcp-proxy]=http://127.0.0.1:9104/mcp
  [supergateway]=http://127.0.0.1:9105/mcp
)
declare -A CPU_PIDS=(
  [direct]=$PID_echo_http
  [sidecar-http]=$PID_sidecar_http,$PID_echo_http
  [sidecar-stdio]=$PID_sidecar_stdio
  [sidecar-trip]=$PID_sidecar_trip,$PID_echo_http
  [sidecar-spin]=$PID_sidecar_spin,$PID_echo_http
  [mcp-proxy]=$PID_mcp_proxy
  [supergateway]=$PID_supergateway
)

# scenario -> generator arguments; and which targets run it
declare -A ARGS=(
  [r500-s1]="--rate 500 --sessions 1"
  [r2000-s64]="--rate 2000 --sessions 64"
  [sat-c1]="--concurrency 1 --sessions 1"
  [sat-c64]="--concurrency 64 --sessions 64"
  [churn-c8]="--churn --concurrency 8 --calls-per-session 10"
  [sse-r500-s16]="--sse --rate 500 --sessions 16"
)
SCENARIOS="${SCENARIOS:-r500-s1 r2000-s64 sat-c1 sat-c64 churn-c8 sse-r500-s16}"
TARGETS="direct sidecar-http sidecar-stdio mcp-proxy supergateway"
targets_for() { # the tripping-limits variant runs r500-s1 and sat-c64, the no-spin diagnostic those and r2000-s64
  case "$1" in r500-s1|sat-c64) echo "$TARGETS sidecar-trip sidecar-spin" ;; r2000-s64) echo "$TARGETS sidecar-spin" ;; *) echo "$TARGETS" ;; esac
}

JSONL="$RESULTS/latest.jsonl"
: > "$JSONL"
for ((round = 1; round <= ROUNDS; round++)); do
  for scenario in $SCENARIOS; do
    order=$(targets_for "$scenario")
    if ((round % 2 == 0)); then order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for target in $order; do
      log "round $round  $scenario  $target"
      # shellcheck disable=SC2086
      line=$(timeout $(( ${WARMUP%.*} + ${DURATION%.*} + 60 )) "$LOAD" --url "${URL[$target]}" ${ARGS[$scenario]} \
               --duration "$DURATION" --warmup "$WARMUP" --max-requests "$MAX_REQUESTS" \
               --pids "${CPU_PIDS[$target]}" --target "$target" --scenario "$scenario" || true)
      if [[ -z "$line" ]]; then line="{\"target\":\"$target\",\"scenario\":\"$scenario\",\"error\":\"no result\"}"; fi
      echo "${line%\}},\"round\":$round}" >> "$JSONL"
    done
  done
done

# ---------------------------------------------------------------- start-up, idle RSS, binary size
log "start-up to ready (50-rule policy and a 1-rule policy)"
"$LOAD" startup --exe "$SIDECAR" --ready http://127.0.0.1:9110/readyz --trials 5 --idle 2 \
  -- run --config "$HERE/config/sidecar-startup.json" > "$RESULTS/startup.json" || true
"$LOAD" startup --exe "$SIDECAR" --ready http://127.0.0.1:9110/readyz --trials 5 --idle 2 \
  -- run --config "$HERE/config/sidecar-startup-minimal.json" > "$RESULTS/startup-minimal.json" || true

# ---------------------------------------------------------------- audit trails
# Stop the Sidecar targets with SIGTERM (they drain their audit queue), then verify each trail's hash chain and count
# its events: nothing may be lost under load.
for name in sidecar-http sidecar-stdio sidecar-trip sidecar-spin; do
  pid_var="PID_${name//-/_}"
  kill -TERM "${!pid_var}" 2>/dev/null || true
done
sleep 3
: > "$RESULTS/audit.txt"
for name in sidecar-http sidecar-stdio sidecar-trip sidecar-spin; do
  files=("$RESULTS/audit/$name"*.jsonl)
  verdict=$("$SIDECAR" audit verify "${files[@]}" 2>&1 | tail -1)
  calls=$(cat "${files[@]}" | grep -c '"type":"tool_call"' || true)
  gaps=$(cat "${files[@]}" | grep -c '"type":"audit_gap"' || true)
  echo "| $name | $calls | $gaps | $verdict |" >> "$RESULTS/audit.txt"
done
log "audit trails: $(tr '\n' ' ' < "$RESULTS/audit.txt")"

# ---------------------------------------------------------------- report
{
  echo "{"
  echo "\"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\","
  echo "\"cores\": $(nproc),"
  echo "\"memGiB\": $(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo),"
  echo "\"kernel\": \"$(uname -r)\","
  echo "\"dotnet\": \"$(dotnet --version)\","
  echo "\"node\": \"$(node --version)\","
  echo "\"loadavgStart\": \"$LOADAVG_START\","
  echo "\"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
  echo "\"commit\": \"$(git rev-parse --short HEAD)\","
  echo "\"rounds\": $ROUNDS, \"duration\": $DURATION, \"warmup\": $WARMUP,"
  echo "\"elapsedS\": $(( $(date +%s) - START_TS ))"
  echo "}"
} > "$RESULTS/machine.json"
node "$HERE/report.mjs" "$RESULTS" > "$RESULTS/latest.md"
log "wrote $RESULTS/latest.md in $(( $(date +%s) - START_TS )) s"
