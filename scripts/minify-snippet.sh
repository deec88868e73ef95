#!/usr/bin/env bash
# Minifies static/t.js into static/t.min.js (the file GET /t.js serves) with
# terser from npm, and prints the gzipped size. The output is committed so
# building tally needs no node; rerun this after editing static/t.js.
set -euo pipefail
cd "$(dirname "$0")/.."
TERSER_VERSION=5.46.0
npx --yes "terser@${TERSER_VERSION}" static/t.js \
  --compress passes=2,unsafe_arrows=false \
  --mangle \
  --ecma 5 \
  --output static/t.min.js
# No trailing newline wanted beyond terser's own output.
raw=$(wc -c <static/t.min.js)
gz=$(gzip -9 -n -c static/t.min.js | wc -c)
echo "static/t.min.js: ${raw} bytes, ${gz} bytes gzipped (budget 1024)"
