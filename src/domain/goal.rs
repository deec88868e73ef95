//! Conversion goals: what counts as a conversion, and how it is credited.
//!
//! `GoalDraft` is the API's input; `Goal::from_draft` validates it (and
//! compiles its URL pattern) so a stored `Goal` always matches cleanly.
//! Matching is pure: it never touches the store.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::attribution::Model;
use super::hit::{valid_value, Hit, HitKind, PropValue, MAX_VALUE};
use super::site::{currency_code, SiteError};
use super::text::{clean, ControlChar};

pub const DEFAULT_WINDOW_DAYS: u16 = 30;
pub const MAX_WINDOW_DAYS: u16 = 365;
/// Goals one site may have: every hit is matched against all of them.
pub const MAX_GOALS_PER_SITE: usize = 100;
/// Longest goal name, event name or URL pattern, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Bound on a compiled URL pattern (regex or wildcard), in bytes: a site's
/// goals are compiled once and kept in every worker's memory.
pub const MAX_PATTERN_BYTES: usize = 256 * 1024;
const STORED_PATTERN_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UrlOp {
    #[default]
    Exact,
    Prefix,
    /// `*` matches within one path segment, `**` across segments.
    Wildcard,
    Regex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountMode {
    #[default]
    Every,
    OncePerVisitor,
}

/// The `match` object of a goal, as the API shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalMatch {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub op: Option<UrlOp>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub props: BTreeMap<String, PropValue>,
}

/// A goal as a client creates or replaces it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalDraft {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: GoalMatch,
    pub value: Option<f64>,
    pub model: Option<Model>,
    pub window_days: Option<u16>,
    pub count: Option<CountMode>,
    pub verified_only: Option<bool>,
    /// ISO 4217 code of the goal's values, for hits that name none.
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GoalError {
    #[error("`match` needs exactly one of `event` or `url`")]
    MatchShape,
    #[error("`match.op` applies only to `url` goals")]
    OpWithoutUrl,
    #[error("`match.url` is not a valid pattern: {0}")]
    Pattern(String),
    #[error("`window_days` must be between 1 and {MAX_WINDOW_DAYS}")]
    Window,
    #[error("`value` must be a finite number from 0 to {MAX_VALUE:e}")]
    Value,
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("`{0}` must be at most {MAX_NAME_CHARS} characters")]
    TooLong(&'static str),
    #[error("`model` of a goal is last_click, first_click, linear, time_decay or position_based; data_driven is a report model (`/api/v1/conversions?model=data_driven`)")]
    ReportModel,
    #[error(transparent)]
    ControlChar(#[from] ControlChar),
    /// `currency` is not an ISO 4217 code (the message names the field).
    #[error(transparent)]
    Currency(SiteError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub id: Uuid,
    pub site: String,
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: GoalMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub model: Model,
    pub window_days: u16,
    pub count: CountMode,
    /// Counts only hits sent by the site's backend with an API key, so an
    /// anonymous hit can never claim this goal's order ids or visitors.
    #[serde(default)]
    pub verified_only: bool,
    /// ISO 4217 code of the conversions of a hit that names no currency
    /// (before the site's reporting currency); see
    /// [`super::currency::resolve`]. Absent from goals stored before goals
    /// had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    compiled: Option<Regex>,
}

impl PartialEq for Goal {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.site == other.site
            && self.name == other.name
            && self.matcher == other.matcher
            && self.value == other.value
            && self.model == other.model
            && self.window_days == other.window_days
            && self.count == other.count
            && self.verified_only == other.verified_only
            && self.currency == other.currency
            && self.created_at == other.created_at
    }
}

/// Turns a wildcard path into an anchored regex: `**` spans segments,
/// `*` stays within one, everything else is literal.
fn wildcard_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("**") {
            out.push_str(".*");
            rest = r;
        } else if let Some(r) = rest.strip_prefix('*') {
            out.push_str("[^/]*");
            rest = r;
        } else {
            let next = rest.find('*').unwrap_or(rest.len());
            out.push_str(&regex::escape(&rest[..next]));
            rest = &rest[next..];
        }
    }
    out.push('$');
    out
}

/// Compiles a URL goal's pattern, refusing one that compiles to more than
/// `limit` bytes.
fn compile(m: &GoalMatch, limit: usize) -> Result<Option<Regex>, GoalError> {
    let Some(url) = &m.url else {
        return Ok(None);
    };
    let source = match m.op.unwrap_or_default() {
        UrlOp::Exact | UrlOp::Prefix => return Ok(None),
        UrlOp::Wildcard => wildcard_regex(url),
        UrlOp::Regex => url.clone(),
    };
    regex::RegexBuilder::new(&source)
        .size_limit(limit)
        .build()
        .map(Some)
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => GoalError::Pattern(format!(
                "compiles to more than {} KiB; simplify it",
                limit / 1024
            )),
            e => GoalError::Pattern(e.to_string()),
        })
}

impl Goal {
    /// Validates a draft into a goal with the given identity.
    pub fn from_draft(
        draft: GoalDraft,
        id: Uuid,
        site: &str,
        created_at: DateTime<Utc>,
    ) -> Result<Goal, GoalError> {
        let m = &draft.matcher;
        match (&m.event, &m.url) {
            (Some(e), None) if e.is_empty() => return Err(GoalError::Empty("match.event")),
            (None, Some(u)) if u.is_empty() => return Err(GoalError::Empty("match.url")),
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(GoalError::MatchShape),
        }
        if m.event.is_some() && m.op.is_some() {
            return Err(GoalError::OpWithoutUrl);
        }
        for (field, v) in [
            ("name", &draft.name),
            ("match.event", &m.event),
            ("match.url", &m.url),
        ] {
            if let Some(v) = v {
                clean(field, v)?;
            }
        }
        for (k, v) in &m.props {
            clean("match.props", k)?;
            if let PropValue::Text(t) = v {
                clean("match.props", t)?;
            }
        }
        let too_long = |s: &Option<String>| {
            s.as_ref()
                .is_some_and(|s| s.chars().count() > MAX_NAME_CHARS)
        };
        if too_long(&m.event) {
            return Err(GoalError::TooLong("match.event"));
        }
        if too_long(&m.url) {
            return Err(GoalError::TooLong("match.url"));
        }
        if too_long(&draft.name) {
            return Err(GoalError::TooLong("name"));
        }
        let window_days = draft.window_days.unwrap_or(DEFAULT_WINDOW_DAYS);
        if !(1..=MAX_WINDOW_DAYS).contains(&window_days) {
            return Err(GoalError::Window);
        }
        if draft.value.is_some_and(|v| !valid_value(v)) {
            return Err(GoalError::Value);
        }
        if draft.model == Some(Model::DataDriven) {
            return Err(GoalError::ReportModel);
        }
        let currency = draft
            .currency
            .as_deref()
            .map(|c| currency_code("currency", c))
            .transpose()
            .map_err(GoalError::Currency)?;
        let mut matcher = draft.matcher;
        if matcher.url.is_some() {
            matcher.op = Some(matcher.op.unwrap_or_default());
        }
        let name = match draft.name {
            Some(n) if !n.trim().is_empty() => n,
            Some(_) => return Err(GoalError::Empty("name")),
            None => matcher
                .event
                .clone()
                .or_else(|| matcher.url.clone())
                .unwrap_or_default(),
        };
        Ok(Goal {
            compiled: compile(&matcher, MAX_PATTERN_BYTES)?,
            id,
            site: site.to_owned(),
            name,
            matcher,
            value: draft.value,
            model: draft.model.unwrap_or_default(),
            window_days,
            count: draft.count.unwrap_or_default(),
            verified_only: draft.verified_only.unwrap_or(false),
            currency,
            created_at,
        })
    }

    /// Rebuilds the compiled pattern after deserialising a stored goal.
    pub fn prepared(mut self) -> Result<Goal, GoalError> {
        // The bound of earlier builds (1 MiB): a goal stored then must
        // still load, or none of its site's goals would.
        self.compiled = compile(&self.matcher, STORED_PATTERN_BYTES)?;
        Ok(self)
    }

    /// Whether a hit completes this goal. Event goals match events by
    /// name; URL goals match page views by path (query string ignored).
    /// A `verified_only` goal never matches an unverified hit, so such a
    /// hit never reaches the order-id or once-per-visitor claims for it.
    pub fn matches(&self, hit: &Hit) -> bool {
        let path = match (&self.matcher.url, hit.kind) {
            (Some(_), HitKind::Pageview) => hit.path(),
            _ => None,
        };
        self.matches_with_path(hit, path.as_deref())
    }

    /// [`Goal::matches`] with the hit's URL path already parsed (`None`:
    /// no parsable URL), so a hit tried on many URL goals is parsed once.
    pub fn matches_with_path(&self, hit: &Hit, path: Option<&str>) -> bool {
        if hit.site != self.site || (self.verified_only && !hit.verified) || !self.props_match(hit)
        {
            return false;
        }
        let m = &self.matcher;
        if let Some(event) = &m.event {
            return hit.kind == HitKind::Event && hit.name.as_deref() == Some(event.as_str());
        }
        let (Some(pattern), HitKind::Pageview) = (&m.url, hit.kind) else {
            return false;
        };
        let Some(path) = path else {
            return false;
        };
        match m.op.unwrap_or_default() {
            UrlOp::Exact => path == pattern.as_str(),
            UrlOp::Prefix => path.starts_with(pattern.as_str()),
            UrlOp::Wildcard | UrlOp::Regex => {
                self.compiled.as_ref().is_some_and(|r| r.is_match(path))
            }
        }
    }

    fn props_match(&self, hit: &Hit) -> bool {
        self.matcher.props.iter().all(|(k, want)| {
            hit.props
                .get(k)
                .is_some_and(|got| got.as_text() == want.as_text())
        })
    }

    /// The conversion's value: the hit's own, else the goal's default.
    pub fn value_for(&self, hit: &Hit) -> f64 {
        hit.value.or(self.value).unwrap_or(0.0)
    }
}

/// A site's goals indexed for matching: event goals by event name, URL
/// goals in a list of their own, so a hit is tried only on the goals of
/// its kind (an event on those with its name) and its URL is parsed once,
/// however many goals the site has. Same answers as trying every goal's
/// [`Goal::matches`], in the same order.
#[derive(Debug, Clone, Default)]
pub struct GoalSet {
    goals: Vec<Goal>,
    /// Positions in `goals` of the event goals, by event name, ascending.
    by_event: HashMap<String, Vec<usize>>,
    /// Positions in `goals` of the URL goals, ascending.
    by_url: Vec<usize>,
}

impl GoalSet {
    pub fn new(goals: Vec<Goal>) -> GoalSet {
        let mut by_event: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_url = Vec::new();
        for (i, g) in goals.iter().enumerate() {
            match (&g.matcher.event, &g.matcher.url) {
                (Some(event), _) => by_event.entry(event.clone()).or_default().push(i),
                (None, Some(_)) => by_url.push(i),
                // Neither: matches nothing (`Goal::from_draft` refuses it).
                (None, None) => {}
            }
        }
        GoalSet {
            goals,
            by_event,
            by_url,
        }
    }

    pub fn len(&self) -> usize {
        self.goals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.goals.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Goal> {
        self.goals.iter()
    }

    /// The goals `hit` completes, in the order the set was built from.
    pub fn matching<'a>(&'a self, hit: &'a Hit) -> impl Iterator<Item = &'a Goal> + 'a {
        let (tried, path): (&[usize], Option<String>) = match hit.kind {
            HitKind::Event => (
                hit.name
                    .as_deref()
                    .and_then(|n| self.by_event.get(n))
                    .map_or(&[], Vec::as_slice),
                None,
            ),
            HitKind::Pageview if !self.by_url.is_empty() => (&self.by_url, hit.path()),
            HitKind::Pageview => (&[], None),
        };
        tried
            .iter()
            .filter_map(|&i| self.goals.get(i))
            .filter(move |g| g.matches_with_path(hit, path.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hit::{RawHit, Stamp};

    fn goal(json: serde_json::Value) -> Result<Goal, GoalError> {
        let draft: GoalDraft = serde_json::from_value(json).unwrap();
        Goal::from_draft(draft, Uuid::now_v7(), "s_1", Utc::now())
    }

    fn hit(kind: &str, name: Option<&str>, url: &str, props: serde_json::Value) -> Hit {
        let raw = RawHit {
            site: Some("s_1".into()),
            kind: Some(kind.into()),
            name: name.map(Into::into),
            url: Some(url.into()),
            props: serde_json::from_value(props).unwrap(),
            ..Default::default()
        };
        let stamp = Stamp {
            received_at: Utc::now(),
            user_agent: None,
            ip: None,
            request_id: None,
            keep_full_ip: false,
        };
        Hit::stamp(raw, &stamp).unwrap()
    }

    #[test]
    fn event_goal_matches_event_by_name_only() {
        let g = goal(serde_json::json!({"match": {"event": "signup"}, "value": 49})).unwrap();
        assert_eq!(g.name, "signup");
        assert_eq!(g.model, Model::LastClick);
        assert_eq!(g.window_days, 30);
        assert!(g.matches(&hit(
            "event",
            Some("signup"),
            "https://x.example/",
            serde_json::json!(null)
        )));
        assert!(!g.matches(&hit(
            "event",
            Some("login"),
            "https://x.example/",
            serde_json::json!(null)
        )));
        assert!(!g.matches(&hit(
            "pageview",
            None,
            "https://x.example/signup",
            serde_json::json!(null)
        )));
    }

    #[test]
    fn url_ops_compare_paths_without_query() {
        let pv = |u: &str| hit("pageview", None, u, serde_json::json!(null));
        let exact = goal(serde_json::json!({"match": {"url": "/thanks"}})).unwrap();
        assert!(exact.matches(&pv("https://x.example/thanks?order=1")));
        assert!(!exact.matches(&pv("https://x.example/thanks/more")));
        let prefix = goal(serde_json::json!({"match": {"url": "/blog/", "op": "prefix"}})).unwrap();
        assert!(prefix.matches(&pv("https://x.example/blog/post")));
        assert!(!prefix.matches(&pv("https://x.example/about")));
        let wild =
            goal(serde_json::json!({"match": {"url": "/shop/*/done", "op": "wildcard"}})).unwrap();
        assert!(wild.matches(&pv("https://x.example/shop/cart-1/done")));
        assert!(!wild.matches(&pv("https://x.example/shop/a/b/done")));
        let deep =
            goal(serde_json::json!({"match": {"url": "/shop/**/done", "op": "wildcard"}})).unwrap();
        assert!(deep.matches(&pv("https://x.example/shop/a/b/done")));
        let re =
            goal(serde_json::json!({"match": {"url": "^/order/[0-9]+$", "op": "regex"}})).unwrap();
        assert!(re.matches(&pv("https://x.example/order/123")));
        assert!(!re.matches(&pv("https://x.example/order/abc")));
    }

    #[test]
    fn property_filters_must_all_match() {
        let g = goal(
            serde_json::json!({"match": {"event": "buy", "props": {"plan": "pro", "seats": 3}}}),
        )
        .unwrap();
        let buy = |p| hit("event", Some("buy"), "https://x.example/", p);
        assert!(g.matches(&buy(
            serde_json::json!({"plan": "pro", "seats": 3, "x": true})
        )));
        assert!(!g.matches(&buy(serde_json::json!({"plan": "pro"}))));
        assert!(!g.matches(&buy(serde_json::json!({"plan": "free", "seats": 3}))));
    }

    #[test]
    fn names_and_patterns_are_bounded() {
        let long = "a".repeat(MAX_NAME_CHARS + 1);
        let ok = "é".repeat(MAX_NAME_CHARS);
        assert!(goal(serde_json::json!({"name": ok, "match": {"event": ok}})).is_ok());
        assert_eq!(
            goal(serde_json::json!({"name": long, "match": {"event": "a"}})).unwrap_err(),
            GoalError::TooLong("name")
        );
        assert_eq!(
            goal(serde_json::json!({"match": {"event": long}})).unwrap_err(),
            GoalError::TooLong("match.event")
        );
        // Short to write, huge once compiled: refused with the bound named.
        let err =
            goal(serde_json::json!({"match": {"url": "/\\w{40}\\w{40}\\w{40}", "op": "regex"}}))
                .unwrap_err();
        assert!(
            matches!(&err, GoalError::Pattern(m) if m.contains("256 KiB")),
            "{err}"
        );
    }

    #[test]
    fn invalid_goals_are_refused_with_reasons() {
        assert_eq!(
            goal(serde_json::json!({"match": {}})).unwrap_err(),
            GoalError::MatchShape
        );
        assert_eq!(
            goal(serde_json::json!({"match": {"event": "a", "url": "/b"}})).unwrap_err(),
            GoalError::MatchShape
        );
        assert_eq!(
            goal(serde_json::json!({"match": {"event": "a", "op": "prefix"}})).unwrap_err(),
            GoalError::OpWithoutUrl
        );
        assert_eq!(
            goal(serde_json::json!({"match": {"event": "a"}, "window_days": 0})).unwrap_err(),
            GoalError::Window
        );
        assert!(matches!(
            goal(serde_json::json!({"match": {"url": "(", "op": "regex"}})).unwrap_err(),
            GoalError::Pattern(_)
        ));
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        for (body, field) in [
            (
                serde_json::json!({"name": "a\u{00}b", "match": {"event": "e"}}),
                "name",
            ),
            (
                serde_json::json!({"match": {"event": "sign\nup"}}),
                "match.event",
            ),
            (serde_json::json!({"match": {"url": "/a\rb"}}), "match.url"),
            (
                serde_json::json!({"match": {"event": "e", "props": {"p\u{01}": "x"}}}),
                "match.props",
            ),
            (
                serde_json::json!({"match": {"event": "e", "props": {"p": "x\u{1f}"}}}),
                "match.props",
            ),
        ] {
            match goal(body) {
                Err(GoalError::ControlChar(e)) => assert_eq!(e.field, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(goal(serde_json::json!({"name": "tab\tok", "match": {"event": "e"}})).is_ok());
    }

    #[test]
    fn values_out_of_range_are_refused() {
        for bad in [-900.0, -0.01, 1e300, 1e12 + 1.0] {
            assert_eq!(
                goal(serde_json::json!({"match": {"event": "a"}, "value": bad})).unwrap_err(),
                GoalError::Value,
                "{bad}"
            );
        }
        for ok in [0.0, 100.0, 1e12] {
            goal(serde_json::json!({"match": {"event": "a"}, "value": ok})).unwrap();
        }
    }

    #[test]
    fn verified_only_goal_ignores_unverified_hits() {
        let g =
            goal(serde_json::json!({"match": {"event": "buy"}, "verified_only": true})).unwrap();
        assert!(g.verified_only);
        let mut h = hit(
            "event",
            Some("buy"),
            "https://x.example/",
            serde_json::json!(null),
        );
        assert!(!g.matches(&h));
        h.verified = true;
        assert!(g.matches(&h));
        // Stored goals written before the field existed read as false.
        let mut json = serde_json::to_value(&g).unwrap();
        json.as_object_mut().unwrap().remove("verified_only");
        let old: Goal = serde_json::from_value(json).unwrap();
        assert!(!old.verified_only);
    }

    #[test]
    fn hit_value_overrides_goal_default() {
        let g = goal(serde_json::json!({"match": {"event": "signup"}, "value": 49})).unwrap();
        let mut h = hit(
            "event",
            Some("signup"),
            "https://x.example/",
            serde_json::json!(null),
        );
        assert_eq!(g.value_for(&h), 49.0);
        h.value = Some(10.0);
        assert_eq!(g.value_for(&h), 10.0);
    }

    #[test]
    fn currency_is_an_iso_code_kept_upper_case_and_optional() {
        let g = goal(serde_json::json!({"match": {"event": "buy"}, "currency": "eur"})).unwrap();
        assert_eq!(g.currency.as_deref(), Some("EUR"));
        assert_eq!(serde_json::to_value(&g).unwrap()["currency"], "EUR");
        let err =
            goal(serde_json::json!({"match": {"event": "buy"}, "currency": "euro"})).unwrap_err();
        assert!(matches!(err, GoalError::Currency(_)), "{err}");
        assert!(err.to_string().contains("currency"), "{err}");
        let none = goal(serde_json::json!({"match": {"event": "buy"}})).unwrap();
        assert_eq!(none.currency, None);
        // A goal stored before goals had a currency still loads.
        let mut json = serde_json::to_value(&none).unwrap();
        assert!(json.get("currency").is_none());
        json.as_object_mut().unwrap().remove("currency");
        let old: Goal = serde_json::from_value(json).unwrap();
        assert_eq!(old, none);
    }

    #[test]
    fn stored_goal_round_trips_and_recompiles() {
        let g = goal(serde_json::json!({"match": {"url": "/a/*", "op": "wildcard"}})).unwrap();
        let back: Goal = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        let back = back.prepared().unwrap();
        assert_eq!(back, g);
        assert!(back.matches(&hit(
            "pageview",
            None,
            "https://x.example/a/b",
            serde_json::json!(null)
        )));
    }
    #[test]
    fn goal_set_finds_what_trying_every_goal_finds_in_the_same_order() {
        let goals: Vec<Goal> = [
            serde_json::json!({"match": {"event": "buy"}}),
            serde_json::json!({"match": {"url": "/thanks"}}),
            serde_json::json!({"match": {"event": "buy", "props": {"plan": "pro"}}}),
            serde_json::json!({"match": {"url": "/shop/**", "op": "wildcard"}}),
            serde_json::json!({"match": {"event": "signup"}}),
            serde_json::json!({"match": {"url": "^/shop/[0-9]+$", "op": "regex"}}),
            serde_json::json!({"match": {"event": "buy"}, "verified_only": true}),
            serde_json::json!({"match": {"url": "/sh", "op": "prefix"}}),
        ]
        .into_iter()
        .map(|j| goal(j).unwrap())
        .collect();
        let set = GoalSet::new(goals.clone());
        assert_eq!(set.len(), goals.len());
        let mut verified = hit(
            "event",
            Some("buy"),
            "https://x.example/",
            serde_json::json!(null),
        );
        verified.verified = true;
        let mut other_site = hit(
            "event",
            Some("buy"),
            "https://x.example/",
            serde_json::json!(null),
        );
        other_site.site = "s_2".into();
        let hits = [
            hit(
                "event",
                Some("buy"),
                "https://x.example/",
                serde_json::json!({"plan": "pro"}),
            ),
            hit(
                "event",
                Some("buy"),
                "https://x.example/shop/1",
                serde_json::json!(null),
            ),
            hit(
                "event",
                Some("signup"),
                "https://x.example/",
                serde_json::json!(null),
            ),
            hit(
                "event",
                Some("other"),
                "https://x.example/thanks",
                serde_json::json!(null),
            ),
            hit(
                "pageview",
                None,
                "https://x.example/thanks?x=1",
                serde_json::json!(null),
            ),
            hit(
                "pageview",
                None,
                "https://x.example/shop/12",
                serde_json::json!(null),
            ),
            hit(
                "pageview",
                None,
                "https://x.example/shop/a/b",
                serde_json::json!(null),
            ),
            hit(
                "pageview",
                None,
                "https://x.example/about",
                serde_json::json!(null),
            ),
            verified,
            other_site,
        ];
        let mut matched = 0;
        for h in &hits {
            let want: Vec<Uuid> = goals
                .iter()
                .filter(|g| g.matches(h))
                .map(|g| g.id)
                .collect();
            let got: Vec<Uuid> = set.matching(h).map(|g| g.id).collect();
            assert_eq!(got, want, "{:?} {:?}", h.kind, h.url);
            matched += got.len();
        }
        // Every kind of goal matched something above.
        assert_eq!(matched, 12);
    }
}
