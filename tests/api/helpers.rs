//! `spawn_app()` and the `TestApp` helpers every black-box test uses.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally::config::{Role, Settings};
use tally::domain::{ApiKey, Site};
use tally::startup::Application;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub site_key: String,
    pub api_key: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub queue: std::sync::Arc<dyn tally::queue::Queue>,
    pub store: std::sync::Arc<dyn tally::store::Store>,
    pub shutdown: CancellationToken,
    pub stopped: tokio::task::JoinHandle<()>,
}

/// Settings for a test instance: embedded adapters in a fresh directory,
/// port 0, small archive batches so tests see objects quickly.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::embedded(dir);
    s.host = "127.0.0.1".into();
    s.port = 0;
    s.archiver.max_age = Duration::from_millis(200);
    s.log_filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into());
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns `tally all` in-process with settings adjusted by `tweak`, and
/// creates a site with an API key.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(data_dir.path());
    tweak(&mut settings);
    tally::telemetry::init(&settings);
    let app = Application::build(settings, Role::All)
        .await
        .expect("app builds");
    let store = app.state().store.clone();
    let queue = app.state().queue.clone();
    // 127.0.0.1: the browser tests' shop page is served there.
    let site = Site::new(
        "Test shop",
        vec!["shop.example".into(), "127.0.0.1".into()],
        chrono::Utc::now(),
    );
    store.create_site(&site).await.expect("site");
    let key = ApiKey::mint(&site.key);
    store.add_api_key(&key).await.expect("key");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let stopped = tokio::spawn(app.run_until_stopped(shutdown.clone()).map_unit());
    TestApp {
        address,
        site_key: site.key,
        api_key: key.secret,
        client: reqwest::Client::new(),
        data_dir,
        queue,
        store,
        shutdown,
        stopped,
    }
}

trait MapUnit {
    fn map_unit(self) -> impl std::future::Future<Output = ()> + Send;
}
impl<F, E> MapUnit for F
where
    F: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Debug,
{
    async fn map_unit(self) {
        self.await.expect("app ran and stopped cleanly");
    }
}

pub fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn collect(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/collect"))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Posts hits and asserts they were accepted; returns their ids.
    pub async fn collect_ok(&self, body: &Value) -> Vec<String> {
        let res = self.collect(body).await;
        let status = res.status();
        let body: Value = res.json().await.expect("json");
        assert_eq!(status, 202, "collect refused: {body}");
        body["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.api_key)
    }

    pub async fn create_goal(&self, goal: Value) -> Value {
        let res = self
            .api(reqwest::Method::POST, "/api/v1/goals")
            .json(&goal)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub async fn report(&self, query: &str) -> Value {
        let res = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/conversions?{query}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// `GET path` with the site's API key, its body as JSON (whatever the
    /// status: callers assert on the body).
    pub async fn get_json(&self, path: &str) -> Value {
        self.api(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the report (today, with `group_by`) until `total.conversions`
    /// reaches `want` or the deadline passes; returns the last report.
    pub async fn wait_for_conversions(&self, group_by: &str, want: f64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let q = format!("from={d}&to={d}&group_by={group_by}", d = today());
        loop {
            let r = self.report(&q).await;
            if r["total"]["conversions"].as_f64() >= Some(want) || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls /metrics until `metric` reaches `want` (consumers are async).
    pub async fn wait_for_metric(&self, metric: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(metric).await;
            if v >= want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metric(&self, metric: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum_metric(&text, metric)
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.stopped.await.expect("app task");
        self.data_dir
    }

    pub fn pageview(&self, url: &str, vid: &str) -> Value {
        json!({"site": self.site_key, "url": url, "vid": vid})
    }
}

/// The sum of every series of `metric` (all label sets) in a /metrics text.
pub fn sum_metric(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every hit id in a local archive directory (with repeats, if any).
pub async fn archived_ids(root: &std::path::Path) -> Vec<String> {
    use tally::archive::{format, local::LocalArchive, Archive};
    let archive = LocalArchive::open(root).expect("archive dir");
    let mut ids = Vec::new();
    for key in archive.list("").await.expect("list") {
        let body = archive.get(&key).await.expect("object");
        ids.extend(
            format::decode(&body)
                .expect("decodes")
                .into_iter()
                .map(|h| h.id.to_string()),
        );
    }
    ids
}

/// `tally` as a child process (the real binary), for crash and CLI tests.
pub struct Proc {
    pub child: std::process::Child,
    pub port: u16,
}

pub fn tally_cmd(data_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tally"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TALLY_DATA_DIR", data_dir)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("ARCHIVE_BATCH_SECONDS", "0.2")
        .current_dir(data_dir);
    cmd
}

/// Starts `tally all` on a free port and waits for its "Listening." line.
pub fn start_tally(data_dir: &std::path::Path) -> Proc {
    start_tally_with(data_dir, &[])
}

/// [`start_tally`] with extra environment variables.
pub fn start_tally_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Proc {
    use std::io::BufRead;
    let mut child = tally_cmd(data_dir)
        .envs(env.iter().copied())
        .arg("all")
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tally starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "Listening." {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(v["port"].as_u64().unwrap_or(0) as u16);
                    }
                }
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("tally said it is listening");
    Proc { child, port }
}
