#!/usr/bin/env bash
# Attribution throughput (issue 14): one attributor draining a backlog of
# HITS hits (half ad landings with utm tags, half conversions with order
# ids, 100 goals on the site), on SQLite and, when CASSANDRA_CONTACT_POINTS
# is set, on Cassandra. Prints hits/s, conversions/s, the worker's CPU per
# hit, the mean number of Cassandra statements in flight, the Cassandra
# server's CPU per hit, and the figures measured before this work beside
# them. Figures only, not a test.
#
#   bench/attribute.sh
#   CASSANDRA_CONTACT_POINTS=127.0.0.1:9042 CASSANDRA_HITS=30000 bench/attribute.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HITS=${HITS:-100000}
# Cassandra is slower per hit; a smaller backlog keeps the run short.
cass_hits=${CASSANDRA_HITS:-$HITS}
cargo build --release --quiet --example attribute_bench
bin="${CARGO_TARGET_DIR:-target}/release/examples/attribute_bench"

echo "baseline (issue 14, before this work; release build, 2 cores): one tally worker drained 100,000 hits at 2,253 hits/s on SQLite and 328 hits/s on Cassandra 4.0; /collect accepts 20-25k hits/s"
echo "targets: SQLite >= 50,000 hits/s; Cassandra >= 1,600 hits/s (5x), bounded by the server's CPU"
"$bin" sqlite

if [ -n "${CASSANDRA_CONTACT_POINTS:-}" ]; then
  # The server's CPU over the run, from /proc ticks, when the node runs here.
  cass=$(pgrep -f org.apache.cassandra.service.CassandraDaemon | head -1 || true)
  ticks() { [ -n "$cass" ] && awk '{print $14+$15}' "/proc/$cass/stat" || echo 0; }
  before=$(ticks); t0=$(date +%s.%N)
  HITS=$cass_hits "$bin" cassandra
  after=$(ticks); t1=$(date +%s.%N)
  if [ -n "$cass" ]; then
    awk -v b="$before" -v a="$after" -v t0="$t0" -v t1="$t1" -v n="$cass_hits" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { cpu=(a-b)/hz; printf "cassandra server (pid %s): %.1f CPU s over %.1f s wall (incl. keyspace set-up), %.0f µs/hit, %.2f cores busy\n", "'"$cass"'", cpu, t1-t0, cpu*1e6/n, cpu/(t1-t0) }'
  fi
else
  echo "cassandra: skipped (CASSANDRA_CONTACT_POINTS not set)"
fi
