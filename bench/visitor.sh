#!/usr/bin/env bash
# Work per hit whatever the visitor (issue 21): the same HITS hits (one in
# ten an ad landing arriving LATE_MS late, the rest purchases and
# sign-ups) counted on SQLite from one visitor and from HITS visitors;
# prints both times and their ratio. Target: ratio <= 2. Figures only, not
# a test.
#
#   bench/visitor.sh
#   HITS=20000 LATE_MS=50 bench/visitor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HITS=${HITS:-100000} LATE_MS=${LATE_MS:-5}
cargo build --release --quiet --example visitor_bench
"${CARGO_TARGET_DIR:-target}/release/examples/visitor_bench"
