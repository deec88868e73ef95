# Sourced by .ci/run: installs Debian's chromium + chromedriver if missing,
# starts chromedriver on a free loopback port and exports
# TALLY_TEST_CHROMEDRIVER for the browser tests (tests/api/browser.rs).
# Idempotent: a chromedriver already answering on the recorded port is reused.
# Prints how long chromedriver took to answer.

tally_chromium_started=$SECONDS

tally_chromedriver_up() {
  curl -fsS --max-time 2 "$1/status" 2>/dev/null | grep -q '"ready": *true'
}

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
  || ! command -v curl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium chromium-driver curl >/dev/null
fi
tally_chromium_boot=$SECONDS

TALLY_CHROMEDRIVER_STATE=/tmp/tally-chromedriver.port
if [ -s "$TALLY_CHROMEDRIVER_STATE" ] \
  && tally_chromedriver_up "http://127.0.0.1:$(cat "$TALLY_CHROMEDRIVER_STATE")"; then
  export TALLY_TEST_CHROMEDRIVER="http://127.0.0.1:$(cat "$TALLY_CHROMEDRIVER_STATE")"
else
  # A free port: ask the kernel for one, then hand it to chromedriver.
  tally_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000)))
  nohup chromedriver --port="$tally_port" --allowed-ips=127.0.0.1 \
    >/tmp/tally-chromedriver.log 2>&1 &
  tally_deadline=$((SECONDS + 30))
  until tally_chromedriver_up "http://127.0.0.1:$tally_port"; do
    if [ "$SECONDS" -ge "$tally_deadline" ]; then
      echo "chromedriver did not become ready; log:" >&2
      cat /tmp/tally-chromedriver.log >&2
      return 1 2>/dev/null || exit 1
    fi
    sleep 0.2
  done
  echo "$tally_port" >"$TALLY_CHROMEDRIVER_STATE"
  export TALLY_TEST_CHROMEDRIVER="http://127.0.0.1:$tally_port"
fi
echo "chromedriver: answers on $TALLY_TEST_CHROMEDRIVER after $((SECONDS - tally_chromium_boot)) s" \
  "(install and start: $((SECONDS - tally_chromium_started)) s)"
