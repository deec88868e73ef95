# shellcheck shell=bash
# S3-compatible server for the S3 archive tests: moto from PyPI.
# Sourced by .ci/run and by hand; exports TALLY_TEST_S3_ENDPOINT and test
# credentials. 5.2.5: earlier versions answer CompleteMultipartUpload with
# an XML root aws-sdk-s3 rejects. Installing is a no-op when it is already
# there; a server already answering on the port is reused. Prints how long
# the server took to answer.
tally_moto_started=$SECONDS
python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5.2.5'
hash -r
MOTO_PORT=${MOTO_PORT:-5055}
tally_moto_boot=$SECONDS
if curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1; then
  echo "moto: reusing the server on port $MOTO_PORT"
else
  nohup moto_server -H 127.0.0.1 -p "$MOTO_PORT" >/tmp/moto.log 2>&1 &
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1 && break
    sleep 0.25
  done
  curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null || {
    echo "moto did not start:"
    cat /tmp/moto.log
    return 1 2>/dev/null || exit 1
  }
fi
export TALLY_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
echo "moto: answers on $TALLY_TEST_S3_ENDPOINT after $((SECONDS - tally_moto_boot)) s" \
  "(install and start: $((SECONDS - tally_moto_started)) s)"
