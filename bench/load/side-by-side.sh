# Sourced by the side-by-side benches (aggregate.sh, redis.sh): the knobs, the binaries run.sh builds, and the
# helpers to start processes on loopback and stop them on exit. Not run on its own.
HERE="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-5}"; WARMUP="${WARMUP:-2}"; MAX_REQUESTS="${MAX_REQUESTS:-500000}"
SIDECAR="$ROOT/out/linux-x64/sidecar"
LOAD="$ROOT/bench/Sidecar.Load/bin/Release/net10.0/Sidecar.Load"
PRELOAD="$ROOT/tests/fixtures/mcp-servers/loopback.cjs"
RESULTS="$HERE/results"
mkdir -p "$RESULTS"
[[ -x "$SIDECAR" && -x "$LOAD" ]] || { echo "build first: bench/load/run.sh (or dotnet publish src/Sidecar -c Release -r linux-x64 -o out/linux-x64; dotnet build bench/Sidecar.Load/Sidecar.Load.csproj -c Release)" >&2; exit 1; }
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
wait_port() { for _ in $(seq 1 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.02; done; echo "nothing on 127.0.0.1:$1" >&2; return 1; }
