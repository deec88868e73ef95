#!/usr/bin/env bash
# Memory and rate of exports to ad networks over a replayed history. For
# each size: a site (CLI) with a purchase goal (API), a history of one ad
# click and one purchase per visitor (examples/export_history.rs: gclid,
# gbraid, msclkid or fbclid) counted by `tally replay`, then each export
# downloaded over HTTP (HTTP Basic, as a network's scheduled fetch) from a
# fresh `tally all` while /proc/PID/status is sampled every 10 ms: the
# server's resident memory before, its peak during the export, and
# VmHWM (its peak since start), the rows and bytes received (checked
# against the history) and the rate. An export streams page by page, so
# its peak should not grow with the history: the summary compares the
# largest size's figures with the smallest's. Figures only, not a test.
#
#   bench/export.sh                          # SQLite, 100k and 1M conversions
#   SIZES="20000 100000" bench/export.sh     # other sizes
#   TALLY_BIN=/path/to/tally GEN_BIN=/path/to/export_history bench/export.sh  # skip the builds
#
# The work directory (BENCH_DIR, default /tmp) needs about 1 GB per
# million conversions while a run lasts.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES-100000 1000000}
DAYS=${DAYS:-30}

target="${CARGO_TARGET_DIR:-target}"
bin=${TALLY_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin="$target/release/tally"
fi
gen=${GEN_BIN:-}
if [ -z "$gen" ]; then
  cargo build --release --quiet --example export_history
  gen="$target/release/examples/export_history"
fi

work=$(mktemp -d "${BENCH_DIR:-/tmp}/tally-export.XXXXXX")
pid=""
stop_server() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
results="$work/results.tsv"
: > "$results"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

start_server() { # port log
  PORT=$1 "$bin" all > "$2" 2>&1 & pid=$!
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "tally did not start; its log:" >&2; tail -20 "$2" >&2; exit 1
}

echo "tally: $bin"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u '+%Y-%m-%d %H:%M UTC'); SQLite store"
for size in $SIZES; do
  dir="$work/$size"
  mkdir -p "$dir"
  export TALLY_DATA_DIR="$dir/data" RUST_LOG=warn
  unset CASSANDRA_CONTACT_POINTS CASSANDRA_KEYSPACE
  created=$("$bin" sites create --name "export bench $size" --domain shop.example)
  site=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["site"])' "$created")
  key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$created")
  port=$(free_port)
  start_server "$port" "$dir/server.log"
  goal=$(curl -fs -X POST "http://127.0.0.1:$port/api/v1/goals" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d '{"name": "Purchase", "match": {"event": "purchase"}}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  stop_server

  echo "sqlite, $size conversions:"
  SITE=$site VISITORS=$size DAYS=$DAYS ARCHIVE_DIR="$TALLY_DATA_DIR/archive" "$gen" > "$dir/history.json"
  from=$(field "$dir/history.json" from); to=$(field "$dir/history.json" to)
  t0=$(date +%s.%N)
  "$bin" replay --from "$from" --to "$to" --site "$site" > "$dir/replay.json"
  t1=$(date +%s.%N)
  python3 - "$dir/history.json" "$dir/replay.json" "$t0" "$t1" <<'PY'
import json, sys
h = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
secs = float(sys.argv[4]) - float(sys.argv[3])
print(f"  history: {h['hits']:,} hits, {h['conversions']:,} conversions (google {h['google']:,}, "
      f"microsoft {h['microsoft']:,}, meta {h['meta']:,}), {h['from']}..{h['to']}; "
      f"replayed in {secs:.1f} s ({r['hits'] / secs:,.0f} hits/s), {r['conversions']:,} conversions recorded")
PY

  start_server "$port" "$dir/server.log"
  python3 - "$port" "$key" "$goal" "$pid" "$dir/history.json" "$size" "$results" <<'PY'
import base64, http.client, json, sys, threading, time
port, key, goal, pid, hist, size, results = sys.argv[1:8]
h = json.load(open(hist))

def status():
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])  # kB
    return out

auth = "Basic " + base64.b64encode(f"scheduler:{key}".encode()).decode()
want = {"google_ads": h["google"], "microsoft_ads": h["microsoft"], "meta_capi": h["meta"]}
for fmt, expected in want.items():
    before = status()
    peak = [before["VmRSS"]]
    done = threading.Event()
    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], status()["VmRSS"])
            except FileNotFoundError:
                return
            time.sleep(0.01)
    t = threading.Thread(target=sample); t.start()
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=3600)
    conn.request("GET", f"/api/v1/exports/{fmt}?goal={goal}&from={h['from']}&to={h['to']}",
                 headers={"Authorization": auth})
    resp = conn.getresponse()
    if resp.status != 200:
        done.set(); t.join()
        raise SystemExit(f"{fmt}: {resp.status} {resp.read()[:300]!r}")
    # Rows counted as the body streams in: CSV lines, or Meta's events
    # (one `"event_id"` each), across chunk boundaries.
    mark = b"\r\n" if fmt != "meta_capi" else b'"event_id"'
    nbytes, tail, found = 0, b"", 0
    while True:
        chunk = resp.read(1 << 16)
        if not chunk:
            break
        nbytes += len(chunk)
        joined = tail + chunk
        found += joined.count(mark) - tail.count(mark)
        tail = joined[-(len(mark) - 1):]
    secs = time.perf_counter() - start
    done.set(); t.join()
    after = status()
    rows = found if fmt == "meta_capi" else found - 2  # the parameters line and the header
    check = "as expected" if rows == expected else f"EXPECTED {expected:,}"
    print(f"  {fmt:14s} {rows:>9,} rows, {nbytes / 1e6:7.1f} MB in {secs:6.2f} s = {rows / secs:>9,.0f} rows/s; "
          f"server RSS {before['VmRSS'] / 1024:6.1f} MiB before, peak {peak[0] / 1024:6.1f} MiB during "
          f"(+{(peak[0] - before['VmRSS']) / 1024:.1f}), VmHWM {after['VmHWM'] / 1024:.1f} MiB; {check}")
    with open(results, "a") as f:
        f.write(f"{size}\t{fmt}\t{rows}\t{secs:.3f}\t{before['VmRSS']}\t{peak[0]}\t{after['VmHWM']}\n")
PY
  stop_server
  rm -rf "$dir"
done

python3 - "$results" <<'PY'
import collections, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(dict)
for size, fmt, n, secs, before, peak, hwm in rows:
    by[fmt][int(size)] = (int(n), float(secs), int(before), int(peak), int(hwm))
print("\nsummary: peak RSS during the export (MiB), rows/s")
for fmt, sizes in by.items():
    ss = sorted(sizes)
    cells = [f"{s // 1000}k: peak {sizes[s][3] / 1024:.1f} MiB (+{(sizes[s][3] - sizes[s][2]) / 1024:.1f}), "
             f"{sizes[s][0] / sizes[s][1]:,.0f} rows/s" for s in ss]
    line = f"  {fmt:14s} " + "; ".join(cells)
    if len(ss) > 1:
        a, b = sizes[ss[0]], sizes[ss[-1]]
        line += f"; peak x{b[3] / a[3]:.2f} for x{ss[-1] // ss[0]} conversions"
    print(line)
PY
