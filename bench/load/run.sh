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
# SCENARIOS (space-separated subset), SKIP_TARGETS (space-separated targets not to start or run, e.g. "sidecar-drop
# sidecar-durable" with a sidecar that does not know their audit settings yet), SKIP_BUILD=1 (reuse
# out/linux-x64/sidecar and the built generator), SKIP_NPM=1 (reuse bench/load/node_modules).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-2}"
MAX_REQUESTS="${MAX_REQUESTS:-500000}"
SKIP_TARGETS="${SKIP_TARGETS:-}"
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

skipped() { [[ " $SKIP_TARGETS " == *" $1 "* ]]; }

wait_port() { # port, seconds, pid (stop waiting if it exits)
  local i
  for ((i = 0; i < $2 * 50; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then return 1; fi
    sleep 0.02
  done
  log "nothing listens on 127.0.0.1:$1"; return 1
}

start() { # name, port, command...
  local name=$1 port=$2; shift 2
  if skipped "$name"; then log "not starting $name (SKIP_TARGETS)"; return 0; fi
  NODE_OPTIONS="--require $LOOPBACK_PRELOAD" "$@" > "$RESULTS/$name.log" 2>&1 &
  PIDS+=("$!")
  declare -g "PID_${name//-/_}=$!"
  if ! wait_port "$port" 30 "$!"; then
    log "$name did not start; the end of $RESULTS/$name.log:"
    tail -5 "$RESULTS/$name.log" >&2
    log "(a Sidecar config setting this build does not know yet? SKIP_TARGETS=\"$name ...\" runs without it)"
    exit 1
  fi
}

log "starting targets"
rm -rf "$RESULTS/audit" # each Sidecar target writes its audit trail here (config: "audit"), verified after the run
start echo-http    9100 node "$HERE/echo-server/http.cjs" 9100
start sidecar-http  9101 "$SIDECAR" run --config "$HERE/config/sidecar-http.json"
start sidecar-stdio 9102 "$SIDECAR" run --config "$HERE/config/sidecar-stdio.json"
# The same with "share": true: one echo process for all sessions (request ids mapped per session), as mcp-proxy does.
start sidecar-share 9109 "$SIDECAR" run --config "$HERE/config/sidecar-share.json"
# Diagnostic: the same Sidecar with the .NET thread pool's spin-before-sleep back at the runtime's default (70).
# Sidecar ships with it off (0: idle workers sleep at once); this shows what spinning costs and buys.
DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=70 start sidecar-spin 9106 "$SIDECAR" run --config "$HERE/config/sidecar-spin.json"
start sidecar-trip  9103 "$SIDECAR" run --config "$HERE/config/sidecar-trip.json"
# sidecar-http with the audit queue's old overflow behaviour (forward the call anyway, count the lost record, write
# audit_gap) instead of the default (refuse the call with -32015 audit_backlog): what dropping records would buy.
start sidecar-drop  9107 "$SIDECAR" run --config "$HERE/config/sidecar-drop.json"
# sidecar-http with group commit: a call's answer waits until its audit record is in the file.
start sidecar-durable 9108 "$SIDECAR" run --config "$HERE/config/sidecar-durable.json"
start mcp-proxy     9104 node "$HERE/node_modules/mcp-proxy/dist/bin/mcp-proxy.mjs" --host 127.0.0.1 --port 9104 \
                         --server stream --sessionIdleTimeout 300000 -- node "$HERE/echo-server/stdio.cjs"
start supergateway  9105 node "$HERE/node_modules/supergateway/dist/index.js" --stdio "node $HERE/echo-server/stdio.cjs" \
                         --outputTransport streamableHttp --stateful --sessionTimeout 300000 --port 9105 --logLevel none

# Every listener of the bench must be on loopback.
if command -v ss > /dev/null; then
  ss -ltnpH '( sport >= :9100 and sport <= :9109 )' > "$RESULTS/listeners.txt" || true
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
  [sidecar-share]=http://127.0.0.1:9109/servers/echo/mcp
  [sidecar-trip]=http://127.0.0.1:9103/servers/echo/mcp
  [sidecar-spin]=http://127.0.0.1:9106/servers/echo/mcp
  [sidecar-drop]=http://127.0.0.1:9107/servers/echo/mcp
  [sidecar-durable]=http://127.0.0.1:9108/servers/echo/mcp
  [mcp-proxy]=http://127.0.0.1:9104/mcp
  [supergateway]=http://127.0.0.1:9105/mcp
)
declare -A CPU_PIDS=(
  [direct]=${PID_echo_http:-}
  [sidecar-http]=${PID_sidecar_http:-},${PID_echo_http}
  [sidecar-stdio]=${PID_sidecar_stdio:-}
  [sidecar-share]=${PID_sidecar_share:-}
  [sidecar-trip]=${PID_sidecar_trip:-},${PID_echo_http}
  [sidecar-spin]=${PID_sidecar_spin:-},${PID_echo_http}
  [sidecar-drop]=${PID_sidecar_drop:-},${PID_echo_http}
  [sidecar-durable]=${PID_sidecar_durable:-},${PID_echo_http}
  [mcp-proxy]=${PID_mcp_proxy:-}
  [supergateway]=${PID_supergateway:-}
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
# The variants run only where they tell something: the tripping-limits one at r500-s1 and sat-c64; the spin
# diagnostic there and at r2000-s64; sidecar-drop where the audit queue can fill (r2000-s64, sat-c64); sidecar-durable
# there, and at r500-s1 and sat-c1 for what waiting for the write adds to latency at moderate load; sidecar-share at
# saturation with 1 and 64 sessions, against mcp-proxy (which shares one process too).
targets_for() {
  local t target
  case "$1" in
    r500-s1)   t="$TARGETS sidecar-trip sidecar-spin sidecar-durable" ;;
    r2000-s64) t="$TARGETS sidecar-spin sidecar-drop sidecar-durable" ;;
    sat-c1)    t="$TARGETS sidecar-durable sidecar-share" ;;
    sat-c64)   t="$TARGETS sidecar-trip sidecar-spin sidecar-drop sidecar-durable sidecar-share" ;;
    *)         t="$TARGETS" ;;
  esac
  for target in $t; do skipped "$target" || printf '%s ' "$target"; done
}

# Records a Sidecar target dropped (audit_gap events' "dropped", summed over its trail so far).
audit_dropped() {
  LC_ALL=C grep -hF '"type":"audit_gap"' "$RESULTS/audit/$1".*jsonl 2>/dev/null | grep -o '"dropped":[0-9]*' \
    | awk -F: '{s += $2} END {print s + 0}' || true
}
# audit-drops.tsv: target, scenario, round, records dropped during that run. A run's drops are read when the same
# target runs next (or after it has stopped), so an audit_gap event the writer adds once the run is over still counts.
declare -A DROP_MARK=() DROP_RUN=()
: > "$RESULTS/audit-drops.tsv"
note_drops() { # target
  local now
  now=$(audit_dropped "$1")
  if [[ -n "${DROP_RUN[$1]:-}" ]]; then
    printf '%s\t%s\n' "${DROP_RUN[$1]}" "$((now - ${DROP_MARK[$1]}))" >> "$RESULTS/audit-drops.tsv"
  fi
  DROP_MARK[$1]=$now
}

JSONL="$RESULTS/latest.jsonl"
: > "$JSONL"
for ((round = 1; round <= ROUNDS; round++)); do
  for scenario in $SCENARIOS; do
    order=$(targets_for "$scenario")
    if ((round % 2 == 0)); then order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for target in $order; do
      log "round $round  $scenario  $target"
      if [[ "$target" == sidecar-* ]]; then note_drops "$target"; DROP_RUN[$target]="$target"$'\t'"$scenario"$'\t'"$round"; fi
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
# Stop the Sidecar targets with SIGTERM (they drain their audit queue and end the trail with audit_stop), wait for
# them to exit (bounded), then verify each trail's hash chain and count its events, lost records and gaps.
# --strict (exit 1 on any gap, or a trail without audit_stop) for every target that must lose nothing: the default
# targets shed calls instead of dropping records, and so does sidecar-durable; sidecar-drop is expected to have gaps.
SIDECAR_TARGETS=()
for name in sidecar-http sidecar-stdio sidecar-share sidecar-trip sidecar-spin sidecar-drop sidecar-durable; do
  skipped "$name" || SIDECAR_TARGETS+=("$name")
done
# The audit writer's own CPU (its thread is named sidecar-audit-writer, "sidecar-audit-w" in /proc), read before the
# stop: its CPU per event written, under the real load of the whole run.
declare -A WRITER_CPU
tick=$(getconf CLK_TCK)
for name in "${SIDECAR_TARGETS[@]}"; do
  pid_var="PID_${name//-/_}"
  WRITER_CPU[$name]=$(for task in /proc/"${!pid_var}"/task/*; do
      if [[ "$(cat "$task/comm" 2>/dev/null)" == sidecar-audit-w ]]; then awk -v t="$tick" '{printf "%.3f", ($14 + $15) / t}' "$task/stat"; fi
    done || true)
done
for name in "${SIDECAR_TARGETS[@]}"; do
  pid_var="PID_${name//-/_}"
  kill -TERM "${!pid_var}" 2>/dev/null || true
done
for name in "${SIDECAR_TARGETS[@]}"; do
  pid_var="PID_${name//-/_}"
  for ((i = 0; i < 300; i++)); do # up to 30 s each; a child that has exited stays a zombie until reaped
    state=$(awk '{print $3}' "/proc/${!pid_var}/stat" 2>/dev/null || true)
    [[ -z "$state" || "$state" == Z ]] && break
    sleep 0.1
  done
  if [[ -n "$state" && "$state" != Z ]]; then log "$name still running 30 s after SIGTERM: its trail may be incomplete"; fi
done
for name in "${SIDECAR_TARGETS[@]}"; do note_drops "$name"; done # the last run of each
STRICT_OK=0
verify_help=$("$SIDECAR" audit verify --help 2>&1 || true) # (not piped into grep -q: SIGPIPE + pipefail)
if [[ "$verify_help" == *--strict* ]]; then STRICT_OK=1; else
  log "this sidecar's audit verify has no --strict: the trails are verified without it (gaps are then notes, not failures)"
fi
# audit.tsv: target, tool_call events, audit_gap events, records dropped (sum of their "dropped"), verify mode,
# verify exit code, verify's last line, the audit writer thread's CPU seconds.
: > "$RESULTS/audit.tsv"
rm -f "$RESULTS/audit.txt" # the table of older runs (report.mjs falls back to it when there is no audit.tsv)
for name in "${SIDECAR_TARGETS[@]}"; do
  files=("$RESULTS/audit/$name".*jsonl)
  mode=plain
  strict=()
  if [[ "$name" != sidecar-drop ]]; then
    if ((STRICT_OK)); then mode=strict; strict=(--strict); else mode="plain (no --strict in this build)"; fi
  fi
  rc=0 # its whole output (notes, problems) in results/audit/NAME.verify.txt; the report shows the last line
  "$SIDECAR" audit verify "${strict[@]}" "${files[@]}" > "$RESULTS/audit/$name.verify.txt" 2>&1 || rc=$?
  verdict=$(tail -1 "$RESULTS/audit/$name.verify.txt")
  calls=$(cat "${files[@]}" 2>/dev/null | grep -c '"type":"tool_call"' || true)
  gaps=$(cat "${files[@]}" 2>/dev/null | grep -c '"type":"audit_gap"' || true)
  dropped=$(audit_dropped "$name")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$calls" "$gaps" "$dropped" "$mode" "$rc" "${verdict//$'\t'/ }" "${WRITER_CPU[$name]:-}" >> "$RESULTS/audit.tsv"
  if [[ "$rc" != 0 ]]; then log "audit verify ($mode) failed for $name: $verdict (see results/audit/$name.verify.txt)"; fi
done
log "audit trails:"; cat "$RESULTS/audit.tsv" >&2

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
  echo "\"skippedTargets\": \"$SKIP_TARGETS\","
  echo "\"elapsedS\": $(( $(date +%s) - START_TS ))"
  echo "}"
} > "$RESULTS/machine.json"
node "$HERE/report.mjs" "$RESULTS" > "$RESULTS/latest.md"
log "wrote $RESULTS/latest.md in $(( $(date +%s) - START_TS )) s"
