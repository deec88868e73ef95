//! Many web processes, one product, black box: two `tally web` processes
//! and one `tally worker` on RabbitMQ, Cassandra and S3 (moto in CI), as
//! behind a router that does not keep sessions sticky. A dashboard session
//! made on web A works on web B (reports, goals, a goal created there);
//! signing out on A ends it on B, live stream included; revoking the key ends a session made on
//! B for A. A hit sent to A shows in B's live stream and B's goal preview
//! (both carried by the RabbitMQ live fanout).
//! Skips, naming what is missing, unless `TALLY_TEST_AMQP_URL`,
//! `CASSANDRA_CONTACT_POINTS` and `TALLY_TEST_S3_ENDPOINT` are all set.

use std::time::{Duration, Instant};

use reqwest::{header, Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

mod common;
use common::{wait_ready, Procs, Tally};

/// Requests per credential in the timing printout.
const ROUNDS: u32 = 50;

const NEEDS: [&str; 3] = [
    "TALLY_TEST_AMQP_URL",
    "CASSANDRA_CONTACT_POINTS",
    "TALLY_TEST_S3_ENDPOINT",
];

/// One web process as a browser sees it: its address, and the `Origin`
/// its own dashboard page sends on a change.
struct Web {
    base: String,
}

impl Web {
    fn get(&self, client: &Client, path: &str, cookie: &str) -> RequestBuilder {
        client
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, format!("tally_session={cookie}"))
    }

    /// A change from this process's dashboard page: the cookie and the
    /// page's `Origin` (the CSRF rule wants it to name this host).
    fn change(&self, client: &Client, method: reqwest::Method, path: &str) -> RequestBuilder {
        client
            .request(method, format!("{}{path}", self.base))
            .header(header::ORIGIN, &self.base)
    }

    /// Signs in with an API key; returns the session cookie's value.
    async fn sign_in(&self, client: &Client, key: &str) -> String {
        let r = self
            .change(client, reqwest::Method::POST, "/session")
            .json(&json!({"api_key": key}))
            .send()
            .await
            .expect("sign-in request");
        assert_eq!(
            r.status(),
            200,
            "sign-in: {}",
            r.text().await.unwrap_or_default()
        );
        let set = r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("tally_session="))
            .expect("a tally_session cookie")
            .to_owned();
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(flag), "cookie without {flag}: {set}");
        }
        set["tally_session=".len()..]
            .split(';')
            .next()
            .expect("cookie value")
            .to_owned()
    }
}

async fn assert_unauthorized(r: Response, what: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    let body: Value = r.json().await.expect("JSON error body");
    assert!(body["error"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_web_process_works_and_ends_on_another() {
    if !common::servers_configured(&NEEDS) {
        return;
    }
    let env = common::ProductionEnv::new("sess");
    let vars = env.vars();
    // Each process has its own data directory: nothing on disk is shared,
    // only the broker and the cluster.
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let (tally_a, tally_b, tally_w) = (
        Tally::new(dirs[0].path(), &vars),
        Tally::new(dirs[1].path(), &vars),
        Tally::new(dirs[2].path(), &vars),
    );
    let (site, key) = tally_a.migrate_and_create_site("sessions", &["--domain", "shop.example"]);
    let (web_a, base_a) = tally_a.serve("web", &[]);
    let (web_b, base_b) = tally_b.serve("web", &[]);
    let procs = Procs(vec![web_a, web_b, tally_w.spawn("worker", &[])]);
    let (a, b) = (Web { base: base_a }, Web { base: base_b });
    let client = Client::new();
    wait_ready(&client, &a.base, Duration::from_secs(60)).await;
    wait_ready(&client, &b.base, Duration::from_secs(60)).await;

    // Signed in on A, the cookie works on B: who am I, reports, goals.
    let cookie = a.sign_in(&client, &key).await;
    let me: Value = b
        .get(&client, "/session", &cookie)
        .send()
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(me["site"], site.as_str(), "{me}");
    let today = chrono::Utc::now().date_naive();
    let report = format!("/api/v1/conversions?from={today}&to={today}");
    for path in [report.as_str(), "/api/v1/goals"] {
        let r = b.get(&client, path, &cookie).send().await.expect(path);
        assert_eq!(r.status(), 200, "{path} on B with A's session");
    }
    // What resolving a session in the store costs, beside a bearer key
    // (printed, not asserted: a debug build on a shared machine).
    for (how, cookie_or_key) in [("session", true), ("bearer", false)] {
        let started = Instant::now();
        for _ in 0..ROUNDS {
            let req = if cookie_or_key {
                b.get(&client, "/api/v1/goals", &cookie)
            } else {
                client
                    .get(format!("{}/api/v1/goals", b.base))
                    .bearer_auth(&key)
            };
            let r = req.send().await.expect("goals");
            assert_eq!(r.status(), 200);
        }
        eprintln!(
            "GET /api/v1/goals on B by {how}: {:?} each ({ROUNDS} in a row)",
            started.elapsed() / ROUNDS
        );
    }
    let r = b
        .change(&client, reqwest::Method::POST, "/api/v1/goals")
        .header(header::COOKIE, format!("tally_session={cookie}"))
        .json(&json!({"name": "Signup", "match": {"event": "signup"}, "value": 5.0}))
        .send()
        .await
        .expect("create goal on B");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let goals: Value = a
        .get(&client, "/api/v1/goals", &cookie)
        .send()
        .await
        .expect("goals on A")
        .json()
        .await
        .expect("json");
    assert_eq!(goals[0]["name"], "Signup", "the goal made on B, read on A");

    // B's live stream (A's session) sees a hit sent to A, and B's goal
    // preview matches it. The web processes bind their live queues after
    // start-up, so hits are sent until one comes back, within a deadline.
    let mut live = b
        .get(&client, "/api/v1/live", &cookie)
        .send()
        .await
        .expect("live on B");
    assert_eq!(live.status(), 200);
    live.chunk().await.expect("stream opens");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    let mut streamed = None;
    while streamed.is_none() {
        assert!(
            Instant::now() < deadline,
            "no hit from A on B's live stream within 30 s: {seen}"
        );
        let r = client
            .post(format!("{}/collect", a.base))
            .json(
                &json!({"site": site, "type": "event", "name": "signup", "vid": "v-sess",
                           "url": "https://shop.example/welcome"}),
            )
            .send()
            .await
            .expect("collect on A");
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.expect("json");
        let id = body["ids"][0].as_str().expect("hit id").to_owned();
        let wait = Instant::now() + Duration::from_secs(3);
        while Instant::now() < wait {
            let Ok(Ok(Some(chunk))) =
                tokio::time::timeout(wait - Instant::now(), live.chunk()).await
            else {
                break;
            };
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: hit") && seen.contains(&id) {
                streamed = Some(id.clone());
                break;
            }
        }
    }
    let preview: Value = b
        .change(&client, reqwest::Method::POST, "/api/v1/goals/preview")
        .header(header::COOKIE, format!("tally_session={cookie}"))
        .json(&json!({"name": "Signup", "match": {"event": "signup"}}))
        .send()
        .await
        .expect("preview on B")
        .json()
        .await
        .expect("json");
    assert!(
        preview["matched"].as_u64().is_some_and(|n| n >= 1),
        "B's preview sees A's hit: {preview}"
    );

    // Signed out on A: the same cookie is refused on B, in the JSON shape.
    let r = a
        .change(&client, reqwest::Method::DELETE, "/session")
        .header(header::COOKIE, format!("tally_session={cookie}"))
        .send()
        .await
        .expect("sign out on A");
    assert_eq!(r.status(), 204);
    for path in ["/api/v1/goals", "/session", report.as_str()] {
        let r = b.get(&client, path, &cookie).send().await.expect(path);
        assert_unauthorized(r, &format!("{path} on B after sign-out on A")).await;
    }
    // B's open live stream notices at its next keepalive check (15 s).
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(chunk)) = live.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: signed_out") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ended,
        Ok(true),
        "B's live stream after sign-out on A: {seen}"
    );
    drop(live);

    // Signed in on B, the key revoked: the session ends on A too.
    let cookie = b.sign_in(&client, &key).await;
    let r = a
        .get(&client, "/api/v1/goals", &cookie)
        .send()
        .await
        .expect("goals");
    assert_eq!(r.status(), 200);
    tally_w.run(&["keys", "revoke", "--key", &key]);
    let r = a
        .get(&client, "/api/v1/goals", &cookie)
        .send()
        .await
        .expect("goals");
    assert_unauthorized(r, "A after the key was revoked").await;

    // Clean up: processes first, then the broker topology and keyspace.
    drop(procs);
    env.clean_up().await;
    drop(dirs);
}
