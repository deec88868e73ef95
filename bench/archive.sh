#!/usr/bin/env bash
# Archive throughput and object sizes, local directory and S3 (moto on a
# free port, started here). Figures only, not a test.
#
#   bench/archive.sh                  # 200k hits, batches of 10k
#   HITS=500000 BATCH=50000 bench/archive.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1}
if [ -z "${S3_ENDPOINT:-}" ]; then
  command -v moto_server >/dev/null || python3 -m pip install -q 'moto[server]>=5.2.5'
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  moto=$!
  trap 'kill $moto 2>/dev/null || true' EXIT
  for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null && break; sleep 0.5; done
  export S3_ENDPOINT="http://127.0.0.1:$port"
fi
cargo run --release --quiet --example archive_bench
