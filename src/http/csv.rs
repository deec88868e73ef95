//! The one CSV writer: every CSV tally serves (report downloads, exports)
//! is written here, so every one is formula-safe.
//!
//! Cells follow RFC 4180 (CRLF line ends; a cell holding a comma, quote,
//! CR or LF is quoted, quotes doubled). A text cell that starts with `=`,
//! `+`, `-`, `@`, tab or CR gets a leading `'`, so a spreadsheet shows it
//! as text instead of running it as a formula (OWASP "CSV injection"):
//! campaign names and the like come from anyone who can make a link.
//! Numbers are written as numbers; only text is ever prefixed. This module
//! formats; it never decides which rows a file holds.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

use crate::domain::Report;

/// Report columns that are measures, in the order they are written after
/// the grouping columns.
const MEASURES: [&str; 3] = ["clicks", "conversions", "value"];

/// A CSV document being written row by row.
#[derive(Debug, Default)]
pub struct Csv {
    out: String,
    row_open: bool,
}

/// `s` with a leading `'` when a spreadsheet would read it as a formula.
pub fn formula_safe(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

impl Csv {
    pub fn new() -> Csv {
        Csv::default()
    }

    fn sep(&mut self) {
        if self.row_open {
            self.out.push(',');
        }
        self.row_open = true;
    }

    /// A text cell: formula-safe, then quoted as RFC 4180 asks.
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.sep();
        let s = formula_safe(s);
        if s.contains([',', '"', '\r', '\n']) {
            self.out.push('"');
            self.out.push_str(&s.replace('"', "\"\""));
            self.out.push('"');
        } else {
            self.out.push_str(&s);
        }
        self
    }

    /// A number cell, written as the number it is (never prefixed).
    pub fn number(&mut self, n: impl std::fmt::Display) -> &mut Self {
        self.sep();
        // Writing to a String cannot fail.
        let _ = write!(self.out, "{n}");
        self
    }

    /// An empty cell (a missing value).
    pub fn empty(&mut self) -> &mut Self {
        self.sep();
        self
    }

    /// Ends the current row.
    pub fn end_row(&mut self) -> &mut Self {
        self.out.push_str("\r\n");
        self.row_open = false;
        self
    }

    /// A JSON value as one cell: strings as text, numbers as numbers,
    /// null as empty, anything else as its JSON text.
    pub fn json(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Null => self.empty(),
            Value::String(s) => self.text(s),
            Value::Number(n) => self.number(n),
            Value::Bool(b) => self.number(b),
            other => self.text(&other.to_string()),
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A report as CSV: a header, then one line per row with the grouping
/// columns (`group_by`, in the order asked), `currency` (every row has one,
/// empty for none: a file never adds two currencies' values, nor shows a
/// value without its currency) and then the measures. A
/// column the rows carry beyond those (a newer report field) follows, so
/// the file never silently drops what the JSON report shows.
pub fn report(group_by: &[String], report: &Report) -> String {
    let rows: Vec<serde_json::Map<String, Value>> = report
        .rows
        .iter()
        .filter_map(|r| match serde_json::to_value(r) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        })
        .collect();
    let mut columns: Vec<String> = group_by.to_vec();
    if !columns.iter().any(|c| c == "currency") {
        columns.push("currency".to_owned());
    }
    for m in MEASURES {
        if rows.is_empty() || rows.iter().any(|r| r.contains_key(m)) {
            columns.push(m.to_owned());
        }
    }
    let mut extra: Vec<&String> = rows
        .iter()
        .flat_map(|r| r.keys())
        .filter(|k| !columns.contains(k))
        .collect();
    extra.sort();
    extra.dedup();
    columns.extend(extra.into_iter().cloned());
    let mut csv = Csv::new();
    for c in &columns {
        csv.text(c);
    }
    csv.end_row();
    for r in &rows {
        for c in &columns {
            csv.json(r.get(c).unwrap_or(&Value::Null));
        }
        csv.end_row();
    }
    csv.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReportRow;

    #[test]
    fn formula_starts_are_prefixed_and_other_text_is_not() {
        for (raw, want) in [
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("+cmd", "'+cmd"),
            ("-2+3", "'-2+3"),
            ("@SUM(1+1)", "'@SUM(1+1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("black-friday", "black-friday"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(formula_safe(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn cells_are_quoted_as_rfc_4180_asks() {
        let mut csv = Csv::new();
        csv.text("a,b")
            .text("say \"hi\"")
            .text("two\nlines")
            .text("plain")
            .number(1.5)
            .empty()
            .end_row();
        csv.text("=1+1").number(-3).end_row();
        assert_eq!(
            csv.finish(),
            "\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",plain,1.5,\r\n'=1+1,-3\r\n"
        );
    }

    #[test]
    fn a_report_has_its_group_columns_then_its_measures() {
        let report = Report {
            rows: vec![
                ReportRow {
                    source: Some("google".into()),
                    campaign: Some(Some("=cmd".into())),
                    currency: Some("EUR".into()),
                    clicks: Some(2),
                    conversions: 1.0,
                    value: 49.5,
                    ..Default::default()
                },
                ReportRow {
                    source: Some("google".into()),
                    campaign: Some(Some("=cmd".into())),
                    currency: Some("USD".into()),
                    clicks: Some(2),
                    conversions: 1.0,
                    value: 10.0,
                    ..Default::default()
                },
                ReportRow {
                    source: Some("bing".into()),
                    campaign: Some(None),
                    clicks: Some(1),
                    ..Default::default()
                },
            ],
            total: Default::default(),
        };
        let csv = super::report(&["source".into(), "campaign".into()], &report);
        assert_eq!(
            csv,
            "source,campaign,currency,clicks,conversions,value\r\n\
             google,'=cmd,EUR,2,1.0,49.5\r\n\
             google,'=cmd,USD,2,1.0,10.0\r\n\
             bing,,,1,0.0,0.0\r\n"
        );
        let empty = super::report(&["day".into()], &Report::default());
        assert_eq!(empty, "day,currency,clicks,conversions,value\r\n");
        let by_currency = super::report(&["currency".into()], &Report::default());
        assert_eq!(by_currency, "currency,clicks,conversions,value\r\n");
    }
}
