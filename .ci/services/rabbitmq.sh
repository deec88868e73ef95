# Sourced by .ci/run (as root, Debian): makes sure a RabbitMQ broker runs on
# 127.0.0.1:5672 and exports TALLY_TEST_AMQP_URL for the RabbitMQ tests.
# Idempotent: a running broker is reused as it is.
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmq-server -detached
fi
# Waits until the node has booted and the AMQP listener is up (~8 s cold).
rabbitmqctl -q --timeout 60 await_startup
export TALLY_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
