//! The dashboard in headless Chromium, used as a person uses it: by the
//! labels and the text on screen. Same harness as the snippet's browser
//! tests (`TALLY_TEST_CHROMEDRIVER`; skipped without it).
//!
//! With `TALLY_SCREENSHOT_DIR` set, it also saves screenshots of the views
//! at 1280 and 375 px wide there (the README's come from `docs/`).

use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, Locator};
use serde_json::json;

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
    format!("//div[@class='card'][span[normalize-space(.)='{title}']]/b")
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

/// Ad landings from three networks and conversions on two goals.
async fn seed(app: &TestApp) {
    app.create_goal(json!({"name": "Signup", "match": {"event": "signup"}, "value": 49.0}))
        .await;
    app.create_goal(json!({"name": "Purchase", "match": {"url": "/thank-you", "op": "exact"}, "value": 120.0, "model": "linear"}))
        .await;
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
}

#[tokio::test]
async fn sign_in_see_totals_drill_down_create_a_goal_watch_live_and_sign_out() {
    with_browser("dashboard", |client, app, _shop| async move {
        // Arrange
        seed(&app).await;
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
        text_becomes(&client, &card("Conversions"), "6").await;
        text_becomes(&client, &card("Ad clicks"), "9").await;
        text_becomes(&client, &card("Value"), "436").await;
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

        // Drill down: source -> medium -> campaign.
        find(&client, &button("Sources"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &button("google"), Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, &button("cpc"), Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, &button("black-friday"), Duration::from_secs(5)).await;
        find(&client, "//nav[@aria-label='Drill-down']//*[normalize-space(.)='source: google']", Duration::from_secs(1)).await;
        find(&client, &button("Conversions ▼"), Duration::from_secs(1)).await;
        screenshot(&client, "dashboard-sources-1280").await;

        find(&client, &button("Models"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//table[@id='models-table']//th[normalize-space(.)='google']", Duration::from_secs(5)).await;
        // newsletter opened v1's path, google closed it: first click != last click.
        text_becomes(&client, "//table[@id='models-table']//tr[th='newsletter']/td[1]", "2").await;
        text_becomes(&client, "//table[@id='models-table']//tr[th='newsletter']/td[2]", "3").await;
        screenshot(&client, "dashboard-models-1280").await;

        // Create a goal from the form.
        find(&client, &button("Goals"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, &field("Name"), Duration::from_secs(5)).await.send_keys("Newsletter").await.unwrap();
        find(&client, &field("Event name"), Duration::from_secs(1)).await.send_keys("subscribe").await.unwrap();
        find(&client, &field("Value"), Duration::from_secs(1)).await.send_keys("3").await.unwrap();
        find(&client, &button("Save goal"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//table[@id='goals-table']//th[normalize-space(.)='Newsletter']", Duration::from_secs(5)).await;
        let goals = app.api(reqwest::Method::GET, "/api/v1/goals").send().await.unwrap().json::<serde_json::Value>().await.unwrap();
        assert!(goals.as_array().unwrap().iter().any(|g| g["name"] == "Newsletter" && g["match"]["event"] == "subscribe"), "{goals}");
        screenshot(&client, "dashboard-goals-1280").await;

        find(&client, &button("Conversions"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//details/summary[contains(., 'Signup')]", Duration::from_secs(5)).await.click().await.unwrap();
        find(&client, "//details[@open]//td[normalize-space(.)='google' or normalize-space(.)='newsletter' or normalize-space(.)='facebook']", Duration::from_secs(2)).await;
        screenshot(&client, "dashboard-explain-1280").await;

        // Live: a hit posted to /collect shows up within 2 s.
        find(&client, &button("Live"), Duration::from_secs(1)).await.click().await.unwrap();
        find(&client, "//*[normalize-space(.)='Connected.']", Duration::from_secs(5)).await;
        // The page notes when the row appears (same clock as ours), so the
        // WebDriver round trips of polling are not part of the figure.
        client
            .execute(
                "window.seenAt = null; new MutationObserver(function (_, o) {\
                   if (document.getElementById('live-list').textContent.indexOf('/live-check') >= 0) { window.seenAt = Date.now(); o.disconnect(); }\
                 }).observe(document.getElementById('live-list'), {childList: true, subtree: true});",
                vec![],
            )
            .await
            .expect("observer installed");
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        app.collect_ok(&app.pageview("https://shop.example/live-check?gclid=live1", "v8")).await;
        find(&client, "//ol[@id='live-list']/li[contains(., '/live-check')]", Duration::from_secs(5)).await;
        let seen_ms = client.execute("return window.seenAt", vec![]).await.unwrap().as_i64().expect("row seen");
        let latency = seen_ms - sent_ms;
        eprintln!("dashboard: live hit on screen {latency} ms after the POST was sent");
        assert!(latency < 2_000, "the hit took {latency} ms to appear");
        text_becomes(&client, "//b[@id='today-clicks']", "10").await;
        app.collect_ok(&json!({"site": app.site_key, "type": "event", "name": "signup", "vid": "v8"}))
            .await;
        find(&client, "//ol[@id='live-list']/li[contains(., 'conversion worth 49')]", Duration::from_secs(5)).await;
        text_becomes(&client, "//b[@id='today-conversions']", "7").await;
        screenshot(&client, "dashboard-live-1280").await;

        // Readable at 375 px.
        client.set_window_size(375, 900).await.expect("window size");
        find(&client, &button("Overview"), Duration::from_secs(1)).await.click().await.unwrap();
        text_becomes(&client, &card("Conversions"), "7").await;
        client.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        let overflow = client
            .execute("return document.documentElement.scrollWidth - window.innerWidth", vec![])
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "the page scrolls sideways at 375 px by {overflow}");
        screenshot(&client, "dashboard-375").await;
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
