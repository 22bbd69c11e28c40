#!/usr/bin/env bash
# Load test against the demo: starts scripts/demo.sh (two example origins
# and Strata with config/strata.toml, release build) with the access log
# OFF (a log line per request would measure the log writer, not the
# cache), then runs wrk (or oha) on three workloads and prints a table:
#
#   hit-small   /assets/site.css   ~2 KiB stylesheet, memory hit
#   hit-medium  /assets/app.js     script, memory hit (br when asked)
#   miss-api    /api/items         rule "no-cache": every request goes upstream
#
# Bounded: each run lasts DURATION seconds (default 10) with CONNECTIONS
# connections (default 64), each under `timeout`; at most 3 runs. Traffic
# goes to 127.0.0.1 only. With two or more cores, Strata and the origins
# run on CPU 0 and the load generator on CPU 1 (as in the README's figures).
#
#   ./scripts/loadtest.sh                  # needs wrk (apt-get install wrk) or oha (cargo install oha)
#   DURATION=5 CONNECTIONS=32 ./scripts/loadtest.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
LOG=${LOG:-$(mktemp -t strata-loadtest.XXXXXX.log)}

if command -v wrk >/dev/null 2>&1; then tool=wrk
elif command -v oha >/dev/null 2>&1; then tool=oha
else
  echo "loadtest.sh: needs wrk (apt-get install wrk) or oha (cargo install oha)" >&2
  exit 1
fi

server_cpu=() client_cpu=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  server_cpu=(taskset -c 0) client_cpu=(taskset -c 1)
fi

# demo.sh itself fails fast, naming the port, when 3001/3002/8080/9090 are taken.
setsid "${server_cpu[@]}" ./scripts/demo.sh --log-level 'info,strata::access=off' >"$LOG" 2>&1 &
demo=$!
stop() { kill -TERM -- "-$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; }
trap stop EXIT

echo "building and starting the demo (log: $LOG) ..."
for _ in $(seq 1 900); do
  if ! kill -0 "$demo" 2>/dev/null; then
    echo "loadtest.sh: the demo exited:" >&2
    tail -20 "$LOG" >&2
    exit 1
  fi
  if curl -fsS -o /dev/null http://127.0.0.1:9090/health 2>/dev/null; then break; fi
  sleep 1
done
curl -fsS -o /dev/null http://127.0.0.1:9090/health

run() { # name path accept-encoding
  local name=$1 path=$2 ae=$3 url="http://127.0.0.1:8080$2" out rps p99
  curl -fsS -o /dev/null -H "accept-encoding: $ae" "$url"   # warm the cache
  curl -fsS -o /dev/null -H "accept-encoding: $ae" "$url"
  if [ "$tool" = wrk ]; then
    out=$(timeout $((DURATION + 30)) "${client_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
      --latency -H "accept-encoding: $ae" "$url")
    rps=$(awk '/^Requests\/sec/ {printf "%.1fk", $2 / 1000}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  else
    out=$(timeout $((DURATION + 30)) "${client_cpu[@]}" oha --no-tui -z "${DURATION}s" \
      -c "$CONNECTIONS" -H "accept-encoding: $ae" "$url")
    rps=$(awk '/Requests\/sec:/ {printf "%.1fk", $2 / 1000}' <<<"$out")
    p99=$(awk '/99.00%/ {print $3 $4}' <<<"$out")
  fi
  printf '| %-10s | %-16s | %-8s | %9s | %8s |\n' "$name" "$path" "${ae:-identity}" "$rps" "$p99"
}

echo
echo "$tool, $CONNECTIONS connections, ${DURATION}s per run, access log off"
echo
printf '| %-10s | %-16s | %-8s | %9s | %8s |\n' workload path encoding "req/s" p99
printf '| %-10s | %-16s | %-8s | %9s | %8s |\n' --- --- --- --- ---
run hit-small /assets/site.css identity
run hit-medium /assets/app.js br
run miss-api /api/items identity
echo
curl -fsS http://127.0.0.1:9090/metrics | grep -E '^strata_requests_total\{outcome="(hit|miss|revalidated)",status="200"\}' || true
