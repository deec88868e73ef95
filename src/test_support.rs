//! Test support shared by the unit and the black-box tests: what a test
//! that needs a real server (RabbitMQ, Cassandra, S3, Chromium) does when
//! none is configured. The service itself never calls this.

/// Set to `1` by `.ci/run`, which starts every server the tests need.
pub const REQUIRE_SERVERS: &str = "TALLY_REQUIRE_SERVERS";

/// Reports a test skipped because `missing` (the variables naming its
/// server) is not set, so `cargo test` passes anywhere. Under
/// `TALLY_REQUIRE_SERVERS=1` a skip is a failure instead: a CI run that
/// started the servers can never pass while quietly testing less.
pub fn skip(missing: &str) {
    if std::env::var(REQUIRE_SERVERS).is_ok_and(|v| v == "1") {
        panic!(
            "{missing} not set, but {REQUIRE_SERVERS}=1: this run must test against every server"
        );
    }
    eprintln!("skipped: {missing} not set");
}
