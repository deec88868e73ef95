#!/usr/bin/env bash
# Report latency over a replayed history. For each history size: a site
# (CLI) with a signup goal and a purchase goal with a value (API), a
# shop's 90 days of ad landings and conversions written into the archive
# (examples/report_history.rs: 1-3 landings per visitor, 25% sign up, 10%
# buy) and counted by `tally replay` (its rate printed), then each report
# the dashboard asks for, timed over HTTP against `tally all` on that
# data: one warm-up, then the median of RUNS. Each report's conversions
# are checked against what the history implies. With
# TALLY_TEST_CHROMEDRIVER set (`source .ci/services/chromium.sh`), it also
# times the dashboard's overview in Chromium (examples/dashboard_timing.rs:
# the default 30 days from navigation, and 90 days from choosing them). Prints the ratio of the
# larger history's times to the smaller's and the targets beside the
# figures. Figures only, not a test.
#
#   bench/report.sh                                    # SQLite, 200k and 1M visitors
#   SQLITE_VISITORS="20000 100000" bench/report.sh     # other sizes
#   BASELINE_BIN=/path/to/other/tally bench/report.sh  # a second build, side by side
#   TALLY_BIN=/path/to/tally bench/report.sh           # skip the build
#   CASSANDRA_CONTACT_POINTS=127.0.0.1:9042 bench/report.sh   # adds Cassandra, 50k and 200k
#   SQLITE_VISITORS= CASSANDRA_CONTACT_POINTS=... bench/report.sh   # Cassandra only
#   CASSANDRA_WARMUP_VISITORS=0 ...                    # no warm-up history (default 20000)
#
# PIN=1 (default) runs the server on CPU 0 and the client on CPU 1, so a
# report's time is the server's alone; replay runs unpinned, as an
# operator would run it. The work directory (BENCH_DIR, default /tmp) needs
# about 1.5 GB per million SQLite visitors while a run lasts.
set -euo pipefail
cd "$(dirname "$0")/.."
SQLITE_VISITORS=${SQLITE_VISITORS-200000 1000000}
CASSANDRA_VISITORS=${CASSANDRA_VISITORS-50000 200000}
RUNS=${RUNS:-5}
PIN=${PIN:-1}
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36'

target="${CARGO_TARGET_DIR:-target}"
bin=${TALLY_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="$target/release/tally"
fi
cargo build --release --quiet --example report_history --example dashboard_timing
gen="$target/release/examples/report_history"
dash="$target/release/examples/dashboard_timing"
if [ "$PIN" = 1 ] && [ -n "${TALLY_TEST_CHROMEDRIVER:-}" ]; then
  # Chromium is started by chromedriver: keep it off the server's CPU.
  for p in $(pgrep -f chromedriver || true); do taskset -a -cp 1 "$p" >/dev/null || true; done
fi
bins=("new=$bin")
[ -n "${BASELINE_BIN:-}" ] && bins+=("baseline=$BASELINE_BIN")
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); else server_cpu=(); client_cpu=(); fi

work=$(mktemp -d "${BENCH_DIR:-/tmp}/tally-report.XXXXXX")
pid=""
keyspace=""
stop_server() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
cleanup() {
  stop_server
  [ -n "$keyspace" ] && "$gen" drop-keyspace "$keyspace" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
results="$work/results.tsv"
: > "$results"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

start_server() { # bin port log
  PORT=$2 "${server_cpu[@]}" "$1" all > "$3" 2>&1 & pid=$!
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "tally did not start; its log:" >&2; tail -20 "$3" >&2; exit 1
}

# One history on one store with one binary: prints the replay and each
# report's median, appends them to $results.
run() { # store visitors label bin
  local store=$1 visitors=$2 label=$3 tbin=$4
  local dir="$work/$store-$visitors-$label"
  mkdir -p "$dir"
  export TALLY_DATA_DIR="$dir/data" RUST_LOG=warn
  if [ "$store" = cassandra ]; then
    keyspace="bench_report_${label}_${visitors}_$$"
    export CASSANDRA_KEYSPACE=$keyspace
  else
    unset CASSANDRA_CONTACT_POINTS CASSANDRA_KEYSPACE
  fi
  local created site key port
  created=$("$tbin" sites create --name "bench $visitors" --domain shop.example)
  site=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["site"])' "$created")
  key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$created")

  port=$(free_port)
  start_server "$tbin" "$port" "$dir/server.log"
  local api="http://127.0.0.1:$port/api/v1"
  curl -fs -o /dev/null -X POST "$api/goals" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"name": "Signup", "match": {"event": "signup"}, "model": "last_click"}'
  curl -fs -o /dev/null -X POST "$api/goals" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"name": "Purchase", "match": {"event": "purchase"}, "value": 49.0, "model": "position_based"}'
  stop_server

  SITE=$site VISITORS=$visitors ARCHIVE_DIR="$TALLY_DATA_DIR/archive" "$gen" write > "$dir/history.json"
  local from to
  from=$(field "$dir/history.json" from); to=$(field "$dir/history.json" to)

  local t0 t1
  t0=$(date +%s.%N)
  "$tbin" replay --from "$from" --to "$to" --site "$site" > "$dir/replay.json"
  t1=$(date +%s.%N)
  python3 - "$dir/history.json" "$dir/replay.json" "$t0" "$t1" "$store" "$visitors" "$label" "$results" <<'PY'
import json, sys
h = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
secs = float(sys.argv[4]) - float(sys.argv[3])
store, visitors, label, results = sys.argv[5:9]
rate = r["hits"] / secs
print(f"  history: {h['hits']:,} hits ({h['all']['clicks']:,} ad landings), {h['all']['conversions']:,} conversions "
      f"({h['all']['signups']:,} signups, {h['all']['purchases']:,} purchases worth {h['all']['value']:,.2f}), {h['from']}..{h['to']}")
print(f"  replay: {r['hits']:,} hits in {secs:.1f} s = {rate:,.0f} hits/s; {r['conversions']:,} conversions recorded, "
      f"{r['rejected']} rejected")
with open(results, "a") as f:
    f.write(f"{store}\t{visitors}\t{label}\treplay\t{rate:.0f}\t{h['hits']}\t{h['all']['conversions']}\n")
PY

  start_server "$tbin" "$port" "$dir/server.log"
  "${client_cpu[@]}" python3 - "$port" "$key" "$dir/history.json" "$RUNS" "$store" "$visitors" "$label" "$results" <<'PY'
import http.client, json, statistics, sys, time
port, key, hist, runs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), int(sys.argv[4])
store, visitors, label, results = sys.argv[5:9]
frm, to, frm30 = hist["from"], hist["to"], hist["from_30"]
reports = [
    ("30d source,campaign", f"/api/v1/conversions?from={frm30}&to={to}&group_by=source,campaign", "last_30"),
    ("90d day", f"/api/v1/conversions?from={frm}&to={to}&group_by=day", "all"),
    ("90d source,medium,campaign,ad", f"/api/v1/conversions?from={frm}&to={to}&group_by=source,medium,campaign,ad", "all"),
    ("models 90d source", f"/api/v1/models?from={frm}&to={to}&group_by=source", "all"),
    ("90d model=linear source", f"/api/v1/conversions?from={frm}&to={to}&group_by=source&model=linear", "all"),
    ("90d model=data_driven channel", f"/api/v1/conversions?from={frm}&to={to}&group_by=channel&model=data_driven", "all"),
]
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
headers = {"Authorization": f"Bearer {key}"}

class Refused(Exception):
    pass

def get(path):
    t = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    ms = (time.perf_counter() - t) * 1000
    if resp.status == 400:
        # A baseline build may not know a parameter (model=data_driven).
        raise Refused(body[:200].decode(errors="replace"))
    if resp.status != 200:
        raise SystemExit(f"{path}: {resp.status} {body[:200]!r}")
    return ms, json.loads(body)

def counted(body):
    """Conversions the answer counts, and what it says about coverage."""
    if "models" in body:
        note = f"compared {body['conversions']:,}" + (", truncated" if body.get("truncated") else "")
        return body["conversions"], note
    return body["total"]["conversions"], f"{len(body['rows'])} rows"

# A report may answer before the last conversion of the replay is in it
# (rollups may follow their conversions); wait for the count, 30 s at most.
deadline = time.time() + 30
while True:
    _, body = get(reports[1][1])
    if round(body["total"]["conversions"]) >= hist["all"]["conversions"] or time.time() > deadline:
        break
    time.sleep(0.5)

for name, path, span in reports:
    try:
        get(path)  # warm-up
    except Refused as e:
        print(f"  {name:32s} refused by this build: {e}")
        continue
    times, body = [], None
    for _ in range(runs):
        ms, body = get(path)
        times.append(ms)
    median = statistics.median(times)
    got, note = counted(body)
    want = hist[span]["conversions"]
    check = "as expected" if abs(got - want) < 0.5 else f"EXPECTED {want:,}"
    print(f"  {name:32s} {median:8.1f} ms  (min {min(times):.1f}, max {max(times):.1f}); "
          f"{got:,.1f} conversions, {check}; {note}")
    with open(results, "a") as f:
        f.write(f"{store}\t{visitors}\t{label}\t{name}\t{median:.1f}\t{got}\t{want}\n")
PY
  if [ -n "${TALLY_TEST_CHROMEDRIVER:-}" ]; then
    # The dashboard as a person opens it: the overview's numbers, in
    # Chromium (its processes on the client's CPU when pinned).
    local shown
    if shown=$("${client_cpu[@]}" "$dash" "http://127.0.0.1:$port" "$key" 30 90); then
      echo "$shown" | sed 's/^/  /'
      echo "$shown" | sed -n 's/^dashboard overview, last \([0-9]*\) days: numbers shown \([0-9]*\) ms.*/\1\t\2/p' |
        while IFS=$'\t' read -r days ms; do
          printf '%s\t%s\t%s\tdashboard %sd\t%s\t0\t0\n' "$store" "$visitors" "$label" "$days" "$ms" >> "$results"
        done
    else
      echo "  dashboard: no figure (see above)"
    fi
  fi
  stop_server
  if [ "$store" = cassandra ]; then "$gen" drop-keyspace "$keyspace"; keyspace=""; fi
  rm -rf "$dir"
}

cass_points=${CASSANDRA_CONTACT_POINTS:-}
for spec in "${bins[@]}"; do echo "${spec%%=*}: ${spec#*=}"; done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u '+%Y-%m-%d %H:%M UTC'); PIN=$PIN, median of $RUNS after one warm-up"
for visitors in $SQLITE_VISITORS; do
  for spec in "${bins[@]}"; do
    echo "sqlite, $visitors visitors, ${spec%%=*}:"
    run sqlite "$visitors" "${spec%%=*}" "${spec#*=}"
  done
done
if [ -n "$cass_points" ]; then
  # A node's first minutes are slower (its JIT is still warming), which
  # would charge whichever build runs first: one small history first,
  # left out of the figures.
  warm=${CASSANDRA_WARMUP_VISITORS-20000}
  if [ -n "$warm" ] && [ "$warm" != 0 ]; then
    echo "cassandra: warm-up with $warm visitors (${bins[0]%%=*}), not in the figures"
    kept=$results; results=/dev/null
    CASSANDRA_CONTACT_POINTS=$cass_points run cassandra "$warm" warmup "${bins[0]#*=}" > /dev/null
    results=$kept
  fi
  for visitors in $CASSANDRA_VISITORS; do
    for spec in "${bins[@]}"; do
      echo "cassandra, $visitors visitors, ${spec%%=*}:"
      CASSANDRA_CONTACT_POINTS=$cass_points run cassandra "$visitors" "${spec%%=*}" "${spec#*=}"
    done
  done
else
  echo "cassandra: skipped (CASSANDRA_CONTACT_POINTS not set)"
fi

# Summary: each figure per size and build, the larger history over the
# smaller, and the target beside it.
python3 - "$results" <<'PY'
import collections, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
fig = collections.OrderedDict()
sizes = collections.defaultdict(list)
labels = []
for store, visitors, label, name, value, *_ in rows:
    fig[(store, name, int(visitors), label)] = float(value)
    if int(visitors) not in sizes[store]:
        sizes[store].append(int(visitors))
    if label not in labels:
        labels.append(label)
targets = {"sqlite": (50, 30000), "cassandra": (150, None)}
print("\nsummary (ms, median; replay in hits/s)")
for store, vs in sizes.items():
    names = []
    for (s, n, _, _) in fig:
        if s == store and n not in names:
            names.append(n)
    cols = [f"{v // 1000}k {l}" for v in vs for l in labels]
    print(f"{store}: {'report':32s} " + " ".join(f"{c:>14s}" for c in cols)
          + ("   " + " ".join(f"{'x ' + l:>12s}" for l in labels) if len(vs) > 1 else "") + "   target")
    ms_target, replay_target = targets[store]
    for n in names:
        vals = [fig.get((store, n, v, l)) for v in vs for l in labels]
        line = f"{'':8s}{n:32s} " + " ".join(f"{x:14,.1f}" if x is not None else f"{'-':>14s}" for x in vals)
        if len(vs) > 1:
            ratios = []
            for l in labels:
                a, b = fig.get((store, n, vs[0], l)), fig.get((store, n, vs[-1], l))
                ratios.append(f"{b / a:12.2f}" if a and b else f"{'-':>12s}")
            line += "   " + " ".join(ratios)
        if n == "replay":
            line += f"   >= {replay_target:,} hits/s" if replay_target else "   none set"
        elif n.startswith("dashboard"):
            line += "   <= 1,000 ms at 351k conversions (navigation to numbers, in Chromium)"
        else:
            line += f"   <= {ms_target} ms at 351k conversions; {vs[-1] // vs[0] if len(vs) > 1 else 5}x history <= 1.5x time"
        print(line)
PY
