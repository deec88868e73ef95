#!/usr/bin/env bash
# Catch-up under pixel load (issue 14's second target): `tally all` on the
# embedded defaults, one URL goal that every pixel hit converts on, DURATION
# of GET pixel load (wrk, each request a new visitor landing with utm tags).
# Prints what /collect accepted, what the attributor had counted when the
# load stopped, and how long after that every accepted hit was counted
# (tally_conversions_written_total reaches the accepted count). Target:
# within 30 s. Figures only, not a test.
#
#   DURATION=60s bench/catchup.sh
#   TALLY_BIN=/path/to/other/tally bench/catchup.sh   # another build, same run
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60s}
CONNS=${CONNS:-64}
# How long to wait for the count after the load stopped.
WAIT=${WAIT:-300}
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36'
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bin=${TALLY_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/tally"
fi

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export TALLY_DATA_DIR="$work/data" RUST_LOG=warn
created=$("$bin" sites create --name bench)
site=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["site"])' "$created")
key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$created")
PORT=$port "$bin" all & pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -fs -o /dev/null -X POST "http://127.0.0.1:$port/api/v1/goals" \
  -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"name": "Landing", "match": {"url": "/landing"}}'
# The goal cache refreshes within a second.
sleep 1.5

metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {s += $2} END {printf "%d\n", s}'; }

# Each request a new visitor (a counter per wrk thread and connection), so
# every hit is one landing that converts once.
cat > "$work/pixel.lua" <<LUA
local n = 0
local id = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  local url = "https%3A%2F%2Fshop.example%2Flanding%3Futm_source%3Dbench%26utm_campaign%3Dc" .. (n % 40)
  return wrk.format("GET", "/collect?site=$site&vid=w" .. id .. "-" .. n .. "&url=" .. url)
end
LUA

echo "tally all ($bin), GET pixel, every hit converts; wrk -t2 -c$CONNS -d$DURATION"
wrk -t2 -c"$CONNS" -d"$DURATION" -H "User-Agent: $UA" -s "$work/pixel.lua" "http://127.0.0.1:$port/" > "$work/wrk.txt"
stopped=$(date +%s.%N)
accepted=$(metric tally_hits_accepted_total)
counted=$(metric tally_conversions_written_total)
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt")
echo "load: $rps req/s, non-2xx ${non2xx:-0}; accepted $accepted hits; counted $counted conversions when the load stopped"
deadline=$(python3 -c "print($stopped + $WAIT)")
while :; do
  counted=$(metric tally_conversions_written_total)
  now=$(date +%s.%N)
  [ "$counted" -ge "$accepted" ] && break
  if python3 -c "import sys; sys.exit(0 if $now > $deadline else 1)"; then break; fi
  sleep 0.2
done
python3 -c "print(f'counted {$counted} of {$accepted} accepted, {$now - $stopped:.1f} s after the load stopped (target: all within 30 s)')"
