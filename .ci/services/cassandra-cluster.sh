# shellcheck shell=bash
# Sourced by .ci/run (and by hand: `source .ci/services/cassandra-cluster.sh`):
# makes sure a three-node Apache Cassandra cluster answers CQL on
# 127.0.0.2-4:9042 and exports, for the node-loss test
# (tests/cassandra_node_loss.rs):
#   CASSANDRA_CLUSTER_CONTACT_POINTS  127.0.0.2:9042,127.0.0.3:9042,127.0.0.4:9042
#   CASSANDRA_CLUSTER_CTL             this script, to run as a command:
#       bash "$CASSANDRA_CLUSTER_CTL" kill N    SIGKILL node N (1-3)
#       bash "$CASSANDRA_CLUSTER_CTL" start N   start node N on its data, wait for CQL
#       bash "$CASSANDRA_CLUSTER_CTL" stop      stop the three nodes (this script's only)
#
# It lives beside the single node of cassandra.sh (127.0.0.1, JMX 7199):
# its nodes listen on other loopback addresses (all of 127/8 reaches lo
# on Linux, no alias needed), with the same CQL and storage ports, their
# own cluster name, and JMX on 7202-7204 (7200 + the last octet). Each
# node has one token (the ring split in three), `auto_bootstrap: false`,
# its own data folder under $TALLY_CASSANDRA_CLUSTER_DIR (default
# /tmp/tally-cassandra-cluster), and a 512 MiB-1 GiB heap; together they
# need about 3.5 GB of memory. Idempotent: a cluster already answering is
# reused. A fresh start wipes the nodes' data; `start N` keeps it, so a
# restarted node rejoins with what it had and receives its hints.

# shellcheck source=.ci/services/cassandra-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/cassandra-common.bash"

TALLY_CASSANDRA_CLUSTER_DIR=${TALLY_CASSANDRA_CLUSTER_DIR:-/tmp/tally-cassandra-cluster}

tally_cluster_ip() { echo "127.0.0.$(($1 + 1))"; }

# One token per node, the Murmur3 ring split in three.
tally_cluster_token() {
  case $1 in
    1) echo "-9223372036854775808" ;;
    2) echo "-3074457345618258603" ;;
    3) echo "3074457345618258602" ;;
  esac
}

tally_cluster_pid() {
  local f="$TALLY_CASSANDRA_CLUSTER_DIR/node$1/pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

# Writes node N's configuration; wipes its data when asked (fresh cluster).
tally_cluster_prepare() {
  local n=$1 wipe=$2 ip dir
  ip=$(tally_cluster_ip "$n")
  dir="$TALLY_CASSANDRA_CLUSTER_DIR/node$n"
  if [ "$wipe" = wipe ]; then rm -rf "$dir"; fi
  mkdir -p "$dir/conf" "$dir/data" "$dir/commitlog" "$dir/hints" "$dir/saved_caches" "$dir/cdc_raw"
  {
    cat <<YAML
cluster_name: tally-ci-cluster
num_tokens: 1
initial_token: $(tally_cluster_token "$n")
auto_bootstrap: false
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$(tally_cluster_ip 1):7000"
listen_address: $ip
rpc_address: $ip
native_transport_port: 9042
storage_port: 7000
# Hints carry the writes a killed node missed until it is back.
hinted_handoff_enabled: true
YAML
    tally_cassandra_yaml_common "$dir"
  } >"$dir/conf/cassandra.yaml"
  tally_cassandra_logback "$dir" >"$dir/conf/logback.xml"
}

# Starts node N in the background (its configuration must exist).
tally_cluster_launch() {
  local n=$1 ip dir
  ip=$(tally_cluster_ip "$n")
  dir="$TALLY_CASSANDRA_CLUSTER_DIR/node$n"
  tally_cassandra_jvm_opts 512M 1G
  nohup java "${TALLY_CASSANDRA_JVM[@]}" \
    -Dcassandra.config="file://$dir/conf/cassandra.yaml" \
    -Dlogback.configurationFile="$dir/conf/logback.xml" \
    -Dcassandra.storagedir="$dir" \
    -Dcassandra.logdir="$dir" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.ring_delay_ms=1000 \
    -Dcassandra.superuser_setup_delay_ms=0 \
    -Dcassandra.jmx.local.port=$((7200 + n + 1)) \
    -cp "$dir/conf:$TALLY_CASSANDRA_DIST/lib/*" \
    org.apache.cassandra.service.CassandraDaemon >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
}

# Waits until node N answers CQL; fails with its log after the timeout.
tally_cluster_wait() {
  local n=$1 deadline=$2 ip pid
  ip=$(tally_cluster_ip "$n")
  until tally_cql_up "$ip" 9042; do
    pid=$(tally_cluster_pid "$n" || true)
    if [ -z "$pid" ] || [ "$SECONDS" -ge "$deadline" ]; then
      echo "cassandra-cluster: node $n did not answer CQL on $ip:9042; last lines of its logs:" >&2
      tail -n 40 "$TALLY_CASSANDRA_CLUSTER_DIR/node$n/system.log" \
        "$TALLY_CASSANDRA_CLUSTER_DIR/node$n/stdout.log" >&2 2>/dev/null
      return 1
    fi
    sleep 1
  done
}

tally_cluster_export() {
  export CASSANDRA_CLUSTER_CONTACT_POINTS="127.0.0.2:9042,127.0.0.3:9042,127.0.0.4:9042"
  CASSANDRA_CLUSTER_CTL=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cassandra-cluster.sh
  export CASSANDRA_CLUSTER_CTL
}

tally_cluster_stop() {
  local n pid
  for n in 1 2 3; do
    pid=$(tally_cluster_pid "$n") || continue
    kill "$pid" 2>/dev/null
  done
  for n in 1 2 3; do
    while tally_cluster_pid "$n" >/dev/null; do sleep 0.5; done
  done
}

tally_cassandra_cluster() {
  local started=$SECONDS n up=0
  for n in 1 2 3; do
    if tally_cql_up "$(tally_cluster_ip "$n")" 9042; then up=$((up + 1)); fi
  done
  if [ "$up" -eq 3 ]; then
    tally_cluster_export
    echo "cassandra-cluster: reusing the nodes on $CASSANDRA_CLUSTER_CONTACT_POINTS"
    return 0
  fi
  # Part of a cluster is no cluster to test with: start afresh (only
  # nodes this script started are stopped).
  tally_cluster_stop
  tally_cassandra_resolve || return 1
  for n in 1 2 3; do tally_cluster_prepare "$n" wipe; done
  local deadline=$((SECONDS + ${TALLY_CASSANDRA_TIMEOUT:-240}))
  # The seed first: a new node learns the ring from it, so the others
  # start once its storage port listens.
  tally_cluster_launch 1
  until python3 -c 'import socket; socket.create_connection(("127.0.0.2", 7000), timeout=1)' 2>/dev/null; do
    if [ -z "$(tally_cluster_pid 1 || true)" ] || [ "$SECONDS" -ge "$deadline" ]; then
      tally_cluster_wait 1 0
      tally_cluster_stop
      return 1
    fi
    sleep 0.5
  done
  tally_cluster_launch 2
  tally_cluster_launch 3
  for n in 1 2 3; do
    if ! tally_cluster_wait "$n" "$deadline"; then
      tally_cluster_stop
      return 1
    fi
  done
  tally_cluster_export
  echo "cassandra-cluster: $TALLY_CASSANDRA_VERSION, three nodes answer on $CASSANDRA_CLUSTER_CONTACT_POINTS after $((SECONDS - started)) s (data in $TALLY_CASSANDRA_CLUSTER_DIR)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # Run as a command: control the cluster.
  case "${1:-}" in
    kill)
      pid=$(tally_cluster_pid "$2") || { echo "node $2 is not running" >&2; exit 1; }
      kill -9 "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      ;;
    start)
      if [ -z "$(tally_cluster_pid "$2" || true)" ]; then
        tally_cluster_prepare "$2" keep
        tally_cluster_launch "$2"
      fi
      tally_cluster_wait "$2" $((SECONDS + ${TALLY_CASSANDRA_TIMEOUT:-240}))
      ;;
    stop) tally_cluster_stop ;;
    "") tally_cassandra_cluster ;;
    *)
      echo "usage: $0 [kill N | start N | stop]" >&2
      exit 2
      ;;
  esac
else
  tally_cassandra_cluster
fi
