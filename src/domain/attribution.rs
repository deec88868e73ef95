//! Attribution: splitting one conversion's credit over the ad clicks
//! (touchpoints) that preceded it.
//!
//! Pure functions only. Credits always sum to 1 and depend only on the set
//! of touchpoints, never on the order they were loaded in, so redelivered
//! or reordered hits produce the same totals.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::goal::Goal;
use super::hit::Hit;
use super::referrer::{touchpoint_labels, Classifier, ReferralRules};

/// Half-life of the `time_decay` model.
pub const TIME_DECAY_HALF_LIFE_DAYS: f64 = 7.0;
/// Shares of the first and the last touchpoint under `position_based`.
pub const POSITION_ENDS: f64 = 0.4;
pub const DIRECT: &str = "(direct)";
/// The channel of a conversion no touchpoint preceded.
pub const DIRECT_CHANNEL: &str = "Direct";
/// Most touchpoints one conversion is credited to: the first in its window
/// and the latest ones. A longer path loses touchpoints from its middle
/// (under `linear` each would get less than 1/20 anyway). The bound keeps
/// every conversion's rows small enough to be written as one unit: on
/// Cassandra one logged batch, which the server refuses past its
/// `batch_size_fail_threshold` (50 KiB by default). Measured on Cassandra
/// 5.0 with the largest conversion a hit can make (visitor and order ids
/// of 2,048 bytes, every label at [`MAX_DIMENSION_BYTES`]): written when
/// credited to 24 touchpoints, refused at 28 (each credit is in the unit
/// three times: a credit row and two JSON bodies).
pub const MAX_CREDITED: usize = 20;
/// Longest source, medium, campaign or ad a touchpoint keeps, in bytes
/// (cut at a character boundary). Google Analytics cuts parameter values
/// at 100 characters; a utm value is a label, and an unbounded one would
/// multiply into every credit row of every conversion it earns.
pub const MAX_DIMENSION_BYTES: usize = 100;

/// `s` cut to at most [`MAX_DIMENSION_BYTES`], at a character boundary.
fn bounded(s: String) -> String {
    super::hit::cut_to(s, MAX_DIMENSION_BYTES)
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    #[default]
    LastClick,
    FirstClick,
    Linear,
    TimeDecay,
    PositionBased,
    /// Credit by each channel's Markov removal effect over the site's
    /// paths ([`super::markov`]): a report model only. It is a property of
    /// many paths, never of one conversion, so no goal records it; a
    /// single conversion's steps under it are weighted as under `linear`
    /// (what the `data_driven` rollup rows count, once per touchpoint).
    DataDriven,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::LastClick => "last_click",
            Model::FirstClick => "first_click",
            Model::Linear => "linear",
            Model::TimeDecay => "time_decay",
            Model::PositionBased => "position_based",
            Model::DataDriven => "data_driven",
        }
    }

    pub fn parse(s: &str) -> Option<Model> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

/// An ad click or tagged landing that may earn credit for later
/// conversions of the same visitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Touchpoint {
    pub hit_id: Uuid,
    pub site: String,
    pub vid: String,
    pub at: DateTime<Utc>,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ad: Option<String>,
    /// The GA4 default channel group of this visit (`Paid Search`, ...),
    /// decided once when the touchpoint is made and kept with it: a
    /// rollup row must be taken out under the channel it was added under,
    /// whatever lists a later process classifies with.
    #[serde(default)]
    pub channel: String,
    /// The click id parameter and its value, e.g. (`gclid`, `abc`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub click_id: Option<(String, String)>,
}

impl Touchpoint {
    /// The touchpoint a hit represents, if any: a click id or utm tag, or
    /// a referral from outside the site (see
    /// [`touchpoint_labels`]). Its channel is decided here, once.
    pub fn from_hit(
        hit: &Hit,
        rules: &ReferralRules,
        classifier: &Classifier,
    ) -> Option<Touchpoint> {
        let m = &hit.marketing;
        let labels = touchpoint_labels(
            m,
            hit.referrer.as_deref(),
            hit.url.as_deref(),
            rules,
            classifier,
        )?;
        Some(Touchpoint {
            hit_id: hit.id,
            site: hit.site.clone(),
            vid: hit.vid.clone(),
            at: hit.received_at,
            source: bounded(labels.source),
            medium: labels.medium.map(bounded),
            campaign: labels.campaign.map(bounded),
            ad: labels.ad.map(bounded),
            channel: labels.channel.as_str().to_owned(),
            click_id: m
                .first_click_id()
                .map(|(param, _, v)| (param.to_owned(), v.clone())),
        })
    }
}

/// The channel of labels stored without one (written before channels were
/// recorded): what the embedded lists give them. `(direct)` is
/// [`DIRECT_CHANNEL`].
pub fn channel_of_labels(source: &str, medium: Option<&str>, campaign: Option<&str>) -> String {
    if source == DIRECT && medium.is_none() {
        return DIRECT_CHANNEL.to_owned();
    }
    Classifier::embedded()
        .channel(source, medium, campaign)
        .as_str()
        .to_owned()
}

/// One touchpoint's share of a conversion. `touchpoint` is `None` for the
/// `(direct)` credit given when no touchpoint was in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub touchpoint: Option<Uuid>,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ad: Option<String>,
    /// The touchpoint's channel; [`DIRECT_CHANNEL`] for the direct step.
    #[serde(default)]
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub at: Option<DateTime<Utc>>,
    pub credit: f64,
}

/// An attributed conversion: what the store keeps and reports explain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    pub hit_id: Uuid,
    pub goal_id: Uuid,
    pub site: String,
    pub vid: String,
    pub at: DateTime<Utc>,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub order_id: Option<String>,
    pub model: Model,
    pub window_days: u16,
    pub credits: Vec<Credit>,
    /// The converting hit's user agent and page URL, which an export to
    /// Meta's Conversions API sends (`client_user_agent`,
    /// `event_source_url`). Stores keep them beside the conversion, keyed
    /// by hit; never in a JSON body, so explain does not show them and
    /// they do not weigh on a stored conversion's size.
    #[serde(skip)]
    pub user_agent: Option<String>,
    #[serde(skip)]
    pub page_url: Option<String>,
}

/// Weights (summing to 1) for `n` touchpoints ordered oldest first, whose
/// ages at conversion time are given in days.
pub fn weights(model: Model, ages_days: &[f64]) -> Vec<f64> {
    let n = ages_days.len();
    if n == 0 {
        return Vec::new();
    }
    let mut w = vec![0.0; n];
    match model {
        Model::LastClick => w[n - 1] = 1.0,
        Model::FirstClick => w[0] = 1.0,
        Model::Linear | Model::DataDriven => w.iter_mut().for_each(|x| *x = 1.0 / n as f64),
        Model::TimeDecay => {
            for (x, age) in w.iter_mut().zip(ages_days) {
                *x = 0.5f64.powf(age.max(0.0) / TIME_DECAY_HALF_LIFE_DAYS);
            }
            let sum: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= sum);
        }
        Model::PositionBased => match n {
            1 => w[0] = 1.0,
            2 => {
                w[0] = 0.5;
                w[1] = 0.5;
            }
            _ => {
                let middle = (1.0 - 2.0 * POSITION_ENDS) / (n - 2) as f64;
                w.iter_mut().for_each(|x| *x = middle);
                w[0] = POSITION_ENDS;
                w[n - 1] = POSITION_ENDS;
            }
        },
    }
    w
}

/// Attributes a converting hit under a goal. `candidates` are the
/// visitor's touchpoints in any order; those outside the goal's lookback
/// window, or after the conversion, are ignored. The conversion hit itself
/// may be one of them (a landing page that is also the goal). Its
/// currency is the hit's, else the goal's; a caller that knows the site's
/// reporting currency resolves it again with that (see
/// [`super::currency::resolve`]).
pub fn attribute(goal: &Goal, hit: &Hit, candidates: &[Touchpoint]) -> Conversion {
    let mut conversion = Conversion {
        hit_id: hit.id,
        goal_id: goal.id,
        site: hit.site.clone(),
        vid: hit.vid.clone(),
        at: hit.received_at,
        value: goal.value_for(hit),
        // The site's currency is the caller's to add (the goal does not
        // know its site's settings): see `super::currency::resolve`.
        currency: super::currency::resolve(hit.currency.as_deref(), goal.currency.as_deref(), None),
        order_id: hit.order_id.clone(),
        model: goal.model,
        window_days: goal.window_days,
        credits: Vec::new(),
        user_agent: hit.user_agent.clone(),
        page_url: hit.url.clone(),
    };
    conversion.credits = credit_split(&conversion, candidates);
    conversion
}

impl Conversion {
    /// The first instant of this conversion's lookback window: a
    /// touchpoint at or after it (and not after the conversion) earns credit.
    pub fn window_start(&self) -> DateTime<Utc> {
        self.at - Duration::days(i64::from(self.window_days))
    }

    /// Whether a touchpoint falls inside this conversion's window, so that
    /// learning of it (late) changes this conversion's credits.
    pub fn is_credited_by(&self, t: &Touchpoint) -> bool {
        t.vid == self.vid
            && t.site == self.site
            && t.at >= self.window_start()
            && (t.at, t.hit_id) <= (self.at, self.hit_id)
    }
}

/// The credit split of a conversion (its model, window, time, visitor)
/// over `candidates`, the visitor's touchpoints in any order and with
/// repeats. A pure function of the set of candidates in the window: the
/// store calls it again whenever a touchpoint arrives after a conversion
/// it precedes, and gets the answer processing in time order would have.
pub fn credit_split(c: &Conversion, candidates: &[Touchpoint]) -> Vec<Credit> {
    split(c, c.model, candidates)
}

/// The credit split a stored conversion would have had under `model`,
/// computed at read time from the visitor's touchpoints (any order; those
/// outside the conversion's window or after it are ignored), for comparing
/// models side by side. Same window and ordering rules as [`attribute`], so
/// `recredit(c, c.model, tps)` gives back `c.credits` for the touchpoints
/// `c` was attributed from.
pub fn recredit(conversion: &Conversion, model: Model, candidates: &[Touchpoint]) -> Vec<Credit> {
    split(conversion, model, candidates)
}

/// The split of `c` under `model` over the touchpoints in its window:
/// the steps of its path that earn something.
fn split(c: &Conversion, model: Model, candidates: &[Touchpoint]) -> Vec<Credit> {
    let mut credits = credits_from_path(c.at, model, &window_steps(c, candidates));
    credits.retain(|cr| cr.credit > 0.0);
    credits
}

/// A conversion's path: the touchpoints in its window that can earn
/// credit (the first and the latest, at most [`MAX_CREDITED`]), oldest
/// first, each with its credit under `c.model`, zero included when the
/// model gives it nothing; or the one `(direct)` step when the window is
/// empty. Stores keep the path rather than one model's split, so the
/// credits under every model ([`credits_from_path`]) follow from what they
/// hold.
pub fn window_path(c: &Conversion, candidates: &[Touchpoint]) -> Vec<Credit> {
    credits_from_path(c.at, c.model, &window_steps(c, candidates))
}

/// The path's steps with no credit yet (see [`window_path`]).
fn window_steps(c: &Conversion, candidates: &[Touchpoint]) -> Vec<Credit> {
    let mut window: Vec<&Touchpoint> = candidates.iter().filter(|t| c.is_credited_by(t)).collect();
    // Order by time, then id, so ties resolve the same way on every run.
    window.sort_by_key(|t| (t.at, t.hit_id));
    window.dedup_by_key(|t| t.hit_id);
    if window.len() > MAX_CREDITED {
        // The first and the latest MAX_CREDITED - 1.
        window.drain(1..window.len() - (MAX_CREDITED - 1));
    }
    if window.is_empty() {
        return vec![Credit {
            touchpoint: None,
            source: DIRECT.to_owned(),
            medium: None,
            campaign: None,
            ad: None,
            channel: DIRECT_CHANNEL.to_owned(),
            at: None,
            credit: 1.0,
        }];
    }
    window
        .iter()
        .map(|t| Credit {
            touchpoint: Some(t.hit_id),
            source: t.source.clone(),
            medium: t.medium.clone(),
            campaign: t.campaign.clone(),
            ad: t.ad.clone(),
            channel: t.channel.clone(),
            at: Some(t.at),
            credit: 0.0,
        })
        .collect()
}

/// The credits of a conversion made at `at` under `model`, from its path
/// as [`window_path`] built it (the credits the path carries are ignored).
/// One step per path step, in time order, zero-credit steps kept. A
/// `(direct)` path (no touchpoint) is always credited 1.
pub fn credits_from_path(at: DateTime<Utc>, model: Model, path: &[Credit]) -> Vec<Credit> {
    let mut steps: Vec<Credit> = path.to_vec();
    if steps.iter().all(|s| s.touchpoint.is_none()) {
        steps.truncate(1);
        if let Some(s) = steps.first_mut() {
            s.credit = 1.0;
        }
        return steps;
    }
    steps.retain(|s| s.touchpoint.is_some());
    steps.sort_by_key(|s| (s.at, s.touchpoint));
    let ages: Vec<f64> = steps
        .iter()
        .map(|s| {
            s.at.map_or(0.0, |t| (at - t).num_milliseconds() as f64 / 86_400_000.0)
        })
        .collect();
    for (s, w) in steps.iter_mut().zip(weights(model, &ages)) {
        s.credit = w;
    }
    steps
}

impl Conversion {
    /// This conversion with its credits under `model`, derived from the
    /// path the store keeps in `credits`; steps that earn nothing under
    /// `model` are left out (what explain shows).
    pub fn under(mut self, model: Model) -> Conversion {
        let mut credits = credits_from_path(self.at, model, &self.credits);
        credits.retain(|cr| cr.credit > 0.0);
        self.credits = credits;
        self.model = model;
        self
    }
}

/// Every model a goal can record, in the order the API and dashboard show
/// them ([`Model::DataDriven`] follows them in a model comparison).
pub const ALL_MODELS: [Model; 5] = [
    Model::LastClick,
    Model::FirstClick,
    Model::Linear,
    Model::TimeDecay,
    Model::PositionBased,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::goal::GoalDraft;
    use crate::domain::hit::{RawHit, Stamp};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
    }

    fn goal(model: Model, window: u16) -> Goal {
        let draft: GoalDraft = serde_json::from_value(serde_json::json!({
            "match": {"event": "signup"}, "value": 49.0,
            "model": model, "window_days": window
        }))
        .unwrap();
        Goal::from_draft(draft, Uuid::now_v7(), "s_1", t0()).unwrap()
    }

    fn conversion_hit(at: DateTime<Utc>) -> Hit {
        let raw = RawHit {
            site: Some("s_1".into()),
            kind: Some("event".into()),
            name: Some("signup".into()),
            vid: Some("v1".into()),
            ..Default::default()
        };
        stamped(raw, at)
    }

    /// `raw` as the collector stamps it at `at`, with no client details.
    fn stamped(raw: RawHit, at: DateTime<Utc>) -> Hit {
        let stamp = Stamp {
            received_at: at,
            user_agent: None,
            ip: None,
            request_id: None,
            keep_full_ip: false,
        };
        Hit::stamp(raw, &stamp).unwrap()
    }

    fn tp(source: &str, days_before: f64) -> Touchpoint {
        Touchpoint {
            hit_id: Uuid::now_v7(),
            site: "s_1".into(),
            vid: "v1".into(),
            at: t0() - Duration::milliseconds((days_before * 86_400_000.0) as i64),
            source: source.into(),
            medium: Some("cpc".into()),
            campaign: Some(format!("{source}-campaign")),
            ad: None,
            channel: "Paid Search".into(),
            click_id: None,
        }
    }

    #[test]
    fn a_long_path_is_credited_to_its_first_and_latest_touchpoints() {
        let path: Vec<Touchpoint> = (0..120)
            .map(|i| tp(&format!("s{i}"), f64::from(120 - i) / 24.0))
            .collect();
        for model in ALL_MODELS {
            let c = attribute(&goal(model, 30), &conversion_hit(t0()), &path);
            let credited: Vec<Option<Uuid>> = c.credits.iter().map(|c| c.touchpoint).collect();
            assert!(credited.len() <= MAX_CREDITED, "{model:?}");
            let total: f64 = c.credits.iter().map(|c| c.credit).sum();
            assert!((total - 1.0).abs() < 1e-9, "{model:?}: {total}");
            // Every credited touchpoint is the first or one of the latest.
            let kept: Vec<Uuid> = std::iter::once(path[0].hit_id)
                .chain(path[120 - (MAX_CREDITED - 1)..].iter().map(|t| t.hit_id))
                .collect();
            assert!(credited
                .iter()
                .all(|t| t.is_some_and(|t| kept.contains(&t))));
        }
        let linear = attribute(&goal(Model::Linear, 30), &conversion_hit(t0()), &path);
        assert_eq!(linear.credits.len(), MAX_CREDITED);
        assert_eq!(linear.credits[0].touchpoint, Some(path[0].hit_id));
        assert_eq!(
            linear.credits[MAX_CREDITED - 1].touchpoint,
            Some(path[119].hit_id)
        );
        let first = attribute(&goal(Model::FirstClick, 30), &conversion_hit(t0()), &path);
        assert_eq!(first.credits[0].touchpoint, Some(path[0].hit_id));
    }

    #[test]
    fn touchpoint_labels_are_cut_at_a_character_boundary() {
        let long = format!("{}é{}", "a".repeat(99), "b".repeat(300));
        let raw = RawHit {
            site: Some("s_1".into()),
            url: Some(format!(
                "https://shop.example/?utm_source={long}&utm_campaign=short&utm_medium={long}"
            )),
            vid: Some("v1".into()),
            ..Default::default()
        };
        let t = Touchpoint::from_hit(
            &stamped(raw, t0()),
            &ReferralRules::default(),
            Classifier::embedded(),
        )
        .unwrap();
        // 99 bytes, then a 2-byte character that would end at byte 101.
        assert_eq!(t.source, "a".repeat(99));
        assert_eq!(t.medium.as_deref(), Some("a".repeat(99).as_str()));
        assert_eq!(t.campaign.as_deref(), Some("short"));
    }

    /// A landing's touchpoint, if any, from its page and referrer, for a
    /// site on `shop.example` that ignores `pay.example`.
    fn landing(url: &str, referrer: Option<&str>) -> Option<Touchpoint> {
        let raw = RawHit {
            site: Some("s_1".into()),
            kind: Some("pageview".into()),
            url: Some(url.into()),
            referrer: referrer.map(Into::into),
            vid: Some("v1".into()),
            ..Default::default()
        };
        let rules = ReferralRules {
            domains: vec!["shop.example".into()],
            ignore_referrers: vec!["pay.example".into()],
        };
        Touchpoint::from_hit(&stamped(raw, t0()), &rules, Classifier::embedded())
    }

    #[test]
    fn referrals_from_outside_the_site_are_touchpoints_with_a_channel() {
        let page = "https://shop.example/shoes";
        let t = landing(page, Some("https://www.google.com/")).unwrap();
        assert_eq!(
            (t.source.as_str(), t.medium.as_deref(), t.channel.as_str()),
            ("google", Some("organic"), "Organic Search")
        );
        let t = landing(page, Some("https://blog.other.example/review")).unwrap();
        assert_eq!(
            (t.source.as_str(), t.medium.as_deref(), t.channel.as_str()),
            ("other.example", Some("referral"), "Referral")
        );
        let t = landing(
            &format!("{page}?gclid=abc"),
            Some("https://www.google.com/"),
        )
        .unwrap();
        assert_eq!(
            (t.source.as_str(), t.medium.as_deref(), t.channel.as_str()),
            ("google", Some("cpc"), "Paid Search")
        );
        assert_eq!(t.click_id, Some(("gclid".into(), "abc".into())));
        // Direct, self-referrals (any of the site's hosts), ignored
        // referrers (the site's and the default payment providers).
        for referrer in [
            None,
            Some("https://shop.example/cart"),
            Some("https://www.shop.example/"),
            Some("https://pay.example/return"),
            Some("https://www.paypal.com/checkoutnow"),
            Some("https://checkout.stripe.com/c/pay/cs_test"),
        ] {
            assert!(landing(page, referrer).is_none(), "{referrer:?}");
        }
    }

    fn shares(c: &Conversion) -> Vec<(String, f64)> {
        c.credits
            .iter()
            .map(|c| (c.source.clone(), c.credit))
            .collect()
    }

    #[test]
    fn no_touchpoint_credits_direct() {
        let c = attribute(&goal(Model::LastClick, 30), &conversion_hit(t0()), &[]);
        assert_eq!(shares(&c), vec![("(direct)".to_owned(), 1.0)]);
        assert_eq!(c.value, 49.0);
    }

    #[test]
    fn models_split_three_touchpoints_as_documented() {
        let tps = [tp("google", 3.0), tp("facebook", 2.0), tp("bing", 1.0)];
        let hit = conversion_hit(t0());
        let at = |m| shares(&attribute(&goal(m, 30), &hit, &tps));
        assert_eq!(at(Model::LastClick), vec![("bing".to_owned(), 1.0)]);
        assert_eq!(at(Model::FirstClick), vec![("google".to_owned(), 1.0)]);
        let linear = at(Model::Linear);
        assert!(linear.iter().all(|(_, w)| (w - 1.0 / 3.0).abs() < 1e-12));
        let pos = at(Model::PositionBased);
        for ((_, got), want) in pos.iter().zip([0.4, 0.2, 0.4]) {
            assert!((got - want).abs() < 1e-12, "{pos:?}");
        }
        let decay = at(Model::TimeDecay);
        // Each day closer weighs 2^(1/7) more.
        let ratio = decay[2].1 / decay[1].1;
        assert!((ratio - 2f64.powf(1.0 / 7.0)).abs() < 1e-9);
    }

    #[test]
    fn touchpoints_outside_window_or_after_conversion_are_ignored() {
        let late = Touchpoint {
            at: t0() + Duration::minutes(1),
            ..tp("late", 0.0)
        };
        let tps = [tp("old", 8.0), tp("fresh", 6.0), late];
        let c = attribute(&goal(Model::Linear, 7), &conversion_hit(t0()), &tps);
        assert_eq!(shares(&c), vec![("fresh".to_owned(), 1.0)]);
    }

    #[test]
    fn other_visitors_touchpoints_are_ignored() {
        let other = Touchpoint {
            vid: "v2".into(),
            ..tp("google", 1.0)
        };
        let c = attribute(&goal(Model::LastClick, 30), &conversion_hit(t0()), &[other]);
        assert_eq!(c.credits[0].source, DIRECT);
    }

    fn model() -> impl Strategy<Value = Model> {
        prop_oneof![
            Just(Model::LastClick),
            Just(Model::FirstClick),
            Just(Model::Linear),
            Just(Model::TimeDecay),
            Just(Model::PositionBased),
        ]
    }

    proptest! {
        #[test]
        fn credits_sum_to_one(m in model(), ages in prop::collection::vec(0.0f64..60.0, 0..12), window in 1u16..90) {
            let tps: Vec<_> = ages.iter().enumerate().map(|(i, a)| tp(&format!("s{i}"), *a)).collect();
            let c = attribute(&goal(m, window), &conversion_hit(t0()), &tps);
            let sum: f64 = c.credits.iter().map(|c| c.credit).sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "sum was {sum}");
            prop_assert!(c.credits.iter().all(|c| c.credit > 0.0));
        }

        #[test]
        fn order_and_duplicates_of_candidates_do_not_change_credit(
            m in model(),
            ages in prop::collection::vec(0.0f64..40.0, 1..10),
            seed in any::<u64>(),
        ) {
            let tps: Vec<_> = ages.iter().enumerate().map(|(i, a)| tp(&format!("s{i}"), *a)).collect();
            let g = goal(m, 30);
            let hit = conversion_hit(t0());
            let base = attribute(&g, &hit, &tps);
            // A redelivered batch may load touchpoints in another order and twice.
            let mut shuffled = tps.clone();
            shuffled.extend(tps.iter().cloned());
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(attribute(&g, &hit, &shuffled), base);
        }

        #[test]
        fn recredit_under_each_model_equals_attributing_under_it(
            stored in model(),
            ages in prop::collection::vec(-5.0f64..60.0, 0..10),
            window in 1u16..60,
        ) {
            let tps: Vec<_> = ages.iter().enumerate().map(|(i, a)| tp(&format!("s{i}"), *a)).collect();
            let hit = conversion_hit(t0());
            let c = attribute(&goal(stored, window), &hit, &tps);
            for m in ALL_MODELS {
                prop_assert_eq!(recredit(&c, m, &tps), attribute(&goal(m, window), &hit, &tps).credits);
            }
        }
    }
}
