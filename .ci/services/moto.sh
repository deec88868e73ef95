# S3-compatible server for the S3 archive tests: moto from PyPI.
# Sourced by .ci/run; exports TALLY_TEST_S3_ENDPOINT and test credentials.
# 5.2.5: earlier versions answer CompleteMultipartUpload with an XML root
# aws-sdk-s3 rejects. A no-op when it is already installed.
python3 -m pip install -q 'moto[server]>=5.2.5'
hash -r
MOTO_PORT=${MOTO_PORT:-5055}
if ! curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1; then
  nohup moto_server -H 127.0.0.1 -p "$MOTO_PORT" >/tmp/moto.log 2>&1 &
  for _ in $(seq 1 60); do
    curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null || { echo "moto did not start:"; cat /tmp/moto.log; exit 1; }
fi
export TALLY_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
