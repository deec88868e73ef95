#!/usr/bin/env bash
# Load benchmark of POST /collect next to nginx serving an empty_gif with an
# access log, in the same run, on this machine (loopback, wrk -t2 -c64).
# Prints req/s and p99 for both, the ratio, and the CPU each process
# (nginx, tally, a local broker, wrk) spent per request. Not a test:
# figures only.
#
#   bench/collect.sh              # embedded durable queue (tally all)
#   AMQP_URL=amqp://... bench/collect.sh   # through RabbitMQ (tally web + worker)
#   PIN=1 bench/collect.sh        # one core against one core (FIELD-NOTES):
#       servers (nginx with 1 worker, tally, a local broker) on CPU 0, wrk -t1
#       on CPU 1; adds a GET pixel run, so req/s is per server core and the
#       ratios compare cost per hit. Without PIN both share the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then
  SERVER=(taskset -c 0) WRK=(taskset -c 1 wrk -t1) NGINX_WORKERS=1
else
  SERVER=() WRK=(wrk -t2) NGINX_WORKERS=2
fi
# A person's browser: tally ignores known bots and automation tools.
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36'

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  # The run's queues on a local broker, so their messages do not pile up
  # (its exchanges stay: empty and harmless).
  if [ -n "${AMQP_PREFIX:-}" ] && command -v rabbitmqctl >/dev/null; then
    for q in $(rabbitmqctl list_queues -q name 2>/dev/null | grep "^$AMQP_PREFIX\."); do
      rabbitmqctl delete_queue "$q" >/dev/null 2>&1 || true
    done
  fi
}
trap cleanup EXIT

# nginx: the classic pixel server, access log on, 2 workers.
NPORT=$(free_port)
cat > "$work/nginx.conf" <<NGINX
worker_processes $NGINX_WORKERS;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log $work/access.log;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NPORT;
    location = /collect { empty_gif; }
  }
}
NGINX
${SERVER[@]+"${SERVER[@]}"} nginx -c "$work/nginx.conf" -g 'daemon off;' &
nginx_master=$!
pids+=($!)

# tally on a fresh data directory.
TPORT=$(free_port)
export TALLY_DATA_DIR="$work/data" RUST_LOG=warn
site=$(./target/release/tally sites create --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["site"])')
if [ -n "${AMQP_URL:-}" ]; then
  export AMQP_PREFIX="bench$$"
  PORT=$TPORT ${SERVER[@]+"${SERVER[@]}"} ./target/release/tally web & pids+=($!); web_pid=$!
  ${SERVER[@]+"${SERVER[@]}"} ./target/release/tally worker & pids+=($!); worker_pid=$!
  mode="rabbitmq (web + worker)"
else
  PORT=$TPORT ${SERVER[@]+"${SERVER[@]}"} ./target/release/tally all & pids+=($!); web_pid=$!
  mode="embedded queue (tally all)"
fi
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$TPORT/health" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$NPORT/collect" >/dev/null && break; sleep 0.1; done

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "$UA"
wrk.body = '{"site":"$site","type":"pageview","url":"https://shop.example/landing?gclid=abc&utm_campaign=bench","vid":"v1","referrer":"https://google.com/"}'
LUA

# CPU seconds (user + system, all threads) the given processes have used.
cpu() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  python3 -c "print($t / $(getconf CLK_TCK))"; }
# µs of CPU per request: cpu_per SECONDS_BEFORE SECONDS_AFTER REQUESTS
cpu_per() { python3 -c "print(f'{($2 - $1) * 1e6 / max($3, 1):.1f}')"; }

run() { # name url [script]; sets RPS, REQS and WRK_US (wrk's own CPU per request)
  local out args=(-c"$CONNS" -d"$DURATION" --latency -H "User-Agent: $UA")
  [ -n "${3:-}" ] && args+=(-s "$3")
  # wrk as a child of python, so its CPU time can be read when it exits.
  out=$(python3 -c 'import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(p.stdout); print("wrk_cpu", r.ru_utime + r.ru_stime)' "${WRK[@]}" "${args[@]}" "$2")
  local p99 non2xx
  RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  REQS=$(awk '/requests in/ {print $1}' <<<"$out")
  WRK_US=$(cpu_per 0 "$(awk '/^wrk_cpu/ {print $2}' <<<"$out")" "$REQS")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out"); P99=$p99
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-40s %10s req/s   p99 %-8s non-2xx %s\n' "$1" "$RPS" "$p99" "${non2xx:-0}" >&2
}
pinning="unpinned: servers and wrk share both cores"
[ "$PIN" = 1 ] && pinning="pinned: servers on CPU 0, wrk -t1 on CPU 1 (req/s = per server core)"
echo "mode: $mode; ${WRK[*]} -c$CONNS -d$DURATION on 127.0.0.1; $pinning" >&2
nginx_workers=$(pgrep -P "$nginx_master" | tr '\n' ' ')
before=$(cpu $nginx_workers)
run "nginx empty_gif + access_log" "http://127.0.0.1:$NPORT/collect"
n=$RPS; nginx_us=$(cpu_per "$before" "$(cpu $nginx_workers)" "$REQS"); nginx_wrk_us=$WRK_US
# The framework's own ceiling on this machine: tally's GET /health (no
# body, no queue). Measured before the POST run, while the consumers are
# idle: afterwards they work off the backlog and would share the cores.
run "tally GET /health (actix-web ceiling)" "http://127.0.0.1:$TPORT/health"
h=$RPS
broker=""
if [ -n "${AMQP_URL:-}" ]; then broker=$(pgrep -x beam.smp | head -1 || true); fi
# The GET pixel with a utm tag, the request most pages send. On the
# embedded queue tally's CPU is read once the consumers have caught up, so
# it is the whole cost of a hit; through RabbitMQ it is the web process's.
depth() { curl -s "http://127.0.0.1:$TPORT/metrics" | awk '/^tally_queue_depth/ {if ($2 > m) m = $2} END {print m + 0}'; }
caught_up() { [ -n "${AMQP_URL:-}" ] && return 0; for _ in $(seq 600); do [ "$(depth)" = 0 ] && return 0; sleep 0.2; done; return 1; }
accepted_now() { curl -s "http://127.0.0.1:$TPORT/metrics" | awk '/^tally_hits_accepted_total/ {s += $2} END {print s + 0}'; }
enc_url=$(python3 -c 'import urllib.parse; print(urllib.parse.quote("https://shop.example/landing?utm_source=bench&utm_campaign=bench", safe=""))')
web_before=$(cpu $web_pid); worker_before=$(cpu ${worker_pid:-}); before_hits=$(accepted_now)
run "tally GET pixel ($mode)" "http://127.0.0.1:$TPORT/collect?site=$site&url=$enc_url&vid=v1"
g=$RPS; get_wrk_us=$WRK_US; get_p99=$P99
caught_up || echo "consumers did not catch up within 2 minutes" >&2
get_hits=$(( $(accepted_now) - before_hits ))
get_web_us=$(cpu_per "$web_before" "$(cpu $web_pid)" "$get_hits")
get_worker_us=""
[ -n "${worker_pid:-}" ] && get_worker_us=$(cpu_per "$worker_before" "$(cpu $worker_pid)" "$get_hits")
python3 -c "print(f'ratio GET pixel/nginx: {float(\"$g\")/float(\"$n\"):.2f}')" >&2

web_before=$(cpu $web_pid); worker_before=$(cpu ${worker_pid:-}); broker_before=$(cpu $broker)
run "tally POST /collect ($mode)" "http://127.0.0.1:$TPORT/collect" "$work/post.lua"
t=$RPS; tally_wrk_us=$WRK_US
web_after=$(cpu $web_pid); worker_after=$(cpu ${worker_pid:-}); broker_after=$(cpu $broker)
python3 -c "print(f'ratio tally/nginx: {float(\"$t\")/float(\"$n\"):.2f}  (GET /health/nginx: {float(\"$h\")/float(\"$n\"):.2f})')" >&2
curl -s "http://127.0.0.1:$TPORT/metrics" | grep -E '^tally_(hits_accepted_total|queue_publish_batches_total|publish_batch_hits_(sum|count))' >&2 || true
# How far behind the run left the consumers (attributor, archiver) and how
# long they took to catch up: the req/s above is what /collect takes, this
# is whether the rest of the loop kept pace.
if [ -z "${AMQP_URL:-}" ]; then
  behind=$(depth); start=$(date +%s.%N)
  for _ in $(seq 600); do [ "$(depth)" = 0 ] && break; sleep 0.2; done
  left=$(depth)
  python3 -c "import time; t=time.time()-$start; print(f'consumers: {$behind} hits not yet acked at the end of the run; {$left} left {t:.1f} s later (the archiver closes a batch after ARCHIVE_BATCH_SECONDS)')" >&2
  # tally all's CPU includes the consumers working off what the run left.
  web_after=$(cpu $web_pid)
fi
accepted=$(( $(accepted_now) - before_hits - get_hits ))
echo "CPU per request (µs, user + system, all threads):" >&2
echo "  nginx workers $nginx_us, wrk $nginx_wrk_us" >&2
if [ -n "${AMQP_URL:-}" ]; then
  broker_us="not on this machine"
  [ -n "$broker" ] && broker_us=$(cpu_per "$broker_before" "$broker_after" "$accepted")
  echo "  tally web $(cpu_per "$web_before" "$web_after" "$accepted"), tally worker $(cpu_per "$worker_before" "$worker_after" "$accepted") (during the run only), broker $broker_us, wrk $tally_wrk_us" >&2
else
  echo "  tally all $(cpu_per "$web_before" "$web_after" "$accepted") (until the consumers caught up), wrk $tally_wrk_us" >&2
fi
if [ -n "${AMQP_URL:-}" ]; then
  echo "  GET pixel: tally web $get_web_us, tally worker $get_worker_us (during the run only), wrk $get_wrk_us; p99 $get_p99" >&2
else
  echo "  GET pixel: tally all $get_web_us (until the consumers caught up), wrk $get_wrk_us; p99 $get_p99" >&2
fi
