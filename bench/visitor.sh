#!/usr/bin/env bash
# Work per hit whatever the visitor: the same HITS hits (one in ten an ad
# landing arriving LATE_MS late, the rest purchases and sign-ups) counted
# from one visitor and from HITS visitors, on SQLite and, when
# CASSANDRA_CONTACT_POINTS is set, on Cassandra (CASSANDRA_HITS hits,
# default HITS); prints both times and their ratio. Target: ratio <= 2.
# Figures only, not a test.
#
# Measured (release build, 2 shared cores, load ~6, LATE_MS=5):
# SQLite
#   before (batch write reading a visitor's whole history):
#     100,000 hits: 11.74 s from 100,000 visitors, 156.11 s from one (13.30x)
#      20,000 hits:  2.89 s from  20,000 visitors,   6.47 s from one (2.24x)
#   after (reads bounded by the path cap and the rows that change):
#     100,000 hits: 14.77 s from 100,000 visitors,  20.11 s from one (1.36x)
#      20,000 hits:  2.34 s from  20,000 visitors,   3.30 s from one (1.41x)
# Cassandra 5.0, one node on the same 2 cores (load 4-15: other builds ran)
#   before (settle reading the visitor's candidates, registrations and
#   touchpoints whole), 0e44b38:
#      50,000 hits: 36.85 s from  50,000 visitors, 194.72 s from one (5.28x)
#      20,000 hits: 13.97 s from  20,000 visitors,  33.52 s from one (2.40x)
#   after (reads by key, walks to a group's first counter, LIMIT paths):
#     100,000 hits: 65.39 s from 100,000 visitors,  91.47 s from one (1.40x)
#      50,000 hits: 29.81 s from  50,000 visitors,  42.79 s from one (1.44x)
#      20,000 hits: 14.84 s from  20,000 visitors,  16.06 s from one (1.08x)
#
#   bench/visitor.sh
#   HITS=20000 LATE_MS=50 bench/visitor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HITS=${HITS:-100000} LATE_MS=${LATE_MS:-5}
cargo build --release --quiet --example visitor_bench
bin="${CARGO_TARGET_DIR:-target}/release/examples/visitor_bench"
"$bin" sqlite
if [ -n "${CASSANDRA_CONTACT_POINTS:-}" ]; then
  HITS=${CASSANDRA_HITS:-$HITS} "$bin" cassandra
else
  echo "cassandra: skipped (CASSANDRA_CONTACT_POINTS not set)"
fi
