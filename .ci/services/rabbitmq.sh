# shellcheck shell=bash
# Sourced by .ci/run (as root, Debian) and by hand: makes sure a RabbitMQ
# broker runs on 127.0.0.1:5672 and exports TALLY_TEST_AMQP_URL for the
# RabbitMQ tests. Installs Debian's rabbitmq-server when missing (nothing
# starts it before a session or a CI run). Idempotent: a running broker is
# reused as it is. Prints how long the broker took to answer.
tally_rabbitmq_started=$SECONDS
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi
tally_rabbitmq_boot=$SECONDS
if rabbitmqctl -q status >/dev/null 2>&1; then
  echo "rabbitmq: reusing the running broker"
else
  rabbitmq-server -detached
fi
# `await_startup` fails at once while the Erlang node has not yet registered
# with epmd (a second or more after `-detached` returns, longer on a busy
# machine: a CI run failed on exactly that), so it is retried until the node
# answers, for at most 120 s.
until rabbitmqctl -q --timeout 30 await_startup >/dev/null 2>&1; do
  if ((SECONDS - tally_rabbitmq_boot > 120)); then
    echo "rabbitmq: no answer after 120 s; the log's tail:" >&2
    tail -n 40 /var/log/rabbitmq/rabbit@*.log >&2 || true
    return 1 2>/dev/null || exit 1
  fi
  sleep 1
done
export TALLY_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
echo "rabbitmq: answers on 127.0.0.1:5672 after $((SECONDS - tally_rabbitmq_boot)) s" \
  "(install and start: $((SECONDS - tally_rabbitmq_started)) s)"
