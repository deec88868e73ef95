# shellcheck shell=bash
# Shared by .ci/services/cassandra.sh (one node) and
# .ci/services/cassandra-cluster.sh (three nodes); sourced by them, never
# run on its own (its name does not end in .sh, so .ci/run skips it).
#
# Apache Cassandra comes from Maven Central as
# org.apache.cassandra:cassandra-all, resolved once with its runtime
# dependencies into $TALLY_CASSANDRA_HOME/<version>/lib (default
# /opt/tally-cassandra) and reused later. Nodes run CassandraDaemon on the
# machine's Java 17 with the JPMS and GC options of Cassandra 5.0's
# conf/jvm17-server.options.

TALLY_CASSANDRA_VERSION=${TALLY_CASSANDRA_VERSION:-5.0.9}
TALLY_CASSANDRA_HOME=${TALLY_CASSANDRA_HOME:-/opt/tally-cassandra}
TALLY_CASSANDRA_DIST="$TALLY_CASSANDRA_HOME/$TALLY_CASSANDRA_VERSION"

# tally_cql_up HOST PORT: whether a node there answers a CQL OPTIONS frame
# (protocol v4) with SUPPORTED (opcode 0x06), i.e. is ready for clients.
tally_cql_up() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(bytes([0x04, 0, 0, 1, 0x05, 0, 0, 0, 0]))
head = s.recv(9)
sys.exit(0 if len(head) == 9 and head[4] == 0x06 else 1)
PY
}

# Installs Java and Maven if missing, then resolves cassandra-all into
# $TALLY_CASSANDRA_DIST/lib (once; a lock keeps two scripts from racing).
tally_cassandra_resolve() {
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
  fi
  mkdir -p "$TALLY_CASSANDRA_DIST"
  (
    flock 9
    [ -f "$TALLY_CASSANDRA_DIST/lib/.complete" ] && exit 0
    echo "cassandra: resolving org.apache.cassandra:cassandra-all:$TALLY_CASSANDRA_VERSION with Maven into $TALLY_CASSANDRA_DIST"
    cat >"$TALLY_CASSANDRA_DIST/pom.xml" <<POM
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
      <version>$TALLY_CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
    rm -rf "$TALLY_CASSANDRA_DIST/lib"
    if ! (cd "$TALLY_CASSANDRA_DIST" && mvn -B -q -Dmaven.repo.local="$TALLY_CASSANDRA_HOME/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib); then
      echo "cassandra: Maven could not resolve cassandra-all:$TALLY_CASSANDRA_VERSION (error above)" >&2
      exit 1
    fi
    touch "$TALLY_CASSANDRA_DIST/lib/.complete"
  ) 9>"$TALLY_CASSANDRA_DIST/.resolve.lock"
}

# tally_cassandra_jvm_opts XMS XMX: sets the array TALLY_CASSANDRA_JVM to
# the JVM options every node uses (heap, GC, Java 17 module access).
tally_cassandra_jvm_opts() {
  TALLY_CASSANDRA_JVM=(
    "-Xms$1" "-Xmx$2" -Xss512k
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
    -Dcassandra-foreground=yes
  )
}

# tally_cassandra_yaml_common DIR: the cassandra.yaml lines every node
# shares, for data under DIR (append the node's own lines after them).
tally_cassandra_yaml_common() {
  cat <<YAML
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
start_native_transport: true
data_file_directories: [$1/data]
commitlog_directory: $1/commitlog
hints_directory: $1/hints
saved_caches_directory: $1/saved_caches
cdc_raw_directory: $1/cdc_raw
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
YAML
}

# tally_cassandra_logback DIR: a logback.xml writing DIR/system.log.
tally_cassandra_logback() {
  cat <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$1/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
XML
}
