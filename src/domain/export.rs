//! Exports to ad networks: which conversions a network's upload file holds
//! and what each of its records says, in the network's own format.
//!
//! A conversion goes to the network of its *credited last click*: the last
//! touchpoint of its attribution window, the one `last_click` credits, if
//! that touchpoint carries the network's click id (`gclid`, `gbraid`,
//! `wbraid` → Google; `msclkid` → Microsoft; `fbclid` → Meta). Its order's
//! adjustments apply as in every report: a retracted conversion is left
//! out, a restated one goes at its new value; the Google adjustments file
//! lists the adjusted ones with what happened to them.
//!
//! This module decides rows and cells; it never encodes them (the one CSV
//! writer, `http::csv`, makes every cell formula-safe; `serde_json` writes
//! Meta's events), never reads a store and never reads the clock.
//!
//! Checked against each network's documentation:
//! - Google Ads, conversions from clicks (file import, "Parameters:TimeZone"
//!   line, columns `Google Click ID`, `Conversion Name`, `Conversion Time`,
//!   `Conversion Value`, `Conversion Currency`, time `yyyy-mm-dd hh:mm:ss`
//!   with the zone from the parameters line):
//!   <https://support.google.com/google-ads/answer/7014069>;
//!   `gbraid` / `wbraid` instead of a `gclid`, never together with one:
//!   <https://developers.google.com/google-ads/api/docs/conversions/upload-clicks>.
//! - Google Ads conversion adjustments (file template with `Adjustment
//!   Type`, `Adjustment Time`, `Adjusted Value`, `Adjusted Value Currency`;
//!   a retracted conversion cannot be adjusted again):
//!   <https://support.google.com/google-ads/answer/7686280>. The file
//!   spells the types `RETRACT` / `RESTATE`; the Google Ads API's enum
//!   says `RETRACTION` / `RESTATEMENT`
//!   (<https://developers.google.com/google-ads/api/reference/rpc/latest/ConversionAdjustmentTypeEnum.ConversionAdjustmentType>).
//!   A conversion uploaded without an order id is identified by its
//!   click id, name and time (the API's `GclidDateTimePair`, which has no
//!   braid form), so only `gclid` conversions are in that file.
//! - Microsoft Advertising offline conversions (`Microsoft Click Id`,
//!   `Conversion Name`, `Conversion Time`, `Conversion Value`, `Conversion
//!   Currency Code` in the bulk record; the import file's header names
//!   them `Microsoft Click ID` … `Conversion Currency`):
//!   <https://learn.microsoft.com/en-us/advertising/bulk-service/offline-conversion?view=bingads-13>,
//!   <https://learn.microsoft.com/en-us/advertising/campaign-management-service/offlineconversion?view=bingads-13>.
//! - Meta Conversions API: server event parameters (`event_name`,
//!   `event_time` in Unix seconds and at most 7 days old, `event_id` for
//!   deduplication with the pixel's `eventID`, `action_source`,
//!   `event_source_url`):
//!   <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event/>;
//!   `client_user_agent` and `event_source_url` required for website
//!   events: <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/>;
//!   `fbc` = `fb.<subdomainIndex>.<creationTime ms>.<fbclid>`, with
//!   subdomain index 1 when made on a server and the time the click was
//!   first seen: <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/fbp-and-fbc/>.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::adjustment::{effect, Adjustment, Effect};

/// The first line of every CSV export: every time in the file is UTC.
pub const TIME_ZONE_LINE: &str = "Parameters:TimeZone=+0000";

/// The time format of Google's and Microsoft's files (the zone is the
/// parameters line's).
const FILE_TIME: &str = "%Y-%m-%d %H:%M:%S";

/// An export format, as named in `/api/v1/exports/{format}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    GoogleAds,
    GoogleAdsAdjustments,
    MicrosoftAds,
    MetaCapi,
}

/// The ad network a click id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    Google,
    Microsoft,
    Meta,
}

impl Network {
    /// The network whose click id `param` is, among those tally exports to.
    pub fn of_click_param(param: &str) -> Option<Network> {
        match param {
            "gclid" | "gbraid" | "wbraid" => Some(Network::Google),
            "msclkid" => Some(Network::Microsoft),
            "fbclid" => Some(Network::Meta),
            _ => None,
        }
    }
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::GoogleAds,
        Format::GoogleAdsAdjustments,
        Format::MicrosoftAds,
        Format::MetaCapi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::GoogleAds => "google_ads",
            Format::GoogleAdsAdjustments => "google_ads_adjustments",
            Format::MicrosoftAds => "microsoft_ads",
            Format::MetaCapi => "meta_capi",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The known formats, for an error message.
    pub fn names() -> String {
        Format::ALL.map(Format::as_str).join(", ")
    }

    pub fn network(self) -> Network {
        match self {
            Format::GoogleAds | Format::GoogleAdsAdjustments => Network::Google,
            Format::MicrosoftAds => Network::Microsoft,
            Format::MetaCapi => Network::Meta,
        }
    }

    /// Whether the file is CSV (else Meta's JSON).
    pub fn is_csv(self) -> bool {
        self != Format::MetaCapi
    }

    /// UTC days an export covers when `from` is not given, ending today:
    /// as far back as the network takes conversions (Google and Microsoft
    /// import clicks up to 90 days old; Meta refuses a whole request
    /// holding an event older than 7 days).
    pub fn default_days(self) -> i64 {
        match self {
            Format::MetaCapi => 7,
            _ => 90,
        }
    }

    /// The CSV header row (after [`TIME_ZONE_LINE`]); empty for JSON.
    /// Google's braid ids have their own columns, after the template's
    /// five: a file is streamed, so its columns are fixed before the
    /// first row is known, and Google reads columns by name.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Format::GoogleAds => &[
                "Google Click ID",
                "Conversion Name",
                "Conversion Time",
                "Conversion Value",
                "Conversion Currency",
                "GBRAID",
                "WBRAID",
            ],
            Format::GoogleAdsAdjustments => &[
                "Google Click ID",
                "Conversion Name",
                "Conversion Time",
                "Adjustment Type",
                "Adjustment Time",
                "Adjusted Value",
                "Adjusted Value Currency",
            ],
            Format::MicrosoftAds => &[
                "Microsoft Click ID",
                "Conversion Name",
                "Conversion Time",
                "Conversion Value",
                "Conversion Currency",
            ],
            Format::MetaCapi => &[],
        }
    }
}

/// The click a conversion's last-click credit went to, when it carried a
/// click id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastClick {
    /// The click id parameter (`gclid`, `fbclid`, ...).
    pub param: String,
    pub value: String,
    /// When the click (its landing hit) was received.
    pub at: DateTime<Utc>,
}

/// A counted conversion as an export reads it from the store: its
/// recorded value (before adjustments) and its credited last click.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    pub hit_id: Uuid,
    pub goal_id: Uuid,
    pub at: DateTime<Utc>,
    pub value: f64,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    /// `None` when the last touchpoint of the window carried no click id
    /// (a utm tag, a referral) or the window held none.
    pub last_click: Option<LastClick>,
    /// From the converting hit; `None` for conversions recorded before
    /// stores kept them.
    pub user_agent: Option<String>,
    pub page_url: Option<String>,
}

impl ExportRow {
    /// The network the row goes to, if any.
    pub fn network(&self) -> Option<Network> {
        self.last_click
            .as_ref()
            .and_then(|c| Network::of_click_param(&c.param))
    }
}

/// One CSV cell, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    Empty,
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn opt_text(s: Option<&str>) -> Cell {
    s.map_or(Cell::Empty, text)
}

fn file_time(t: DateTime<Utc>) -> Cell {
    text(t.format(FILE_TIME).to_string())
}

/// The latest of an order's adjustments by (time, id): the one that
/// decides ([`effect`]).
fn latest(adjustments: &[Adjustment]) -> Option<&Adjustment> {
    adjustments
        .iter()
        .max_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)))
}

/// The row's value once its order's `adjustments` apply; `None` when it
/// is retracted.
pub fn adjusted_value(row: &ExportRow, adjustments: &[Adjustment]) -> Option<f64> {
    crate::domain::adjustment::adjusted_value(row.value, effect(adjustments))
}

/// The CSV record of `row` in `format` (a CSV format), named `name` (the
/// goal's name, which must match the conversion action the network
/// expects), with its order's `adjustments`; `None` when the file leaves
/// it out: another network's click, a retracted conversion, or (for the
/// adjustments file) one without adjustments or not from a `gclid`.
pub fn csv_record(
    format: Format,
    name: &str,
    row: &ExportRow,
    adjustments: &[Adjustment],
) -> Option<Vec<Cell>> {
    let click = row.last_click.as_ref()?;
    if row.network()? != format.network() {
        return None;
    }
    match format {
        Format::GoogleAds | Format::MicrosoftAds => {
            let value = adjusted_value(row, adjustments)?;
            let mut cells = vec![
                Cell::Empty,
                text(name),
                file_time(row.at),
                Cell::Number(value),
                opt_text(row.currency.as_deref()),
            ];
            match (format, click.param.as_str()) {
                (Format::GoogleAds, "gbraid") => cells.extend([text(&click.value), Cell::Empty]),
                (Format::GoogleAds, "wbraid") => cells.extend([Cell::Empty, text(&click.value)]),
                (Format::GoogleAds, _) => {
                    cells[0] = text(&click.value);
                    cells.extend([Cell::Empty, Cell::Empty]);
                }
                _ => cells[0] = text(&click.value),
            }
            Some(cells)
        }
        Format::GoogleAdsAdjustments => {
            if click.param != "gclid" {
                return None;
            }
            let last = latest(adjustments)?;
            let (kind, value, currency) = match effect([last])? {
                Effect::Retracted => ("RETRACT", Cell::Empty, Cell::Empty),
                Effect::Restated(v) => (
                    "RESTATE",
                    Cell::Number(v),
                    opt_text(row.currency.as_deref()),
                ),
            };
            Some(vec![
                text(&click.value),
                text(name),
                file_time(row.at),
                text(kind),
                file_time(last.at),
                value,
                currency,
            ])
        }
        Format::MetaCapi => None,
    }
}

/// A Meta Conversions API server event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaEvent {
    pub event_name: String,
    /// Unix seconds.
    pub event_time: i64,
    /// The converting hit's id: the browser pixel sends it as `eventID`
    /// so Meta counts the conversion once.
    pub event_id: String,
    pub action_source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_source_url: Option<String>,
    pub user_data: MetaUserData,
    pub custom_data: MetaCustomData,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaUserData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_user_agent: Option<String>,
    pub fbc: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaCustomData {
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// `fb.1.<click ms>.<fbclid>`: the `_fbc` cookie value a pixel would have
/// set when the click landed.
pub fn fbc(click: &LastClick) -> String {
    format!("fb.1.{}.{}", click.at.timestamp_millis(), click.value)
}

/// The Meta event of `row` named `name`, or `None` when it is not an
/// `fbclid` conversion or is retracted.
pub fn meta_event(name: &str, row: &ExportRow, adjustments: &[Adjustment]) -> Option<MetaEvent> {
    let click = row.last_click.as_ref()?;
    if row.network()? != Network::Meta {
        return None;
    }
    let value = adjusted_value(row, adjustments)?;
    Some(MetaEvent {
        event_name: name.to_owned(),
        event_time: row.at.timestamp(),
        event_id: row.hit_id.to_string(),
        action_source: "website",
        event_source_url: row.page_url.clone(),
        user_data: MetaUserData {
            client_user_agent: row.user_agent.clone(),
            fbc: fbc(click),
        },
        custom_data: MetaCustomData {
            value,
            currency: row.currency.clone(),
            order_id: row.order_id.clone(),
        },
    })
}

/// The orders among `rows` going to `format`'s network whose adjustments
/// an export must read (each once).
pub fn orders_to_read(format: Format, rows: &[ExportRow]) -> Vec<&str> {
    let mut seen: HashSet<&str> = HashSet::new();
    rows.iter()
        .filter(|r| r.network() == Some(format.network()))
        .filter_map(|r| r.order_id.as_deref())
        .filter(|o| seen.insert(o))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::adjustment::AdjustmentKind;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 9, 5, 7).unwrap()
    }

    fn row(param: &str, value: f64) -> ExportRow {
        ExportRow {
            hit_id: Uuid::from_u128(7),
            goal_id: Uuid::from_u128(1),
            at: t0(),
            value,
            currency: Some("EUR".into()),
            order_id: Some("o-1".into()),
            last_click: Some(LastClick {
                param: param.into(),
                value: "CLICK".into(),
                at: t0() - chrono::Duration::minutes(3),
            }),
            user_agent: Some("Mozilla/5.0".into()),
            page_url: Some("https://shop.example/thanks".into()),
        }
    }

    fn adj(kind: AdjustmentKind, value: Option<f64>, minutes: i64) -> Adjustment {
        Adjustment {
            id: format!("a{minutes}"),
            site: "s".into(),
            order_id: "o-1".into(),
            kind,
            value,
            reason: None,
            at: t0() + chrono::Duration::minutes(minutes),
        }
    }

    #[test]
    fn formats_are_named_and_parsed() {
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()), Some(f));
        }
        assert_eq!(Format::parse("tiktok"), None);
        assert_eq!(
            Format::names(),
            "google_ads, google_ads_adjustments, microsoft_ads, meta_capi"
        );
        assert_eq!(
            Format::MicrosoftAds.columns().join(","),
            "Microsoft Click ID,Conversion Name,Conversion Time,Conversion Value,Conversion Currency"
        );
        assert!(Format::GoogleAds.columns().join(",").starts_with(
            "Google Click ID,Conversion Name,Conversion Time,Conversion Value,Conversion Currency"
        ));
    }

    #[test]
    fn google_rows_put_each_click_id_in_its_column() {
        let cells = csv_record(Format::GoogleAds, "Purchase", &row("gclid", 49.0), &[]).unwrap();
        assert_eq!(
            cells,
            vec![
                text("CLICK"),
                text("Purchase"),
                text("2026-11-20 09:05:07"),
                Cell::Number(49.0),
                text("EUR"),
                Cell::Empty,
                Cell::Empty
            ]
        );
        let braid = csv_record(Format::GoogleAds, "P", &row("gbraid", 1.0), &[]).unwrap();
        assert_eq!(
            (&braid[0], &braid[5], &braid[6]),
            (&Cell::Empty, &text("CLICK"), &Cell::Empty)
        );
        let braid = csv_record(Format::GoogleAds, "P", &row("wbraid", 1.0), &[]).unwrap();
        assert_eq!(
            (&braid[0], &braid[5], &braid[6]),
            (&Cell::Empty, &Cell::Empty, &text("CLICK"))
        );
        // Another network's click, or none, is not Google's.
        assert_eq!(
            csv_record(Format::GoogleAds, "P", &row("msclkid", 1.0), &[]),
            None
        );
        let mut direct = row("gclid", 1.0);
        direct.last_click = None;
        assert_eq!(csv_record(Format::GoogleAds, "P", &direct, &[]), None);
    }

    #[test]
    fn adjustments_restate_or_remove_and_fill_the_adjustments_file() {
        use AdjustmentKind::*;
        let r = row("gclid", 100.0);
        let restated = [adj(Restate, Some(60.0), 5)];
        let cells = csv_record(Format::GoogleAds, "P", &r, &restated).unwrap();
        assert_eq!(cells[3], Cell::Number(60.0));
        let retracted = [adj(Restate, Some(60.0), 5), adj(Retract, None, 9)];
        assert_eq!(csv_record(Format::GoogleAds, "P", &r, &retracted), None);
        assert_eq!(
            csv_record(Format::MicrosoftAds, "P", &row("msclkid", 1.0), &retracted),
            None
        );

        assert_eq!(csv_record(Format::GoogleAdsAdjustments, "P", &r, &[]), None);
        let cells = csv_record(Format::GoogleAdsAdjustments, "P", &r, &restated).unwrap();
        assert_eq!(
            cells,
            vec![
                text("CLICK"),
                text("P"),
                text("2026-11-20 09:05:07"),
                text("RESTATE"),
                text("2026-11-20 09:10:07"),
                Cell::Number(60.0),
                text("EUR")
            ]
        );
        let cells = csv_record(Format::GoogleAdsAdjustments, "P", &r, &retracted).unwrap();
        assert_eq!(
            (&cells[3], &cells[4], &cells[5]),
            (&text("RETRACT"), &text("2026-11-20 09:14:07"), &Cell::Empty)
        );
        // Braid conversions cannot be adjusted by click id.
        assert_eq!(
            csv_record(
                Format::GoogleAdsAdjustments,
                "P",
                &row("gbraid", 1.0),
                &retracted
            ),
            None
        );
    }

    #[test]
    fn meta_events_carry_what_the_conversions_api_asks_for() {
        let e = meta_event("Purchase", &row("fbclid", 49.5), &[]).unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event_name": "Purchase",
                "event_time": t0().timestamp(),
                "event_id": Uuid::from_u128(7).to_string(),
                "action_source": "website",
                "event_source_url": "https://shop.example/thanks",
                "user_data": {"client_user_agent": "Mozilla/5.0",
                              "fbc": format!("fb.1.{}.CLICK", (t0() - chrono::Duration::minutes(3)).timestamp_millis())},
                "custom_data": {"value": 49.5, "currency": "EUR", "order_id": "o-1"}
            })
        );
        let mut old = row("fbclid", 1.0);
        (old.user_agent, old.page_url, old.order_id) = (None, None, None);
        let json = serde_json::to_value(meta_event("P", &old, &[]).unwrap()).unwrap();
        assert!(json.get("event_source_url").is_none(), "{json}");
        assert!(
            json["user_data"].get("client_user_agent").is_none(),
            "{json}"
        );
        assert!(json["custom_data"].get("order_id").is_none(), "{json}");
        assert_eq!(meta_event("P", &row("gclid", 1.0), &[]), None);
        let retracted = [adj(AdjustmentKind::Retract, None, 1)];
        assert_eq!(meta_event("P", &row("fbclid", 1.0), &retracted), None);
    }

    fn arb_row() -> impl Strategy<Value = ExportRow> {
        (
            prop::sample::select(vec![
                "gclid", "gbraid", "wbraid", "msclkid", "fbclid", "ttclid",
            ]),
            any::<bool>(),
            0u32..1_000_000,
            0i64..4_000_000_000,
            "\\PC{0,12}",
        )
            .prop_map(|(param, has_click, cents, secs, click)| ExportRow {
                hit_id: Uuid::from_u128(u128::from(cents)),
                goal_id: Uuid::from_u128(1),
                at: Utc.timestamp_opt(secs, 0).unwrap(),
                value: f64::from(cents) / 100.0,
                currency: None,
                order_id: Some("o".into()),
                last_click: has_click.then(|| LastClick {
                    param: param.into(),
                    value: click,
                    at: Utc.timestamp_opt(secs / 2, 0).unwrap(),
                }),
                user_agent: None,
                page_url: None,
            })
    }

    proptest! {
        /// A conversion is in exactly the file of its last click's
        /// network (Google's adjustments file aside), once, at its
        /// adjusted value, with a time in the file format.
        #[test]
        fn each_conversion_goes_to_its_network_only(
            r in arb_row(),
            kind in prop::option::of(any::<bool>()),
            restated in 0u32..1000,
        ) {
            let adjustments: Vec<Adjustment> = match kind {
                None => vec![],
                Some(true) => vec![adj(AdjustmentKind::Retract, None, 1)],
                Some(false) => vec![adj(AdjustmentKind::Restate, Some(f64::from(restated)), 1)],
            };
            let want_value = adjusted_value(&r, &adjustments);
            let network = r.network();
            for f in [Format::GoogleAds, Format::MicrosoftAds] {
                let rec = csv_record(f, "n", &r, &adjustments);
                prop_assert_eq!(rec.is_some(), network == Some(f.network()) && want_value.is_some());
                if let Some(cells) = rec {
                    prop_assert_eq!(cells.len(), f.columns().len());
                    prop_assert_eq!(&cells[3], &Cell::Number(want_value.unwrap()));
                    let Cell::Text(t) = &cells[2] else { panic!("time is text") };
                    prop_assert!(chrono::NaiveDateTime::parse_from_str(t, FILE_TIME).is_ok(), "{}", t);
                }
            }
            let event = meta_event("n", &r, &adjustments);
            prop_assert_eq!(event.is_some(), network == Some(Network::Meta) && want_value.is_some());
            if let Some(e) = event {
                let click = r.last_click.as_ref().unwrap();
                prop_assert_eq!(e.user_data.fbc, format!("fb.1.{}.{}", click.at.timestamp_millis(), click.value));
                prop_assert_eq!(e.custom_data.value, want_value.unwrap());
            }
            let adjusted = csv_record(Format::GoogleAdsAdjustments, "n", &r, &adjustments);
            prop_assert_eq!(
                adjusted.is_some(),
                kind.is_some() && r.last_click.as_ref().is_some_and(|c| c.param == "gclid")
            );
        }
    }
}
