//! How long the dashboard's overview takes to show its numbers, in headless
//! Chromium over WebDriver (chromedriver at `TALLY_TEST_CHROMEDRIVER`):
//! signs in with the API key once, then loads the dashboard RUNS times and
//! prints, per range asked for, the median time from navigation start to
//! the first moment the overview's conversions card holds a number (the
//! page writes its totals and draws its charts in one task, so the charts
//! are there too). The page is polled every 20 ms and each poll reads the
//! page's own clock, so a figure is late by at most one poll. Figures only,
//! not a test; `bench/report.sh` runs it on each history.
//!
//!   dashboard_timing http://127.0.0.1:8080 tk_... [RANGE_DAYS ...]

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Chromium's arguments, as the browser tests use them: headless, with a
/// person's user agent (tally ignores `HeadlessChrome` as automation).
fn capabilities(profile: &std::path::Path) -> serde_json::Map<String, Value> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-dev-shm-usage", "--window-size=1280,900",
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            format!("--user-data-dir={}", profile.display()),
        ]}),
    );
    caps
}

/// Milliseconds from navigation start to the first poll that finds the
/// overview's numbers (at most 30 s).
async fn shown_after(client: &Client) -> Result<f64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = client
            .execute(
                "var e = document.getElementById('t-conversions'); \
                 var app = document.getElementById('app'); \
                 return e && app && !app.hidden && e.textContent.trim() !== '\\u2013' \
                   && e.textContent.trim() !== '' ? performance.now() : null;",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(ms) = v.as_f64() {
            return Ok(ms);
        }
        if Instant::now() > deadline {
            return Err("the overview showed no numbers within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(client: &Client, base: &str, key: &str, ranges: &[String]) -> Result<(), String> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    client
        .goto(&format!("{base}/"))
        .await
        .map_err(|e| e.to_string())?;
    let signed_in = client
        .execute_async(
            "var done = arguments[arguments.length - 1]; \
             fetch('/session', {method: 'POST', credentials: 'same-origin', \
               headers: {'content-type': 'application/json'}, \
               body: JSON.stringify({api_key: arguments[0]})}) \
             .then(function (r) { done(r.status); }, function (e) { done(String(e)); });",
            vec![json!(key)],
        )
        .await
        .map_err(|e| e.to_string())?;
    if signed_in != json!(200) && signed_in != json!(201) && signed_in != json!(204) {
        return Err(format!("sign-in answered {signed_in}"));
    }
    for range in ranges {
        let mut times = Vec::with_capacity(runs);
        // One warm-up load, then the measured ones.
        for i in 0..=runs {
            client
                .goto(&format!("{base}/"))
                .await
                .map_err(|e| e.to_string())?;
            if range != "30" {
                // The range picker is part of the page: choosing another
                // range reloads the overview, so time from that choice.
                shown_after(client).await?;
                let picked = client
                    .execute(
                        "document.getElementById('t-conversions').textContent = '\\u2013'; \
                         var t = performance.now(); var s = document.getElementById('range'); \
                         s.value = arguments[0]; s.dispatchEvent(new Event('change')); return t;",
                        vec![json!(range)],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let from = picked.as_f64().unwrap_or(0.0);
                let at = shown_after(client).await?;
                if i > 0 {
                    times.push(at - from);
                }
            } else {
                let at = shown_after(client).await?;
                if i > 0 {
                    times.push(at);
                }
            }
        }
        let shown = client
            .find(Locator::Css("#t-conversions"))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let how = if range == "30" {
            "from navigation (the default range)"
        } else {
            "from choosing the range"
        };
        println!(
            "dashboard overview, last {range} days: numbers shown {median:.0} ms {how} (median of {runs}; conversions shown: {shown})"
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(base), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: dashboard_timing BASE_URL API_KEY [RANGE_DAYS ...]");
        std::process::exit(2);
    };
    let mut ranges: Vec<String> = args.collect();
    if ranges.is_empty() {
        ranges.push("30".into());
    }
    let Ok(driver) = std::env::var("TALLY_TEST_CHROMEDRIVER") else {
        println!("dashboard: skipped (TALLY_TEST_CHROMEDRIVER not set)");
        return;
    };
    let profile = tempfile::tempdir().expect("profile dir");
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities(profile.path()))
        .connect(&driver)
        .await
        .expect("chromedriver starts a session");
    let out = run(&client, &base, &key, &ranges).await;
    let _ = client.close().await;
    if let Err(e) = out {
        eprintln!("dashboard: {e}");
        std::process::exit(1);
    }
}
