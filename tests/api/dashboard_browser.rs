//! The dashboard in headless Chromium, used as a person uses it: by the
//! labels and the text on screen. Same harness as the snippet's browser
//! tests (`TALLY_TEST_CHROMEDRIVER`; skipped without it).
//!
//! With `TALLY_SCREENSHOT_DIR` set, it also saves screenshots of the views
//! at 1280 and 375 px wide there (the README's come from `docs/`).

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use fantoccini::elements::Element;
use fantoccini::{Client, Locator};
use serde_json::json;
use tally::domain::{Conversion, Credit, Model, Touchpoint};
use uuid::Uuid;

use crate::browser::with_browser;
use crate::helpers::TestApp;

/// Waits up to `within` for an element at `xpath`.
async fn find(client: &Client, xpath: &str, within: Duration) -> Element {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(e) = client.find(Locator::XPath(xpath)).await {
            if e.is_displayed().await.unwrap_or(false) {
                return e;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing visible at {xpath} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The button whose visible text is `text`.
fn button(text: &str) -> String {
    format!("//button[normalize-space(.)='{text}']")
}

/// The form control labelled `label` (by `for` or by nesting).
fn field(label: &str) -> String {
    format!(
        "//*[@id=//label[normalize-space(text())='{label}']/@for] | //label[normalize-space(text()[1])='{label}']//*[self::input or self::select]"
    )
}

/// The figure shown in the card titled `title`.
fn card(title: &str) -> String {
    format!("//span[normalize-space(.)='{title}']/following-sibling::b[1]")
}

/// The table of the view headed `heading`.
fn table_under(heading: &str) -> String {
    format!("//section[h2[normalize-space(.)='{heading}']]//table")
}

/// The list of live events (the list of the view headed "Live").
const LIVE_LIST: &str = "//section[h2[normalize-space(.)='Live']]//ol";

/// The line that starts with "Today:" above every view.
const TODAY_LINE: &str = "//*[starts-with(normalize-space(.), 'Today:') and b]";

/// Waits until the text at `xpath` contains `want`.
async fn text_contains(client: &Client, xpath: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = match client.find(Locator::XPath(xpath)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if got.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{xpath} shows `{got}`, without `{want}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_becomes(client: &Client, xpath: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = match client.find(Locator::XPath(xpath)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{xpath} shows `{got}`, not `{want}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(client: &Client, name: &str) {
    let Ok(dir) = std::env::var("TALLY_SCREENSHOT_DIR") else {
        return;
    };
    // Let charts finish drawing after a resize.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
        .expect("write screenshot");
}

/// What the overview should show for the last 30 days after [`seed`].
struct Seeded {
    clicks: u64,
    conversions: u64,
    value: f64,
}

/// A number as the page prints it (`toLocaleString('en')`).
fn en(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count as the page prints it (`toLocaleString('en')`, at most two
/// decimals): credited conversions are fractional under multi-touch models.
fn en_num(x: f64) -> String {
    let fixed = format!("{x:.2}");
    let (int, frac) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let frac = frac.trim_end_matches('0');
    let int = en(int.parse().unwrap_or(0));
    if frac.is_empty() {
        int
    } else {
        format!("{int}.{frac}")
    }
}

/// Money as the page prints it: always two decimals, grouped thousands.
fn money(x: f64) -> String {
    let fixed = format!("{x:.2}");
    let (int, frac) = fixed.split_once('.').unwrap_or((&fixed, "00"));
    format!("{}.{frac}", en(int.parse().unwrap_or(0)))
}

/// Past conversions are worth hundreds of thousands, so the charts' axes
/// and the tables show large figures (with cents, to check the decimals).
const PAST_SIGNUP_VALUE: f64 = 124_999.5;
const PAST_PURCHASE_VALUE: f64 = 1_250_000.25;

/// Four weeks of history written straight to the store (the collector
/// stamps hits with the server's clock, so it cannot make past days), so
/// the chart has a shape; then today's hits through `/collect`.
async fn history(app: &TestApp, signup: Uuid, purchase: Uuid) -> Seeded {
    let mut seeded = Seeded {
        clicks: 0,
        conversions: 0,
        value: 0.0,
    };
    let today = Utc::now().date_naive();
    for d in 1..=29u32 {
        let day = today - chrono::Duration::days(i64::from(d));
        let at = Utc.from_utc_datetime(&day.and_hms_opt(10, 0, 0).unwrap());
        let mut tps = Vec::new();
        for i in 0..(2 + d % 3) {
            tps.push(touchpoint(
                app,
                &format!("g{d}-{i}"),
                at,
                "google",
                "cpc",
                "search",
            ));
        }
        for i in 0..(1 + d % 2) {
            tps.push(touchpoint(
                app,
                &format!("f{d}-{i}"),
                at,
                "facebook",
                "cpc",
                "retargeting",
            ));
        }
        app.store.put_touchpoints(&tps).await.unwrap();
        seeded.clicks += tps.len() as u64;
        let mut converting: Vec<(&Touchpoint, Uuid, f64, Model)> = tps
            .iter()
            .filter(|t| t.source == "google")
            .take((d % 3) as usize)
            .map(|t| (t, signup, PAST_SIGNUP_VALUE, Model::LastClick))
            .collect();
        if d.is_multiple_of(4) {
            let t = tps.iter().find(|t| t.source == "facebook").unwrap();
            converting.push((t, purchase, PAST_PURCHASE_VALUE, Model::Linear));
        }
        for (t, goal, value, model) in converting {
            let c = Conversion {
                hit_id: Uuid::now_v7(),
                goal_id: goal,
                site: app.site_key.clone(),
                vid: t.vid.clone(),
                at: at + chrono::Duration::hours(1),
                value,
                currency: None,
                order_id: None,
                model,
                window_days: 30,
                credits: vec![Credit {
                    touchpoint: Some(t.hit_id),
                    source: t.source.clone(),
                    medium: t.medium.clone(),
                    campaign: t.campaign.clone(),
                    ad: None,
                    channel: t.channel.clone(),
                    at: Some(t.at),
                    credit: 1.0,
                }],
                user_agent: None,
                page_url: None,
            };
            // The store credits it from the touchpoints it holds.
            let candidate = tally::store::Candidate {
                conversion: c,
                once_per_visitor: false,
            };
            app.store.record_batch(&[], &[candidate]).await.unwrap();
            seeded.conversions += 1;
            seeded.value += value;
        }
    }
    seeded
}

fn touchpoint(
    app: &TestApp,
    vid: &str,
    at: DateTime<Utc>,
    source: &str,
    medium: &str,
    campaign: &str,
) -> Touchpoint {
    Touchpoint {
        hit_id: Uuid::now_v7(),
        site: app.site_key.clone(),
        vid: vid.into(),
        at,
        source: source.into(),
        medium: Some(medium.into()),
        campaign: Some(campaign.into()),
        ad: None,
        channel: tally::domain::attribution::channel_of_labels(
            source,
            Some(medium),
            Some(campaign),
        ),
        click_id: None,
    }
}

/// History, then today: ad landings from four sources and conversions on
/// two goals. Returns the last 30 days' totals.
async fn seed(app: &TestApp) -> Seeded {
    let signup = app
        .create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 49.0}))
        .await;
    let purchase = app.create_goal(json!({"name": "Purchase", "match": {"url": "/thank-you", "op": "exact"}, "value": 120.0, "model": "linear"}))
        .await;
    let id = |g: &serde_json::Value| Uuid::parse_str(g["id"].as_str().unwrap()).unwrap();
    let mut seeded = history(app, id(&signup), id(&purchase)).await;
    // Today, below: 9 clicks, 4 signups and 2 purchases.
    seeded.clicks += 9;
    seeded.conversions += 6;
    seeded.value += f64::from(4 * 49 + 2 * 120);
    // v1 and v2 clicked twice before converting, so the models differ.
    let landings = [
        (
            "v1",
            "utm_source=newsletter&utm_medium=email&utm_campaign=november",
        ),
        ("v2", "fbclid=f0&utm_campaign=retargeting"),
        ("v1", "gclid=g1&utm_campaign=black-friday&ad_id=ad-42"),
        ("v2", "gclid=g2&utm_campaign=black-friday&ad_id=ad-42"),
        ("v3", "gclid=g3&utm_campaign=brand"),
        ("v4", "fbclid=f1&utm_campaign=retargeting"),
        ("v5", "fbclid=f2&utm_campaign=retargeting"),
        (
            "v6",
            "utm_source=newsletter&utm_medium=email&utm_campaign=november",
        ),
        ("v7", "msclkid=m1"),
    ];
    for (vid, q) in landings {
        app.collect_ok(&app.pageview(&format!("https://shop.example/?{q}"), vid))
            .await;
    }
    for vid in ["v1", "v3", "v4", "v6"] {
        app.collect_ok(
            &json!({"site": app.site_key, "type": "event", "name": "signup", "vid": vid}),
        )
        .await;
    }
    for vid in ["v2", "v6"] {
        app.collect_ok(&app.pageview("https://shop.example/thank-you", vid))
            .await;
    }
    app.wait_for_conversions("source", 6.0).await;
    seeded
}

#[tokio::test]
async fn sign_in_see_totals_drill_down_create_a_goal_watch_live_and_sign_out() {
    with_browser("dashboard", |client, app, _shop| async move {
        // Arrange
        let seeded = seed(&app).await;
        client.set_window_size(1280, 1000).await.expect("window size");

        // Act + assert: sign in with the key typed into "API key".
        client.goto(&app.url("/")).await.expect("dashboard loads");
        let key = find(&client, &field("API key"), Duration::from_secs(5)).await;
        screenshot(&client, "dashboard-signin-1280").await;
        key.send_keys(&app.api_key).await.expect("type the key");
        find(&client, &button("Sign in"), Duration::from_secs(1))
            .await
            .click()
            .await
            .expect("sign in");

        // Seeded totals and a drawn chart.
        find(&client, &button("Sign out"), Duration::from_secs(5)).await;
        text_becomes(&client, &card("Conversions"), &en(seeded.conversions)).await;
        text_becomes(&client, &card("Ad clicks"), &en(seeded.clicks)).await;
        text_becomes(&client, &card("Value"), &money(seeded.value)).await;
        find(
            &client,
            "//figure[figcaption='Conversions per day']//canvas",
            Duration::from_secs(5),
        )
        .await;
        let stored = client
            .execute("return document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)", vec![])
            .await
            .expect("script runs");
        assert!(
            !stored.as_str().unwrap_or_default().contains(&app.api_key),
            "the key must not be readable by scripts: {stored}"
        );
        screenshot(&client, "dashboard-1280").await;

        // Drill down: channel -> source -> medium -> campaign.
        find(&client, &button("Sources"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &button("Paid Search"), Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, &button("google"), Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, &button("cpc"), Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, &button("black-friday"), Duration::from_secs(5)).await;
        find(&client, "//nav[@aria-label='Drill-down']//*[normalize-space(.)='source: google']", Duration::from_secs(1)).await;
        find(&client, &button("Conversions ▼"), Duration::from_secs(1)).await;
        screenshot(&client, "dashboard-sources-1280").await;
        // Download CSV fetches the server's CSV of the level shown (the
        // page's fetch is watched; the file itself goes to the browser).
        client
            .execute(
                "window.csvSeen = null; var f = window.fetch; window.fetch = function (u, o) {\
                   return f(u, o).then(function (r) {\
                     if (String(u).indexOf('/api/v1/conversions.csv') === 0) r.clone().text().then(function (t) { window.csvSeen = { url: String(u), status: r.status, text: t }; });\
                     return r; }); };",
                vec![],
            )
            .await
            .expect("fetch watched");
        find(&client, &button("Download CSV"), Duration::from_secs(1)).await.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let csv = loop {
            let seen = client.execute("return window.csvSeen", vec![]).await.unwrap();
            if !seen.is_null() {
                break seen;
            }
            assert!(Instant::now() < deadline, "Download CSV fetched nothing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(csv["status"], 200, "{csv}");
        assert!(csv["url"].as_str().unwrap().contains("group_by=channel,source,medium,campaign"), "{csv}");
        assert!(csv["text"].as_str().unwrap().starts_with("channel,source,medium,campaign,currency,clicks,conversions,value\r\n"), "{csv}");
        // Money has two decimals in every row.
        for cell in client.find_all(Locator::XPath(&format!("{}//tbody/tr/td[4]", table_under("Where conversions come from")))).await.unwrap() {
            let v = cell.text().await.unwrap();
            assert!(v.len() > 3 && v.as_bytes()[v.len() - 3] == b'.', "value `{v}` without two decimals");
        }

        find(&client, &button("Models"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &format!("{}//th[normalize-space(.)='google']", table_under("Model comparison")), Duration::from_secs(5)).await;
        // newsletter opened v1's path, google closed it: first click != last click.
        text_becomes(&client, &format!("{}//tr[th='newsletter']/td[1]", table_under("Model comparison")), "2").await;
        text_becomes(&client, &format!("{}//tr[th='newsletter']/td[2]", table_under("Model comparison")), "3").await;
        screenshot(&client, "dashboard-models-1280").await;

        // Create a goal from the form.
        find(&client, &button("Goals"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &field("Name"), Duration::from_secs(5)).await.send_keys("Newsletter").await.unwrap();
        find(&client, &field("Event name"), Duration::from_secs(1)).await.send_keys("subscribe").await.unwrap();
        find(&client, &field("Value"), Duration::from_secs(1)).await.send_keys("3").await.unwrap();
        find(&client, &button("Save goal"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &format!("{}//th[normalize-space(.)='Newsletter']", table_under("Goals")), Duration::from_secs(5)).await;
        let goals = app.api(reqwest::Method::GET, "/api/v1/goals").send().await.unwrap().json::<serde_json::Value>().await.unwrap();
        assert!(goals.as_array().unwrap().iter().any(|g| g["name"] == "Newsletter" && g["match"]["event"] == "subscribe"), "{goals}");
        screenshot(&client, "dashboard-goals-1280").await;

        find(&client, &button("Conversions"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//details/summary[contains(., 'Signup')]", Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, "//details[@open]//td[normalize-space(.)='google' or normalize-space(.)='newsletter' or normalize-space(.)='facebook']", Duration::from_secs(2)).await;
        // Each touchpoint shows its channel.
        find(&client, "//details[@open]//thead/tr/th[2][normalize-space(.)='Channel']", Duration::from_secs(1)).await;
        find(&client, "//details[@open]//tbody/tr/td[1][normalize-space(.)='Paid Search' or normalize-space(.)='Email' or normalize-space(.)='Paid Social']", Duration::from_secs(1)).await;
        // Newest first across days: today's six, then yesterday's signup.
        text_contains(&client, "(//section[h2[normalize-space(.)='Latest conversions']]//details/summary)[7]", "Signup · 124,999.50").await;
        screenshot(&client, "dashboard-explain-1280").await;

        // Live: a hit posted to /collect shows up within 2 s.
        find(&client, &button("Live"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//*[normalize-space(.)='Connected.']", Duration::from_secs(5)).await;
        // The page notes when the row appears (same clock as ours), so the
        // WebDriver round trips of polling are not part of the figure.
        client
            .execute(
                "var list = arguments[0]; window.seenAt = null; new MutationObserver(function (_, o) {\
                   if (list.textContent.indexOf('/live-check') >= 0) { window.seenAt = Date.now(); o.disconnect(); }\
                 }).observe(list, {childList: true, subtree: true});",
                vec![serde_json::to_value(client.find(Locator::XPath(LIVE_LIST)).await.expect("the live list (empty, so not yet visible)")).expect("element as an argument")],
            )
            .await
            .expect("observer installed");
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        app.collect_ok(&app.pageview("https://shop.example/live-check?gclid=live1", "v8")).await;
        find(&client, &format!("{LIVE_LIST}/li[contains(., '/live-check')]"), Duration::from_secs(5)).await;
        let seen_ms = client.execute("return window.seenAt", vec![]).await.unwrap().as_i64().expect("row seen");
        let latency = seen_ms - sent_ms;
        eprintln!("dashboard: live hit on screen {latency} ms after the POST was sent");
        assert!(latency < 2_000, "the hit took {latency} ms to appear");
        text_contains(&client, TODAY_LINE, "Today: 10 clicks").await;
        app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v8"}))
            .await;
        find(&client, &format!("{LIVE_LIST}/li[contains(., 'conversion worth 49.00')]"), Duration::from_secs(5)).await;
        text_contains(&client, TODAY_LINE, "7 conversions").await;
        screenshot(&client, "dashboard-live-1280").await;

        // Readable at 375 px.
        client.set_window_size(375, 900).await.expect("window size");
        find(&client, &button("Overview"), Duration::from_secs(1)).await.click().await.unwrap();
        text_becomes(&client, &card("Conversions"), &en(seeded.conversions + 1)).await;
        client.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        let overflow = client
            .execute("return document.documentElement.scrollWidth - window.innerWidth", vec![])
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "the page scrolls sideways at 375 px by {overflow}");
        screenshot(&client, "dashboard-375").await;
        find(&client, &button("Sources"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &button("Download CSV"), Duration::from_secs(5)).await;
        screenshot(&client, "dashboard-sources-375").await;
        find(&client, &button("Conversions"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//details/summary[contains(., 'Signup')]", Duration::from_secs(5)).await;
        screenshot(&client, "dashboard-explain-375").await;
        client.set_window_size(1280, 1000).await.expect("window size");

        // Sign out, then be refused.
        find(&client, &button("Sign out"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &field("API key"), Duration::from_secs(5)).await;
        let status = client
            .execute_async(
                "var done = arguments[arguments.length - 1];\
                 fetch('/api/v1/goals', {credentials: 'same-origin'}).then(function (r) { done(r.status); });",
                vec![],
            )
            .await
            .expect("fetch runs");
        assert_eq!(status, json!(401));
    })
    .await;
}

/// Signs in through the form with the app's key; waits for the app.
async fn sign_in(client: &Client, app: &TestApp) {
    client.goto(&app.url("/")).await.expect("dashboard loads");
    find(client, &field("API key"), Duration::from_secs(5))
        .await
        .send_keys(&app.api_key)
        .await
        .expect("type the key");
    find(client, &button("Sign in"), Duration::from_secs(1))
        .await
        .click()
        .await
        .expect("sign in");
    find(client, &button("Sign out"), Duration::from_secs(5)).await;
}

/// The report's rows for the dashboard's default range (the last 30 UTC
/// days), summed per `key` (a group in two currencies is two rows).
async fn report_by(
    app: &TestApp,
    query: &str,
    key: impl Fn(&serde_json::Value) -> String,
) -> std::collections::BTreeMap<String, (u64, f64, f64)> {
    let to = Utc::now().date_naive();
    let from = to - chrono::Duration::days(29);
    let report: serde_json::Value = app
        .api(
            reqwest::Method::GET,
            &format!("/api/v1/conversions?from={from}&to={to}&{query}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for row in report["rows"].as_array().expect("rows") {
        let e: &mut (u64, f64, f64) = out.entry(key(row)).or_default();
        e.0 += row["clicks"].as_u64().unwrap_or(0);
        e.1 += row["conversions"].as_f64().unwrap();
        e.2 += row["value"].as_f64().unwrap();
    }
    out
}

/// The names in the first column of `table`'s body, top to bottom.
async fn first_column(client: &Client, table: &str) -> Vec<String> {
    let mut names = Vec::new();
    for cell in client
        .find_all(Locator::XPath(&format!("{table}//tbody/tr/th")))
        .await
        .unwrap()
    {
        names.push(cell.text().await.unwrap());
    }
    names
}

/// Waits until the table under `heading` shows, for each name, the clicks,
/// conversions and value the API answered, and no other rows.
async fn table_shows(
    client: &Client,
    heading: &str,
    want: &std::collections::BTreeMap<String, (u64, f64, f64)>,
) {
    let table = table_under(heading);
    for (name, (clicks, conversions, value)) in want {
        let row = format!("{table}//tbody/tr[th[normalize-space(.)='{name}']]");
        text_becomes(client, &format!("{row}/td[1]"), &en(*clicks)).await;
        text_becomes(client, &format!("{row}/td[2]"), &en_num(*conversions)).await;
        text_becomes(client, &format!("{row}/td[4]"), &money(*value)).await;
    }
    let mut shown = first_column(client, &table).await;
    shown.sort();
    assert_eq!(
        shown,
        want.keys().cloned().collect::<Vec<_>>(),
        "{heading} lists other rows than the API"
    );
}

#[tokio::test]
async fn channels_view_and_the_sources_drill_down_show_the_reports_channels() {
    with_browser("dashboard-channels", |client, app, _shop| async move {
        // Arrange
        seed(&app).await;
        client.set_window_size(1280, 1000).await.expect("window size");
        let channel = |row: &serde_json::Value| row["channel"].as_str().unwrap_or("(not set)").to_owned();
        let by_channel = report_by(&app, "group_by=channel", channel).await;
        assert!(by_channel.len() >= 3, "the seed spans several channels: {by_channel:?}");
        sign_in(&client, &app).await;

        // Act + assert: the Channels view shows the API's figures per channel.
        find(&client, &button("Channels"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//section[h2[normalize-space(.)='Channels']]//p[contains(., \"GA4's default channel group\")]", Duration::from_secs(5)).await;
        table_shows(&client, "Channels", &by_channel).await;
        find(&client, &button("Conversions ▼"), Duration::from_secs(1)).await;
        screenshot(&client, "dashboard-channels-1280").await;

        // Sortable like the Sources table: by name, then by clicks.
        find(&client, &button("Channel"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &button("Channel ▲"), Duration::from_secs(5)).await;
        let names = first_column(&client, &table_under("Channels")).await;
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "sorted by channel, A first");
        find(&client, &button("Clicks"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &button("Clicks ▼"), Duration::from_secs(5)).await;
        let most = by_channel.iter().max_by_key(|(_, v)| v.0).map(|(k, _)| k.clone()).unwrap();
        text_becomes(&client, &format!("({}//tbody/tr/th)[1]", table_under("Channels")), &most).await;

        // The goal filter narrows the figures to one goal's conversions.
        let goals: serde_json::Value = app.api(reqwest::Method::GET, "/api/v1/goals").send().await.unwrap().json().await.unwrap();
        let purchase = goals.as_array().unwrap().iter().find(|g| g["name"] == "Purchase").unwrap()["id"].as_str().unwrap().to_owned();
        let purchases = report_by(&app, &format!("goal={purchase}&group_by=channel"), channel).await;
        find(&client, &field("Goal"), Duration::from_secs(1)).await.select_by_label("Purchase").await.unwrap();
        table_shows(&client, "Channels", &purchases).await;

        // Sources starts at the channels; a channel opens its sources.
        find(&client, &button("Sources"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//nav[@aria-label='Drill-down']/span[normalize-space(.)='All channels']", Duration::from_secs(5)).await;
        find(&client, &format!("{}//thead//th[1][normalize-space(.)='Channel']", table_under("Where conversions come from")), Duration::from_secs(5)).await;
        table_shows(&client, "Where conversions come from", &by_channel).await;
        let paid_search: std::collections::BTreeMap<_, _> = report_by(&app, "group_by=channel,source", |row| {
            format!("{}/{}", channel(row), row["source"].as_str().unwrap_or("(not set)"))
        })
        .await
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("Paid Search/").map(|s| (s.to_owned(), v)))
        .collect();
        find(&client, &button("Paid Search"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//nav[@aria-label='Drill-down']//*[normalize-space(.)='channel: Paid Search']", Duration::from_secs(5)).await;
        find(&client, &format!("{}//thead//th[1][normalize-space(.)='Source']", table_under("Where conversions come from")), Duration::from_secs(5)).await;
        table_shows(&client, "Where conversions come from", &paid_search).await;
        assert!(paid_search.contains_key("google"), "{paid_search:?}");
        // "All channels" leads back.
        find(&client, &button("All channels"), Duration::from_secs(1)).await.click().await.unwrap();
        table_shows(&client, "Where conversions come from", &by_channel).await;
    })
    .await;
}

#[tokio::test]
async fn values_in_two_currencies_are_shown_each_with_its_currency_and_never_summed() {
    with_browser("dashboard-currencies", |client, app, _shop| async move {
        // Arrange: 10 EUR from a paid click, 10 USD and 1,234 EUR direct.
        app.create_goal(serde_json::json!({"name": "Purchase", "match": {"event": "purchase"}}))
            .await;
        app.collect_ok(&app.pageview("https://shop.example/?gclid=g1", "a"))
            .await;
        for (vid, value, currency) in [("a", 10.0, "EUR"), ("b", 10.0, "USD"), ("c", 1234.0, "EUR")]
        {
            app.collect_ok(
                &serde_json::json!({"site": app.site_key, "type": "event", "name": "purchase",
                                               "vid": vid, "value": value, "currency": currency}),
            )
            .await;
        }
        app.wait_for_conversions("", 3.0).await;
        sign_in(&client, &app).await;

        // Assert: the Value card shows each currency's sum, none of 1,254.
        text_becomes(&client, &card("Value"), "€1,244.00 · $10.00").await;
        text_becomes(&client, &card("Value per click"), "€1,244.00 · $10.00").await;

        // Channels: Direct holds both currencies side by side; a group's
        // clicks count once however many currencies it has.
        find(&client, &button("Channels"), Duration::from_secs(1))
            .await
            .click()
            .await
            .unwrap();
        let row = |name: &str| {
            format!(
                "{}//tbody/tr[th[normalize-space(.)='{name}']]",
                table_under("Channels")
            )
        };
        text_becomes(
            &client,
            &format!("{}/td[4]", row("Direct")),
            "€1,234.00 · $10.00",
        )
        .await;
        text_becomes(&client, &format!("{}/td[2]", row("Direct")), "2").await;
        text_becomes(&client, &format!("{}/td[4]", row("Paid Search")), "€10.00").await;
        text_becomes(&client, &format!("{}/td[1]", row("Paid Search")), "1").await;
        text_becomes(&client, &format!("{}/td[5]", row("Paid Search")), "€10.00").await;
    })
    .await;
}
