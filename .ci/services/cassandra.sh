# shellcheck shell=bash
# Sourced by .ci/run (and by hand: `source .ci/services/cassandra.sh`):
# makes sure one Apache Cassandra node answers CQL on 127.0.0.1:9042 and
# exports CASSANDRA_CONTACT_POINTS for the Cassandra tests.
#
# No package or container is used: Maven Central serves Cassandra itself as
# org.apache.cassandra:cassandra-all. Maven resolves it and its runtime
# dependencies once into a cache folder outside the repository
# ($TALLY_CASSANDRA_HOME, default /opt/tally-cassandra), reused on later runs.
# The node runs CassandraDaemon on the machine's Java 17 with the JPMS and
# GC options of Cassandra 5.0's conf/jvm17-server.options, a minimal
# cassandra.yaml (loopback only, data in a temporary folder, heap <= 1 GiB)
# and settings that make a throwaway single node start fast (one token, no
# gossip settling, no snapshots on DROP). Idempotent: a node already
# answering on the port is reused as it is.

tally_cassandra() {
  local version=${TALLY_CASSANDRA_VERSION:-5.0.9}
  local home=${TALLY_CASSANDRA_HOME:-/opt/tally-cassandra}
  local port=${TALLY_CASSANDRA_PORT:-9042}
  local dist="$home/$version"
  local started=$SECONDS

  tally_cql_up() {
    # A CQL OPTIONS frame (protocol v4); a node that answers it with
    # SUPPORTED (opcode 0x06) is ready for clients.
    python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(bytes([0x04, 0, 0, 1, 0x05, 0, 0, 0, 0]))
head = s.recv(9)
sys.exit(0 if len(head) == 9 and head[4] == 0x06 else 1)
PY
  }

  if tally_cql_up "$port"; then
    export CASSANDRA_CONTACT_POINTS="127.0.0.1:$port"
    echo "cassandra: reusing the node on $CASSANDRA_CONTACT_POINTS"
    return 0
  fi

  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
  fi

  if [ ! -f "$dist/lib/.complete" ]; then
    echo "cassandra: resolving org.apache.cassandra:cassandra-all:$version with Maven into $dist"
    mkdir -p "$dist"
    cat >"$dist/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tally.ci</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$dist/lib"
    if ! (cd "$dist" && mvn -B -q -Dmaven.repo.local="$home/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib); then
      echo "cassandra: Maven could not resolve cassandra-all:$version (error above)" >&2
      return 1
    fi
    touch "$dist/lib/.complete"
  fi

  local run
  run=$(mktemp -d /tmp/tally-cassandra.XXXXXX)
  mkdir -p "$run/conf" "$run/data" "$run/commitlog" "$run/hints" "$run/saved_caches" "$run/cdc_raw"
  cat >"$run/conf/cassandra.yaml" <<EOF
cluster_name: tally-ci
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
native_transport_port: $port
storage_port: 7000
start_native_transport: true
data_file_directories: [$run/data]
commitlog_directory: $run/commitlog
hints_directory: $run/hints
saved_caches_directory: $run/saved_caches
cdc_raw_directory: $run/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# Tests create and drop a keyspace each; snapshots would only fill the disk.
auto_snapshot: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 8
# Tests run their queries at the same time as builds on 2 cores.
read_request_timeout: 10000ms
write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
EOF
  cat >"$run/conf/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$run/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF

  local -a jvm=(
    -Xms1G -Xmx1G -Xss512k
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1HeapRegionSize=16m -XX:MaxGCPauseMillis=300
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    -Dcassandra.config="file://$run/conf/cassandra.yaml"
    -Dlogback.configurationFile="$run/conf/logback.xml"
    -Dcassandra.storagedir="$run"
    -Dcassandra.logdir="$run"
    -Dcassandra-foreground=yes
    # A single throwaway node: nothing to wait for in the ring.
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=100
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.jmx.local.port=7199
  )
  nohup java "${jvm[@]}" -cp "$run/conf:$dist/lib/*" \
    org.apache.cassandra.service.CassandraDaemon >"$run/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >/tmp/tally-cassandra.pid
  echo "$run" >/tmp/tally-cassandra.dir

  local deadline=$((SECONDS + ${TALLY_CASSANDRA_TIMEOUT:-240}))
  until tally_cql_up "$port"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "cassandra: the node did not answer CQL on 127.0.0.1:$port; last lines of its logs:" >&2
      tail -n 40 "$run/system.log" "$run/stdout.log" >&2 2>/dev/null
      kill "$pid" 2>/dev/null
      return 1
    fi
    sleep 1
  done
  export CASSANDRA_CONTACT_POINTS="127.0.0.1:$port"
  echo "cassandra: $version answers on $CASSANDRA_CONTACT_POINTS after $((SECONDS - started)) s (pid $pid, data in $run)"
}

tally_cassandra
