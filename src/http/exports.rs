//! `GET /api/v1/exports/{format}?goal=ID&from&to`: a goal's conversions
//! as an ad network's upload file (Google Ads, its adjustments, Microsoft
//! Advertising, Meta's Conversions API), for the network's scheduled fetch
//! or a person's download.
//!
//! Authenticated like the rest of `/api/v1` (a Bearer API key, or the
//! dashboard session), or with HTTP Basic carrying an API key as the
//! password (any user name): what the networks' scheduled HTTPS imports
//! can send. The file is streamed: the store is read a page at a time
//! ([`Store::export_page`]) and each
//! page is written out before the next is read, so an export never holds
//! more than a page of conversions, whatever the range holds.
//!
//! This handler decides nothing about rows or cells
//! ([`crate::domain::export`] does) and never writes a CSV cell but
//! through [`super::csv::Csv`], which makes each one formula-safe.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{Duration, NaiveDate, Utc};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use tracing::warn;
use uuid::Uuid;

use super::api::{day, Bearer, SiteAuth};
use super::csv::Csv;
use super::{ApiError, AppState};
use crate::domain::adjustment::Adjustment;
use crate::domain::export::{self, Cell, ExportRow, Format, TIME_ZONE_LINE};
use crate::domain::report::MAX_REPORT_DAYS;
use crate::domain::{ApiKey, Goal};
use crate::store::{ExportCursor, Store, StoreError};

/// Conversions read per page: a few thousand rows, a few hundred KiB of
/// file, whatever the range holds.
pub const PAGE_ROWS: usize = 2_000;
/// Orders whose adjustments are read at once.
const ADJUSTMENT_READS_IN_FLIGHT: usize = 16;

#[derive(Deserialize)]
pub struct ExportParams {
    goal: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// The credentials an export accepts, read synchronously: HTTP Basic
/// (the password is an API key), else a Bearer key or the session.
pub struct ExportAuth {
    basic: Option<Result<String, &'static str>>,
    bearer: Bearer,
}

impl actix_web::FromRequest for ExportAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let basic = basic_password(req.headers());
        let bearer = match Bearer::from_request(req, payload).into_inner() {
            Ok(b) => b,
            Err(e) => return std::future::ready(Err(e)),
        };
        std::future::ready(Ok(ExportAuth { basic, bearer }))
    }
}

/// The password of a `Basic` authorization, or why it cannot be read;
/// `None` when the request uses another scheme or none.
fn basic_password(headers: &header::HeaderMap) -> Option<Result<String, &'static str>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    Some(match decoded {
        None => Err("malformed Basic credentials: send base64 of `user:api key`"),
        Some(pair) => match pair.split_once(':') {
            Some((_, password)) if !password.is_empty() => Ok(password.to_owned()),
            _ => Err("Basic credentials carry no password: the password is an API key"),
        },
    })
}

impl ExportAuth {
    async fn site(self, state: &AppState) -> Result<SiteAuth, ApiError> {
        match self.basic {
            Some(Err(why)) => Err(ApiError::BadCredentials(why.to_owned())),
            Some(Ok(key)) => state
                .store
                .site_for_key_hash(&ApiKey::hash(&key))
                .await?
                .map(|site| SiteAuth { site })
                .ok_or_else(|| {
                    ApiError::BadCredentials(
                        "the Basic password is not a valid API key (unknown or revoked)".into(),
                    )
                }),
            None => self.bearer.site(state).await.map_err(|e| match e {
                ApiError::Unauthorized => ApiError::BadCredentials(
                    "missing or invalid API key: send `Authorization: Bearer <api key>`, or HTTP Basic with the API key as the password"
                        .into(),
                ),
                other => other,
            }),
        }
    }
}

/// What an export reads, once its parameters are checked.
struct Request {
    format: Format,
    goal: Goal,
    from: NaiveDate,
    to: NaiveDate,
}

impl ExportParams {
    fn days(&self, format: Format) -> Result<(NaiveDate, NaiveDate), ApiError> {
        let to = match &self.to {
            Some(t) => day("to", t)?,
            None => Utc::now().date_naive(),
        };
        let from = match &self.from {
            Some(f) => day("from", f)?,
            None => to - Duration::days(format.default_days() - 1),
        };
        if from > to {
            return Err(ApiError::BadRequest("`from` is after `to`".into()));
        }
        if (to - from).num_days() >= MAX_REPORT_DAYS {
            return Err(ApiError::BadRequest(format!(
                "an export spans at most {MAX_REPORT_DAYS} days (`from` to `to`)"
            )));
        }
        Ok((from, to))
    }

    fn goal(&self) -> Result<Uuid, ApiError> {
        let raw = self
            .goal
            .as_deref()
            .filter(|g| !g.is_empty())
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "`goal` is required: the id of the goal whose conversions to export".into(),
                )
            })?;
        Uuid::parse_str(raw)
            .map_err(|_| ApiError::BadRequest(format!("`goal` is not a goal id: `{raw}`")))
    }
}

/// `GET /api/v1/exports/{format}`.
pub async fn export(
    state: web::Data<AppState>,
    auth: ExportAuth,
    path: web::Path<String>,
    params: web::Query<ExportParams>,
) -> Result<HttpResponse, ApiError> {
    let auth = auth.site(&state).await?;
    let format = Format::parse(&path).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown export format `{}`; the formats are {}",
            path.as_str(),
            Format::names()
        ))
    })?;
    let goal_id = params.goal()?;
    let (from, to) = params.days(format)?;
    let goal = state
        .store
        .goal(&auth.site, goal_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no goal `{goal_id}`")))?;
    let request = Request {
        format,
        goal,
        from,
        to,
    };
    let mut file = ExportFile::new(state.store.clone(), auth.site, request);
    // The first page is read before answering, so a store that cannot
    // answer is a 503, not a truncated file.
    let first = file.next_chunk().await?;
    let name = format!(
        "tally-{}-{}-{}.{}",
        format.as_str(),
        file.request.from,
        file.request.to,
        if format.is_csv() { "csv" } else { "json" }
    );
    let body = stream::once(async move { Ok::<_, StoreError>(first.unwrap_or_default()) }).chain(
        stream::try_unfold(file, |mut file| async move {
            Ok(file.next_chunk().await?.map(|chunk| (chunk, file)))
        })
        .inspect_err(|error| warn!(%error, "Export stopped: the store failed mid-file.")),
    );
    Ok(HttpResponse::Ok()
        .content_type(if format.is_csv() {
            "text/csv; charset=utf-8"
        } else {
            "application/json"
        })
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .streaming(body))
}

/// An export being written: where its read stands.
struct ExportFile {
    store: std::sync::Arc<dyn Store>,
    site: String,
    request: Request,
    /// `None` before the first page.
    cursor: Option<ExportCursor>,
    started: bool,
    done: bool,
    /// Meta events written so far (a comma goes before every later one).
    events: u64,
}

impl ExportFile {
    fn new(store: std::sync::Arc<dyn Store>, site: String, request: Request) -> ExportFile {
        ExportFile {
            store,
            site,
            request,
            cursor: None,
            started: false,
            done: false,
            events: 0,
        }
    }

    /// The file's next bytes: the header with the first page's records,
    /// then a page's records at a time (pages with no record are read on
    /// to the next), then the end; `None` once written whole.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(&preamble(self.request.format));
        }
        loop {
            let page = self
                .store
                .export_page(
                    &self.site,
                    self.request.goal.id,
                    self.request.from,
                    self.request.to,
                    self.cursor.as_ref(),
                    PAGE_ROWS,
                )
                .await?;
            let adjustments = self.adjustments(&page.rows).await?;
            self.write_rows(&page.rows, &adjustments, &mut out);
            match page.next {
                Some(next) => self.cursor = Some(next),
                None => {
                    self.done = true;
                    if !self.request.format.is_csv() {
                        out.push_str("]}");
                    }
                    return Ok(Some(Bytes::from(out)));
                }
            }
            if !out.is_empty() {
                return Ok(Some(Bytes::from(out)));
            }
        }
    }

    /// The adjustments of the orders among `rows` that the file may hold.
    async fn adjustments(
        &self,
        rows: &[ExportRow],
    ) -> Result<HashMap<String, Vec<Adjustment>>, StoreError> {
        let orders = export::orders_to_read(self.request.format, rows);
        stream::iter(orders)
            .map(|order| async move {
                let list = self.store.order_adjustments(&self.site, order).await?;
                Ok((order.to_owned(), list))
            })
            .buffered(ADJUSTMENT_READS_IN_FLIGHT)
            .try_collect()
            .await
    }

    fn write_rows(
        &mut self,
        rows: &[ExportRow],
        adjustments: &HashMap<String, Vec<Adjustment>>,
        out: &mut String,
    ) {
        let format = self.request.format;
        let name = self.request.goal.name.as_str();
        let of = |r: &ExportRow| {
            r.order_id
                .as_deref()
                .and_then(|o| adjustments.get(o))
                .map_or(&[][..], Vec::as_slice)
        };
        if format.is_csv() {
            let mut csv = Csv::new();
            for r in rows {
                if let Some(cells) = export::csv_record(format, name, r, of(r)) {
                    write_cells(&mut csv, &cells);
                }
            }
            out.push_str(&csv.finish());
            return;
        }
        for r in rows {
            let Some(event) = export::meta_event(name, r, of(r)) else {
                continue;
            };
            match serde_json::to_string(&event) {
                Ok(json) => {
                    if self.events > 0 {
                        out.push(',');
                    }
                    out.push_str(&json);
                    self.events += 1;
                }
                // Plain strings and finite numbers always serialize.
                Err(error) => warn!(%error, hit_id = %r.hit_id, "Cannot write a Meta event."),
            }
        }
    }
}

/// What a file starts with: the time zone line and the header row, or
/// the opening of Meta's `{"data": [...]}`.
fn preamble(format: Format) -> String {
    if !format.is_csv() {
        return "{\"data\":[".to_owned();
    }
    let mut csv = Csv::new();
    csv.text(TIME_ZONE_LINE).end_row();
    for column in format.columns() {
        csv.text(column);
    }
    csv.end_row();
    csv.finish()
}

fn write_cells(csv: &mut Csv, cells: &[Cell]) {
    for cell in cells {
        match cell {
            Cell::Text(s) => csv.text(s),
            Cell::Number(n) => csv.number(n),
            Cell::Empty => csv.empty(),
        };
    }
    csv.end_row();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::export::LastClick;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn parse(text: &str) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn basic_credentials_are_read_with_any_user_name() {
        let mut headers = header::HeaderMap::new();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {}", enc("google:key:with:colons"))
                .parse()
                .unwrap(),
        );
        assert_eq!(basic_password(&headers), Some(Ok("key:with:colons".into())));
        headers.insert(
            header::AUTHORIZATION,
            format!("basic {}", enc(":k")).parse().unwrap(),
        );
        assert_eq!(basic_password(&headers), Some(Ok("k".into())));
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {}", enc("user")).parse().unwrap(),
        );
        assert!(matches!(basic_password(&headers), Some(Err(_))));
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(matches!(basic_password(&headers), Some(Err(_))));
        headers.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert_eq!(basic_password(&headers), None);
    }

    #[test]
    fn csv_files_start_with_the_time_zone_and_the_header() {
        let text = preamble(Format::MicrosoftAds);
        assert!(
            text.starts_with("Parameters:TimeZone=+0000\r\nMicrosoft Click ID,Conversion Name,"),
            "{text}"
        );
        assert_eq!(preamble(Format::MetaCapi), "{\"data\":[");
    }

    proptest! {
        /// Whatever a goal name or click id holds, every cell of the file
        /// reads back as written, or with the leading `'` that keeps a
        /// spreadsheet from running it.
        #[test]
        fn every_cell_is_formula_safe(name in "\\PC{0,16}", click in "[=+@\t\r-]?\\PC{0,12}") {
            let r = ExportRow {
                hit_id: Uuid::from_u128(1),
                goal_id: Uuid::from_u128(2),
                at: Utc.with_ymd_and_hms(2026, 11, 20, 1, 2, 3).unwrap(),
                value: 12.5,
                currency: Some("=HYPERLINK(\"x\")".into()),
                order_id: None,
                last_click: Some(LastClick { param: "gclid".into(), value: click.clone(), at: Utc.with_ymd_and_hms(2026, 11, 19, 0, 0, 0).unwrap() }),
                user_agent: None,
                page_url: None,
            };
            let mut csv = Csv::new();
            write_cells(&mut csv, &export::csv_record(Format::GoogleAds, &name, &r, &[]).unwrap());
            let rows = parse(&csv.finish());
            prop_assert_eq!(rows.len(), 1);
            for cell in &rows[0] {
                prop_assert!(!cell.starts_with(['=', '+', '-', '@', '\t', '\r']), "{:?}", cell);
            }
            // Read back as written, with a `'` before a formula only.
            let safe = |s: &str| super::super::csv::formula_safe(s).into_owned();
            prop_assert_eq!(&rows[0][0], &safe(&click));
            prop_assert_eq!(&rows[0][1], &safe(&name));
            prop_assert_eq!(&rows[0][3], "12.5");
        }
    }
}
