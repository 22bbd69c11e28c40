#!/usr/bin/env bash
# Starts two example origins on 127.0.0.1:3001 and :3002 and Strata in front
# of them with config/strata.toml (proxy on :8080, admin on :9090).
# Extra arguments go to `strata serve` (e.g. --log-level warn).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fail fast, before building or starting anything, when a port is taken:
# otherwise an origin dies and Strata proxies to whatever holds the port.
taken=()
for port in 3001 3002 8080 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    taken+=("$port")
  fi
done
if [ "${#taken[@]}" -gt 0 ]; then
  for port in "${taken[@]}"; do
    echo "demo.sh: port $port on 127.0.0.1 is already in use (stop what listens there: ss -ltnp 'sport = :$port')" >&2
  done
  exit 1
fi

cargo build --release --bin strata --example origin
# Cargo builds into $CARGO_TARGET_DIR when it is set (relative to here).
release="${CARGO_TARGET_DIR:-target}/release"
"$release/examples/origin" 127.0.0.1:3001 127.0.0.1:3002 &
origin=$!
trap 'kill $origin 2>/dev/null || true' EXIT
echo "try: curl -si http://127.0.0.1:8080/index.html ; curl -s http://127.0.0.1:9090/health"
"$release/strata" serve --config config/strata.toml "$@"
