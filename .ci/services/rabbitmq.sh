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
# Waits until the node has booted and the AMQP listener is up (~8 s cold).
rabbitmqctl -q --timeout 60 await_startup
export TALLY_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
echo "rabbitmq: answers on 127.0.0.1:5672 after $((SECONDS - tally_rabbitmq_boot)) s" \
  "(install and start: $((SECONDS - tally_rabbitmq_started)) s)"
