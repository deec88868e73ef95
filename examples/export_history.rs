//! A history of ad clicks and purchases for the export benchmark, written
//! straight into an archive directory in the archive's object format, so
//! `tally replay` counts it as it would count real history.
//! `bench/export.sh` runs it.
//!
//! Shape: every visitor lands once from an ad with a click id (`gclid`
//! 40%, `gbraid` 10%, `msclkid` 25%, `fbclid` 25%) at a random time of the
//! last `DAYS` UTC days, then buys once (its own order, a value of
//! 10-250 EUR) 1-120 minutes later (never after now): one conversion per
//! visitor. Ids are UUID v7 whose time is the hit's `received_at`.
//!
//! Prints one JSON object: the days covered, the hits, and the
//! conversions per network, so the benchmark can check each export.
//!
//!   SITE=s_... VISITORS=100000 ARCHIVE_DIR=data/archive \
//!     cargo run --release --example export_history

use chrono::{Duration, NaiveDate, Utc};
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
/// (click id parameter, share in percent).
const CLICKS: [(&str, u32); 4] = [
    ("gclid", 40),
    ("gbraid", 10),
    ("msclkid", 25),
    ("fbclid", 25),
];

struct Event {
    at_ms: i64,
    visitor: u32,
    /// `Some(click index)` for a landing, `None` for the purchase.
    click: Option<usize>,
    cents: u32,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hit(site: &str, e: &Event) -> anyhow::Result<Hit> {
    let mut raw = RawHit {
        site: Some(site.to_owned()),
        vid: Some(format!("v{:08}", e.visitor)),
        ..Default::default()
    };
    match e.click {
        Some(i) => {
            raw.url = Some(format!(
                "https://shop.example/p/{}?{}=c{:08}x{}",
                e.visitor % 500,
                CLICKS[i].0,
                e.visitor,
                e.at_ms
            ));
        }
        None => {
            raw.kind = Some("event".into());
            raw.name = Some("purchase".into());
            raw.url = Some("https://shop.example/checkout/done".into());
            raw.value = Some(f64::from(e.cents) / 100.0);
            raw.currency = Some("EUR".into());
            raw.order_id = Some(format!("o{:08}", e.visitor));
        }
    }
    let stamp = Stamp {
        received_at: chrono::DateTime::from_timestamp_millis(e.at_ms)
            .ok_or_else(|| anyhow::anyhow!("time out of range"))?,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let site = std::env::var("SITE").map_err(|_| anyhow::anyhow!("set SITE"))?;
    let dir = std::env::var("ARCHIVE_DIR").map_err(|_| anyhow::anyhow!("set ARCHIVE_DIR"))?;
    let visitors: u32 = env_or("VISITORS", 100_000);
    let days: i64 = env_or("DAYS", 30);
    let mut rng = StdRng::seed_from_u64(env_or("SEED", 24));
    let now = Utc::now();
    let to: NaiveDate = now.date_naive();
    let from = to - Duration::days(days - 1);
    let start_ms = from
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default();
    let end_ms = now.timestamp_millis() - 1;
    let mut per_network = [0u64; 4];
    let mut events = Vec::with_capacity(visitors as usize * 2);
    for v in 0..visitors {
        let roll = rng.random_range(0..100u32);
        let mut acc = 0;
        let click = CLICKS
            .iter()
            .position(|(_, share)| {
                acc += share;
                roll < acc
            })
            .unwrap_or(0);
        per_network[click] += 1;
        let landed = rng.random_range(start_ms..end_ms - 60_000);
        let bought = (landed + rng.random_range(60_000..7_200_000)).min(end_ms);
        events.push(Event {
            at_ms: landed,
            visitor: v,
            click: Some(click),
            cents: 0,
        });
        events.push(Event {
            at_ms: bought,
            visitor: v,
            click: None,
            cents: rng.random_range(1_000..25_000),
        });
    }
    events.sort_by_key(|e| (e.at_ms, e.visitor, e.click.is_none()));

    let archive = LocalArchive::open(&dir)?;
    for chunk in events.chunks(CHUNK) {
        let hits = chunk
            .iter()
            .map(|e| hit(&site, e))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let lines = HitLines::encode(&hits)?;
        let keys = lines.keys()?;
        for object in format::objects(&keys, &lines, 0..hits.len()) {
            archive.put(&object.key, format::encode(&object)?).await?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "hits": events.len(),
            "conversions": visitors,
            "google": per_network[0] + per_network[1],
            "gclid": per_network[0],
            "microsoft": per_network[2],
            "meta": per_network[3],
            "from": from.to_string(),
            "to": to.to_string(),
        })
    );
    Ok(())
}
