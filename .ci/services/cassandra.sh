# shellcheck shell=bash
# Sourced by .ci/run (and by hand: `source .ci/services/cassandra.sh`):
# makes sure one Apache Cassandra node answers CQL on 127.0.0.1:9042 and
# exports CASSANDRA_CONTACT_POINTS for the Cassandra tests.
#
# No package or container is used: Maven Central serves Cassandra itself as
# org.apache.cassandra:cassandra-all (resolved once, see
# cassandra-common.bash, shared with the three nodes of
# cassandra-cluster.sh). The node runs CassandraDaemon with a minimal
# cassandra.yaml (loopback only, data in a temporary folder, heap <= 1 GiB)
# and settings that make a throwaway single node start fast (one token, no
# gossip settling, no snapshots on DROP). Idempotent: a node already
# answering on the port is reused as it is.

# shellcheck source=.ci/services/cassandra-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/cassandra-common.bash"

tally_cassandra() {
  local port=${TALLY_CASSANDRA_PORT:-9042}
  local started=$SECONDS

  if tally_cql_up 127.0.0.1 "$port"; then
    export CASSANDRA_CONTACT_POINTS="127.0.0.1:$port"
    echo "cassandra: reusing the node on $CASSANDRA_CONTACT_POINTS"
    return 0
  fi

  tally_cassandra_resolve || return 1

  local run
  run=$(mktemp -d /tmp/tally-cassandra.XXXXXX)
  mkdir -p "$run/conf" "$run/data" "$run/commitlog" "$run/hints" "$run/saved_caches" "$run/cdc_raw"
  {
    cat <<EOF
cluster_name: tally-ci
num_tokens: 1
initial_token: 0
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
native_transport_port: $port
storage_port: 7000
EOF
    tally_cassandra_yaml_common "$run"
  } >"$run/conf/cassandra.yaml"
  tally_cassandra_logback "$run" >"$run/conf/logback.xml"

  tally_cassandra_jvm_opts 1G 1G
  local -a jvm=(
    "${TALLY_CASSANDRA_JVM[@]}"
    -Dcassandra.config="file://$run/conf/cassandra.yaml"
    -Dlogback.configurationFile="$run/conf/logback.xml"
    -Dcassandra.storagedir="$run"
    -Dcassandra.logdir="$run"
    # A single throwaway node: nothing to wait for in the ring.
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=100
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.jmx.local.port=7199
  )
  nohup java "${jvm[@]}" -cp "$run/conf:$TALLY_CASSANDRA_DIST/lib/*" \
    org.apache.cassandra.service.CassandraDaemon >"$run/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >/tmp/tally-cassandra.pid
  echo "$run" >/tmp/tally-cassandra.dir

  local deadline=$((SECONDS + ${TALLY_CASSANDRA_TIMEOUT:-240}))
  until tally_cql_up 127.0.0.1 "$port"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "cassandra: the node did not answer CQL on 127.0.0.1:$port; last lines of its logs:" >&2
      tail -n 40 "$run/system.log" "$run/stdout.log" >&2 2>/dev/null
      kill "$pid" 2>/dev/null
      return 1
    fi
    sleep 1
  done
  export CASSANDRA_CONTACT_POINTS="127.0.0.1:$port"
  echo "cassandra: $TALLY_CASSANDRA_VERSION answers on $CASSANDRA_CONTACT_POINTS after $((SECONDS - started)) s (pid $pid, data in $run)"
}

tally_cassandra
