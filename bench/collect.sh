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
#       nginx (1 worker) and tally on CPU 0, wrk -t1 on CPU 1; a local broker
#       (beam.smp) is moved to CPU 1 for the run, away from tally's core, and
#       put back after. req/s is per server core and the ratios compare cost
#       per hit. Without PIN everything shares the two cores.
#   TALLY_BIN=/path/to/tally      # measure that binary instead of building
#
# For each of nginx, tally GET /health, tally GET pixel and tally POST it
# prints req/s, p99, the CPU µs per request of every process involved and
# the context switches (wake-ups) per request of tally's threads; then the
# per-core figures against nginx and the targets of issue 17. On the
# embedded queue tally's CPU for a hit run is read once the consumers have
# caught up, so it is the whole cost of a hit; through RabbitMQ the web
# process's and the broker's are read for the run, the worker's once its
# queues are empty.
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

# TALLY_BIN runs another build (e.g. a copy of the previous commit's binary)
# through the same script, so before/after compare like with like.
TALLY_BIN=${TALLY_BIN:-}
if [ -z "$TALLY_BIN" ]; then cargo build --release --quiet; TALLY_BIN="${CARGO_TARGET_DIR:-target}/release/tally"; fi
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
site=$("$TALLY_BIN" sites create --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["site"])')
if [ -n "${AMQP_URL:-}" ]; then
  export AMQP_PREFIX="bench$$"
  PORT=$TPORT ${SERVER[@]+"${SERVER[@]}"} "$TALLY_BIN" web & pids+=($!); web_pid=$!
  ${SERVER[@]+"${SERVER[@]}"} "$TALLY_BIN" worker & pids+=($!); worker_pid=$!
  mode="rabbitmq (web + worker)"
else
  PORT=$TPORT ${SERVER[@]+"${SERVER[@]}"} "$TALLY_BIN" all & pids+=($!); web_pid=$!
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
# Context switches (voluntary + involuntary) of every thread of a process:
# each is a thread going to sleep or being preempted, i.e. a wake-up.
ctx() { [ -n "${1:-}" ] || { echo 0; return; }
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
# µs of CPU per request: cpu_per SECONDS_BEFORE SECONDS_AFTER REQUESTS
cpu_per() { python3 -c "print(f'{($2 - $1) * 1e6 / max($3, 1):.1f}')"; }
per() { python3 -c "print(f'{($2 - $1) / max($3, 1):.2f}')"; }

run() { # name url [script]; sets RPS, REQS, P99 and WRK_US (wrk's own CPU per request)
  local out args=(-c"$CONNS" -d"$DURATION" --latency -H "User-Agent: $UA")
  [ -n "${3:-}" ] && args+=(-s "$3")
  # wrk as a child of python, so its CPU time can be read when it exits.
  out=$(python3 -c 'import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(p.stdout); print("wrk_cpu", r.ru_utime + r.ru_stime)' "${WRK[@]}" "${args[@]}" "$2")
  local non2xx
  RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  REQS=$(awk '/requests in/ {print $1}' <<<"$out")
  WRK_US=$(cpu_per 0 "$(awk '/^wrk_cpu/ {print $2}' <<<"$out")" "$REQS")
  P99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-44s %10s req/s   p99 %-8s non-2xx %s\n' "$1" "$RPS" "$P99" "${non2xx:-0}" >&2
}
pinning="unpinned: servers and wrk share both cores"
[ "$PIN" = 1 ] && pinning="pinned: nginx and tally on CPU 0, wrk -t1 (and a local broker) on CPU 1 (req/s = per server core)"
echo "mode: $mode; ${WRK[*]} -c$CONNS -d$DURATION on 127.0.0.1; $pinning" >&2
broker=""
if [ -n "${AMQP_URL:-}" ]; then
  broker=$(pgrep -x beam.smp | head -1 || true)
  if [ "$PIN" = 1 ] && [ -n "$broker" ]; then
    broker_cpus=$(taskset -p "$broker" | awk '{print $NF}')
    taskset -a -p 2 "$broker" >/dev/null
    # Put the shared broker back as it was, whatever happens.
    trap 'taskset -a -p "$broker_cpus" "$broker" >/dev/null 2>&1 || true; cleanup' EXIT
  fi
fi
nginx_workers=$(pgrep -P "$nginx_master" | tr '\n' ' ')
before=$(cpu $nginx_workers)
run "nginx empty_gif + access_log" "http://127.0.0.1:$NPORT/collect"
n=$RPS; n_p99=$P99; nginx_us=$(cpu_per "$before" "$(cpu $nginx_workers)" "$REQS")
echo "    CPU µs/req: nginx worker $nginx_us, wrk $WRK_US" >&2
# The framework's own ceiling on this machine: tally's GET /health (no
# body, no queue). Measured before the hit runs, while the consumers are
# idle: afterwards they work off the backlog and would share the core.
before=$(cpu $web_pid); ctx_before=$(ctx $web_pid)
run "tally GET /health (actix-web ceiling)" "http://127.0.0.1:$TPORT/health"
h=$RPS; h_us=$(cpu_per "$before" "$(cpu $web_pid)" "$REQS"); h_ctx=$(per "$ctx_before" "$(ctx $web_pid)" "$REQS")
echo "    CPU µs/req: tally $h_us, wrk $WRK_US; tally context switches/req $h_ctx" >&2

metric_sum() { curl -s "http://127.0.0.1:$TPORT/metrics" | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s + 0}'; }
depth() { curl -s "http://127.0.0.1:$TPORT/metrics" | awk '/^tally_queue_depth/ {if ($2 > m) m = $2} END {print m + 0}'; }
# Messages still in the run's RabbitMQ queues (ready + unacked).
amqp_depth() { rabbitmqctl list_queues -q name messages 2>/dev/null | awk -v p="$AMQP_PREFIX." 'index($1, p) == 1 && $1 !~ /(retry|dead)$/ {s += $2} END {print s + 0}'; }
caught_up() {
  local i
  for i in $(seq 600); do
    if [ -n "${AMQP_URL:-}" ]; then
      command -v rabbitmqctl >/dev/null || return 0
      [ "$(amqp_depth)" = 0 ] && return 0
    else
      [ "$(depth)" = 0 ] && return 0
    fi
    sleep 0.2
  done
  return 1
}
enc_url=$(python3 -c 'import urllib.parse; print(urllib.parse.quote("https://shop.example/landing?utm_source=bench&utm_campaign=bench", safe=""))')

hit_run() { # label url [script]; sets HIT_RPS HIT_P99 HIT_US (per-core cost of the hit for tally)
  local web0 worker0 broker0 ctx0 wctx0 hits0 web1 worker1 broker1 hits web_us worker_us broker_us t0 behind
  web0=$(cpu $web_pid); worker0=$(cpu ${worker_pid:-}); broker0=$(cpu $broker)
  ctx0=$(ctx $web_pid); wctx0=$(ctx "${worker_pid:-}"); hits0=$(metric_sum tally_hits_accepted_total)
  run "$1" "$2" "${3:-}"
  HIT_RPS=$RPS; HIT_P99=$P99
  web1=$(cpu $web_pid); broker1=$(cpu $broker)
  t0=$(date +%s.%N); behind=$( [ -n "${AMQP_URL:-}" ] && amqp_depth || depth )
  caught_up || echo "    consumers did not catch up within 2 minutes" >&2
  hits=$(( $(metric_sum tally_hits_accepted_total) - hits0 ))
  worker1=$(cpu ${worker_pid:-})
  if [ -n "${AMQP_URL:-}" ]; then
    web_us=$(cpu_per "$web0" "$web1" "$hits"); broker_us="not on this machine"
    [ -n "$broker" ] && broker_us=$(cpu_per "$broker0" "$broker1" "$hits")
    worker_us=$(cpu_per "$worker0" "$worker1" "$hits")
    echo "    CPU µs/hit: tally web $web_us, broker $broker_us (during the run), tally worker $worker_us (until its queues were empty), wrk $WRK_US" >&2
    echo "    context switches/hit: tally web $(per "$ctx0" "$(ctx $web_pid)" "$hits"), tally worker $(per "$wctx0" "$(ctx $worker_pid)" "$hits")" >&2
    HIT_US=$web_us
  else
    web_us=$(cpu_per "$web0" "$(cpu $web_pid)" "$hits")
    echo "    CPU µs/hit: tally all $web_us (until the consumers caught up), wrk $WRK_US; context switches/hit: tally all $(per "$ctx0" "$(ctx $web_pid)" "$hits")" >&2
    HIT_US=$web_us
  fi
  python3 -c "import time; print(f'    consumers: {$behind} behind at the end of the run, caught up {time.time() - $t0:.1f} s later')" >&2
}

hit_run "tally GET pixel ($mode)" "http://127.0.0.1:$TPORT/collect?site=$site&url=$enc_url&vid=v1"
g=$HIT_RPS; g_p99=$HIT_P99; g_us=$HIT_US
hit_run "tally POST /collect ($mode)" "http://127.0.0.1:$TPORT/collect" "$work/post.lua"
t=$HIT_RPS; t_p99=$HIT_P99; t_us=$HIT_US
curl -s "http://127.0.0.1:$TPORT/metrics" | grep -E '^tally_(hits_accepted_total|queue_publish_batches_total|publish_batch_hits_(sum|count))' >&2 || true

# Per core: nginx's CPU per request over tally's CPU per hit (the share of
# nginx's throughput one core of tally reaches), next to the plain req/s
# ratio of the same run.
who="tally all, consumers included"
[ -n "${AMQP_URL:-}" ] && who="tally web alone"
python3 - "$n" "$nginx_us" "$h" "$h_us" "$g" "$g_us" "$g_p99" "$t" "$t_us" "$t_p99" "$who" "${AMQP_URL:+amqp}" <<'PY' >&2
import sys
n, nus, h, hus, g, gus, gp, t, tus, tp, who, amqp = sys.argv[1:]
n, nus, h, hus, g, gus, t, tus = map(float, (n, nus, h, hus, g, gus, t, tus))
def ms(p):
    p = p.strip()
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if p.endswith(unit):
            return float(p[: -len(unit)]) * f
    return float("nan")
print(f"per core vs nginx ({nus:.1f} µs/req, {1e6 / nus:,.0f} req/s per core):")
for name, rps, us in (("GET /health", h, hus), ("GET pixel", g, gus), ("POST", t, tus)):
    print(f"  {name:<12} {us:6.1f} µs/hit = {1e6 / us:>9,.0f} hits/s per core = {nus / us:.2f}x nginx   (req/s ratio {rps / n:.2f}x)")
if amqp:
    checks = [(f"GET pixel, {who}: >= 0.5x nginx per core", nus / gus >= 0.5),
              (f"POST, {who}: >= 0.5x nginx per core", nus / tus >= 0.5)]
else:
    checks = [(f"GET pixel, {who}: >= 0.45x nginx per core (<= 25 µs/hit)", nus / gus >= 0.45),
              (f"POST, {who}: >= 0.4x nginx per core", nus / tus >= 0.4)]
checks += [(f"p99 <= 5 ms at 64 connections (GET {gp}, POST {tp})", ms(gp) <= 5 and ms(tp) <= 5)]
print("targets (issue 17):")
for text, ok in checks:
    print(f"  [{'met' if ok else 'NOT met'}] {text}")
PY
