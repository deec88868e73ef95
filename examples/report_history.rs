//! A shop's ad history for the report benchmark, written straight into an
//! archive directory in the archive's object format, so `tally replay`
//! counts it as it would count real history. `bench/report.sh` runs it.
//!
//! Shape: every visitor lands from ads 1-3 times over the last `DAYS` UTC
//! days (today included, nothing after now), with utm source, medium,
//! campaign and content (6 sources, 3 mediums, 12 campaigns, 20 ads, a
//! few campaigns far busier than others); some landings are followed by
//! an untagged page view; 25% of visitors sign up and, independently,
//! 10% buy (one order each, a value of 10-250) some time after one of
//! their landings. Ids are UUID v7 whose time is the hit's `received_at`,
//! as the collector makes them.
//!
//! Prints one JSON object: the days covered and what reports over them
//! must count (conversions, value, landings), for the last 30 days and
//! for all of them, so the benchmark can check the answers it times.
//!
//!   SITE=s_... VISITORS=200000 ARCHIVE_DIR=data/archive \
//!     cargo run --release --example report_history write
//!   CASSANDRA_CONTACT_POINTS=127.0.0.1:9042 \
//!     cargo run --release --example report_history drop-keyspace NAME

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally::archive::local::LocalArchive;
use tally::archive::{format, Archive};
use tally::domain::{Hit, HitLines, RawHit, Stamp};
use uuid::Uuid;

/// Hits encoded into objects at once (the archiver's default batch).
const CHUNK: usize = 10_000;
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                  Chrome/131.0 Safari/537.36";

/// (source, medium) of each source.
const SOURCES: [(&str, &str); 6] = [
    ("google", "cpc"),
    ("bing", "cpc"),
    ("facebook", "paid_social"),
    ("instagram", "paid_social"),
    ("tiktok", "paid_social"),
    ("newsletter", "email"),
];
/// (name, source index, relative weight): two campaigns per source.
const CAMPAIGNS: [(&str, usize, u32); 12] = [
    ("brand-search", 0, 30),
    ("generic-shoes", 0, 20),
    ("brand-bing", 1, 6),
    ("shopping-bing", 1, 4),
    ("prospecting", 2, 14),
    ("retargeting", 2, 8),
    ("stories-spring", 3, 5),
    ("reels-summer", 3, 4),
    ("creators", 4, 4),
    ("spark-ads", 4, 2),
    ("weekly-digest", 5, 2),
    ("black-friday", 5, 1),
];

/// The campaign index of each of the 20 ads: the first 8 campaigns run
/// two ads each, the other 4 one.
fn ad_campaign(ad: usize) -> usize {
    if ad < 16 {
        ad / 2
    } else {
        ad - 8
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Landing,
    Pageview,
    Signup,
    Purchase,
}

/// One hit before it is built: small, so a million visitors' history
/// sorts in memory.
#[derive(Clone, Copy)]
struct Event {
    at_ms: i64,
    visitor: u32,
    kind: Kind,
    /// Ad index for a landing, page for a page view, cents for a purchase.
    detail: u32,
}

#[derive(Default, serde::Serialize)]
struct Expected {
    conversions: u64,
    signups: u64,
    purchases: u64,
    value: f64,
    clicks: u64,
}

impl Expected {
    fn add(&mut self, e: &Event) {
        match e.kind {
            Kind::Landing => self.clicks += 1,
            Kind::Pageview => {}
            Kind::Signup => {
                self.conversions += 1;
                self.signups += 1;
            }
            Kind::Purchase => {
                self.conversions += 1;
                self.purchases += 1;
                self.value += f64::from(e.detail) / 100.0;
            }
        }
    }
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A time between `from` and `to` (milliseconds since the epoch).
fn between(rng: &mut StdRng, from: i64, to: i64) -> i64 {
    if to <= from {
        from
    } else {
        rng.random_range(from..to)
    }
}

fn history(visitors: u32, start_ms: i64, now_ms: i64, seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let total_weight: u32 = CAMPAIGNS.iter().map(|c| c.2).sum();
    let mut events = Vec::with_capacity(visitors as usize * 3);
    let mut landings = Vec::with_capacity(3);
    for visitor in 0..visitors {
        landings.clear();
        for _ in 0..rng.random_range(1..=3) {
            landings.push(between(&mut rng, start_ms, now_ms));
        }
        landings.sort_unstable();
        for &at in &landings {
            let mut pick = rng.random_range(0..total_weight);
            let campaign = CAMPAIGNS
                .iter()
                .position(|c| {
                    let hit = pick < c.2;
                    pick = pick.saturating_sub(c.2);
                    hit
                })
                .unwrap_or(0);
            let ads: Vec<usize> = (0..20).filter(|&a| ad_campaign(a) == campaign).collect();
            let ad = ads[rng.random_range(0..ads.len())];
            events.push(Event {
                at_ms: at,
                visitor,
                kind: Kind::Landing,
                detail: ad as u32,
            });
            if rng.random_bool(0.375) {
                events.push(Event {
                    at_ms: between(&mut rng, at + 1_000, (at + 600_000).min(now_ms)),
                    visitor,
                    kind: Kind::Pageview,
                    detail: rng.random_range(0..500),
                });
            }
        }
        // A conversion comes 1 minute to 3 days after one of the landings,
        // never after now.
        let mut convert = |kind: Kind, detail: u32, rng: &mut StdRng| {
            let after = landings[rng.random_range(0..landings.len())];
            let at = between(rng, after + 60_000, (after + 3 * 86_400_000).min(now_ms));
            events.push(Event {
                at_ms: at,
                visitor,
                kind,
                detail,
            });
        };
        if rng.random_bool(0.25) {
            convert(Kind::Signup, 0, &mut rng);
        }
        if rng.random_bool(0.10) {
            let cents = rng.random_range(1_000..=25_000);
            convert(Kind::Purchase, cents, &mut rng);
        }
    }
    events.sort_unstable_by_key(|e| (e.at_ms, e.visitor, e.kind));
    events
}

fn hit(site: &str, e: &Event) -> anyhow::Result<Hit> {
    let at: DateTime<Utc> = Utc
        .timestamp_millis_opt(e.at_ms)
        .single()
        .ok_or_else(|| anyhow::anyhow!("time out of range"))?;
    let mut raw = RawHit {
        site: Some(site.to_owned()),
        vid: Some(format!("v{:07}", e.visitor)),
        ..Default::default()
    };
    match e.kind {
        Kind::Landing => {
            let ad = e.detail as usize;
            let (campaign, source, _) = CAMPAIGNS[ad_campaign(ad)];
            let (source, medium) = SOURCES[source];
            raw.url = Some(format!(
                "https://shop.example/p/{}?utm_source={source}&utm_medium={medium}\
                 &utm_campaign={campaign}&utm_content=ad-{:02}",
                (e.visitor + e.detail) % 500,
                ad + 1
            ));
        }
        Kind::Pageview => {
            raw.url = Some(format!("https://shop.example/p/{}", e.detail));
            raw.referrer = Some("https://shop.example/".into());
        }
        Kind::Signup => {
            raw.kind = Some("event".into());
            raw.name = Some("signup".into());
            raw.url = Some("https://shop.example/account/welcome".into());
        }
        Kind::Purchase => {
            raw.kind = Some("event".into());
            raw.name = Some("purchase".into());
            raw.url = Some("https://shop.example/checkout/done".into());
            raw.value = Some(f64::from(e.detail) / 100.0);
            raw.currency = Some("EUR".into());
            raw.order_id = Some(format!("o{:07}", e.visitor));
        }
    }
    let stamp = Stamp {
        received_at: at,
        user_agent: Some(UA.into()),
        ip: Some(std::net::IpAddr::from([
            203,
            0,
            113,
            (e.visitor % 250) as u8,
        ])),
        request_id: None,
        keep_full_ip: false,
    };
    let mut hit = Hit::stamp(raw, &stamp)?;
    let ms = u64::try_from(e.at_ms)?;
    hit.id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1_000,
        (ms % 1_000) as u32 * 1_000_000,
    ));
    Ok(hit)
}

async fn write() -> anyhow::Result<()> {
    let site = std::env::var("SITE").map_err(|_| anyhow::anyhow!("set SITE"))?;
    let dir = std::env::var("ARCHIVE_DIR").map_err(|_| anyhow::anyhow!("set ARCHIVE_DIR"))?;
    let visitors: u32 = env_or("VISITORS", 200_000);
    let days: i64 = env_or("DAYS", 90);
    let seed: u64 = env_or("SEED", 21);
    let now = Utc::now();
    let to: NaiveDate = now.date_naive();
    let from = to - Duration::days(days - 1);
    let from_30 = to - Duration::days(29);
    let start_ms = from
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default();
    let events = history(visitors, start_ms, now.timestamp_millis() - 1, seed);

    let mut all = Expected::default();
    let mut last_30 = Expected::default();
    let cut_30 = from_30
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default();
    for e in &events {
        all.add(e);
        if e.at_ms >= cut_30 {
            last_30.add(e);
        }
    }

    let archive = LocalArchive::open(&dir)?;
    let mut objects = 0u64;
    let mut bytes = 0u64;
    for chunk in events.chunks(CHUNK) {
        let hits = chunk
            .iter()
            .map(|e| hit(&site, e))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let lines = HitLines::encode(&hits)?;
        let keys = lines.keys()?;
        for object in format::objects(&keys, &lines, 0..hits.len()) {
            let body = format::encode(&object)?;
            bytes += body.len() as u64;
            objects += 1;
            archive.put(&object.key, body).await?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "visitors": visitors,
            "hits": events.len(),
            "objects": objects,
            "bytes": bytes,
            "from": from.to_string(),
            "to": to.to_string(),
            "from_30": from_30.to_string(),
            "all": all,
            "last_30": last_30,
        })
    );
    Ok(())
}

async fn drop_keyspace(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "not a keyspace name: {name}"
    );
    let points: Vec<String> = std::env::var("CASSANDRA_CONTACT_POINTS")?
        .split(',')
        .map(|p| p.trim().to_owned())
        .collect();
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&points)
        .build()
        .await?;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["write"] => write().await,
        ["drop-keyspace", name] => drop_keyspace(name).await,
        _ => anyhow::bail!("usage: report_history write | drop-keyspace NAME"),
    }
}
