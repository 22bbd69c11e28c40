#!/usr/bin/env bash
# Starts two example origins on 127.0.0.1:3001 and :3002 and Strata in front
# of them with config/strata.toml (proxy on :8080, admin on :9090).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin strata --example origin
target/release/examples/origin 127.0.0.1:3001 127.0.0.1:3002 &
origin=$!
trap 'kill $origin 2>/dev/null || true' EXIT
echo "try: curl -si http://127.0.0.1:8080/index.html ; curl -s http://127.0.0.1:9090/health"
target/release/strata serve --config config/strata.toml "$@"
