//! Harness shared by the black-box tests that run `tally` as separate
//! processes (`rabbitmq_e2e`, `stalled_worker`, `production_e2e`): the
//! command with exactly the environment a test gives it, the CLI steps
//! before the processes start, readiness, and clean-up even when an
//! assertion fails. Each test target uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How to run `tally` in one test: a data directory and the variables
/// that choose its adapters. The environment is cleared first, so a
/// variable the CI run exports for the tests (for example
/// `CASSANDRA_CONTACT_POINTS`) never changes which store a process uses.
///
/// A process that serves HTTP binds port 0 and reports the port it got
/// ([`Tally::serve`]): a port a test picked and released could be taken by
/// another process before tally binds it.
pub struct Tally {
    pub dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl Tally {
    pub fn new(dir: &Path, vars: &[(&str, &str)]) -> Self {
        Tally {
            dir: dir.to_owned(),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("TALLY_DATA_DIR", &self.dir)
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", log_filter())
            .stdin(Stdio::null());
        c
    }

    /// Runs a CLI command to its end; fails the test with its stderr.
    pub fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = self.command().args(args).output().expect("tally runs");
        assert!(
            out.status.success(),
            "tally {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `tally migrate`, then `tally sites create --name NAME EXTRA...`:
    /// returns (site key, API key).
    pub fn migrate_and_create_site(&self, name: &str, extra: &[&str]) -> (String, String) {
        self.run(&["migrate"]);
        let mut args = vec!["sites", "create", "--name", name];
        args.extend_from_slice(extra);
        let created: Value =
            serde_json::from_slice(&self.run(&args)).expect("sites create prints JSON");
        (
            created["site"].as_str().expect("site").to_owned(),
            created["api_key"].as_str().expect("api_key").to_owned(),
        )
    }

    /// Starts a long-running process (`worker`) with extra variables.
    pub fn spawn(&self, what: &str, vars: &[(&str, &str)]) -> Child {
        self.command()
            .envs(vars.iter().copied())
            .arg(what)
            .spawn()
            .expect("tally starts")
    }

    /// Starts a process that serves HTTP (`web`, `all`) on port 0 and
    /// returns it with its address, `http://127.0.0.1:PORT`. The port is
    /// the one tally's "Listening." log line names (JSON logs on stderr,
    /// which a thread reads and passes on to this test's stderr).
    pub fn serve(&self, what: &str, vars: &[(&str, &str)]) -> (Child, String) {
        use std::io::BufRead;
        let mut child = self
            .command()
            .envs(vars.iter().copied())
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            // The start-up module's info lines include "Listening.".
            .env("RUST_LOG", format!("{},tally::startup=info", log_filter()))
            .stderr(Stdio::piped())
            .arg(what)
            .spawn()
            .expect("tally starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["message"] == "Listening." {
                    if let (Some(tx), Some(port)) = (tx.take(), v["port"].as_u64()) {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(port) => (child, format!("http://127.0.0.1:{port}")),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tally {what} never said where it listens ({e}; its log is above)");
            }
        }
    }
}

/// The log filter for `tally` children: `TEST_LOG`, else warnings.
fn log_filter() -> String {
    std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// Processes killed (and resumed first, if a test stopped one) when the
/// test ends, even by a failed assertion.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` (`STOP`, `CONT`, ...) to a child.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} failed");
}

/// Polls `/ready` until it answers 200, or fails after `limit`.
pub async fn wait_ready(client: &reqwest::Client, base: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "web never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a goal over the API; fails the test unless it is a 201.
pub async fn create_goal(client: &reqwest::Client, base: &str, key: &str, goal: &Value) {
    let r = client
        .post(format!("{base}/api/v1/goals"))
        .bearer_auth(key)
        .json(goal)
        .send()
        .await
        .expect("goal request");
    let status = r.status();
    assert_eq!(status, 201, "goal: {}", r.text().await.unwrap_or_default());
}

/// Deletes a test's queues and exchanges on the broker (best effort).
pub async fn delete_broker_topology(url: &str, prefix: &str) {
    let settings = tally::config::RabbitMqSettings {
        url: url.to_owned().into(),
        prefix: prefix.to_owned(),
        prefetch: 10,
    };
    if let Ok(q) = tally::queue::rabbitmq::RabbitMqQueue::connect(
        &settings,
        std::sync::Arc::new(tally::metrics::Metrics::new()),
    )
    .await
    {
        let _ = q.delete_topology().await;
    }
}

/// Drops a test's keyspace (best effort), so runs do not pile up tables
/// on a reused node.
pub async fn drop_keyspace(contact_points: &str, keyspace: &str) {
    let cassandra = tally::config::CassandraSettings {
        contact_points: contact_points
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect(),
        keyspace: keyspace.to_owned(),
        username: None,
        password: None,
        replication_factor: 1,
        local_dc: None,
        consistency: "LOCAL_QUORUM".into(),
        max_in_flight: 1,
    };
    if let Ok(store) = tally::store::cassandra::CassandraStore::connect(
        &cassandra,
        std::sync::Arc::new(tally::metrics::Metrics::new()),
    )
    .await
    {
        let drop = format!("DROP KEYSPACE IF EXISTS {keyspace}");
        let _ = store.session().query_unpaged(drop, ()).await;
    }
}

/// Whether every variable in `needs` (a server's address) is set; if not,
/// says which are missing through `test_support::skip` (a failure under
/// `TALLY_REQUIRE_SERVERS=1`).
#[allow(dead_code)]
pub fn servers_configured(needs: &[&str]) -> bool {
    let missing: Vec<&str> = needs
        .iter()
        .copied()
        .filter(|v| std::env::var(v).is_err())
        .collect();
    if !missing.is_empty() {
        tally::test_support::skip(&missing.join(", "));
    }
    missing.is_empty()
}

/// The servers of a production-shaped run (RabbitMQ, Cassandra, S3) and
/// this run's own names on them: a broker prefix, a keyspace, a bucket.
#[allow(dead_code)]
pub struct ProductionEnv {
    pub amqp: String,
    pub contact_points: String,
    pub s3_endpoint: String,
    pub prefix: String,
    pub keyspace: String,
    pub bucket: String,
}

#[allow(dead_code)]
impl ProductionEnv {
    /// From `TALLY_TEST_AMQP_URL`, `CASSANDRA_CONTACT_POINTS` and
    /// `TALLY_TEST_S3_ENDPOINT` (checked by [`servers_configured`] first),
    /// with names made from `tag` and a fresh id.
    pub fn new(tag: &str) -> Self {
        let var = |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("{v} is not set"));
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        ProductionEnv {
            amqp: var("TALLY_TEST_AMQP_URL"),
            contact_points: var("CASSANDRA_CONTACT_POINTS"),
            s3_endpoint: var("TALLY_TEST_S3_ENDPOINT"),
            prefix: format!("{tag}-{run_id}"),
            keyspace: format!("tally_{tag}_{run_id}"),
            bucket: format!("tally-{tag}-{run_id}"),
        }
    }

    /// The environment of a `tally` process on these servers.
    pub fn vars(&self) -> Vec<(&str, &str)> {
        vec![
            ("AMQP_URL", self.amqp.as_str()),
            ("AMQP_PREFIX", &self.prefix),
            ("CASSANDRA_CONTACT_POINTS", &self.contact_points),
            ("CASSANDRA_KEYSPACE", &self.keyspace),
            // One local node: quorum of one.
            ("CASSANDRA_REPLICATION_FACTOR", "1"),
            ("S3_BUCKET", &self.bucket),
            ("S3_ENDPOINT", &self.s3_endpoint),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ]
    }

    /// Drops this run's broker topology and keyspace.
    pub async fn clean_up(&self) {
        delete_broker_topology(&self.amqp, &self.prefix).await;
        drop_keyspace(&self.contact_points, &self.keyspace).await;
    }
}
