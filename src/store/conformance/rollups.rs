//! Conformance of the per-day rollups: on random histories, written in
//! random batches and orders with redeliveries, every report the store
//! answers from its rollups equals the report recomputed from scratch:
//! each counted conversion credited, under the model asked for, over every
//! touchpoint of its visitor, and every touchpoint counted as a click.
//! Under `data_driven` the path tables (each counted conversion's path,
//! each visitor's tail) are recomputed too and solved.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{goal, new_site, t0, Candidate, Store};
use crate::domain::adjustment::{adjusted_value, effect, Adjustment, AdjustmentKind};
use crate::domain::attribution::recredit;
use crate::domain::dedup::{decide, order_holder, Contender};
use crate::domain::markov::{self, PathRow};
use crate::domain::report::{
    aggregate_with_clicks, assemble, click_totals_from_rows, rollup_rows_from_credits, Report,
};
use crate::domain::rollup::ROLLUP_MODELS;
use crate::domain::{ClickRow, Conversion, CreditRow, GroupKey, Model, ReportQuery, Touchpoint};

const SOURCES: [&str; 4] = ["google", "facebook", "bing", "newsletter"];
/// Channels given independently of the labels: a store keeps the channel
/// a touchpoint was made with, it never classifies again.
const CHANNELS: [&str; 3] = ["Paid Search", "Organic Social", "Referral"];
/// Conversions' currencies, none included: every report splits by them.
const CURRENCIES: [Option<&str>; 3] = [None, Some("EUR"), Some("USD")];

struct History {
    touchpoints: Vec<Touchpoint>,
    candidates: Vec<Candidate>,
    /// Retractions and restatements by order id.
    adjustments: Vec<Adjustment>,
}

impl History {
    /// `c`'s value once its order's adjustments apply; `None` if retracted.
    fn adjusted(&self, c: &Conversion) -> Option<f64> {
        let of_order = self
            .adjustments
            .iter()
            .filter(|a| a.site == c.site && Some(&a.order_id) == c.order_id.as_ref());
        adjusted_value(c.value, effect(of_order))
    }
}

/// A random history of one site: visitors with 0-4 touchpoints and 0-3
/// conversion candidates over ten days, some sharing order ids.
fn history(rng: &mut StdRng, site: &str, goals: &[(Uuid, Model, bool)]) -> History {
    history_of(rng, site, goals, 14, 0..5, 0..4, 4)
}

/// A random history of one site: `visitors` visitors, each with a number
/// of touchpoints and of conversion candidates drawn from the ranges, over
/// ten days; 30% of candidates carry one of `orders` order ids.
fn history_of(
    rng: &mut StdRng,
    site: &str,
    goals: &[(Uuid, Model, bool)],
    visitors: usize,
    touchpoints: Range<usize>,
    candidates: Range<usize>,
    orders: usize,
) -> History {
    let start = t0() - Duration::days(10);
    let at =
        |rng: &mut StdRng| start + Duration::milliseconds(rng.random_range(0..10 * 86_400_000));
    let mut h = History {
        touchpoints: Vec::new(),
        candidates: Vec::new(),
        adjustments: Vec::new(),
    };
    for v in 0..visitors {
        let vid = format!("v{v}");
        for _ in 0..rng.random_range(touchpoints.clone()) {
            let source = SOURCES[rng.random_range(0..SOURCES.len())];
            h.touchpoints.push(Touchpoint {
                hit_id: Uuid::now_v7(),
                site: site.into(),
                vid: vid.clone(),
                at: at(rng),
                source: source.into(),
                medium: rng.random_bool(0.7).then(|| "cpc".into()),
                campaign: rng
                    .random_bool(0.6)
                    .then(|| format!("c{}", rng.random_range(0..3))),
                ad: rng
                    .random_bool(0.3)
                    .then(|| format!("ad{}", rng.random_range(0..2))),
                channel: CHANNELS[rng.random_range(0..CHANNELS.len())].into(),
                click_id: None,
            });
        }
        for _ in 0..rng.random_range(candidates.clone()) {
            let (goal_id, model, once) = goals[rng.random_range(0..goals.len())];
            let conversion = Conversion {
                hit_id: Uuid::now_v7(),
                goal_id,
                site: site.into(),
                vid: vid.clone(),
                at: at(rng),
                value: f64::from(rng.random_range(0..20_000)) / 100.0,
                currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())].map(Into::into),
                order_id: rng
                    .random_bool(0.3)
                    .then(|| format!("o{}", rng.random_range(0..orders))),
                model,
                window_days: 7,
                credits: Vec::new(),
                user_agent: None,
                page_url: None,
            };
            h.candidates.push(Candidate {
                conversion,
                once_per_visitor: once,
            });
        }
    }
    h
}

/// The report recomputed from scratch: what the store counts (asked hit
/// by hit), credited over every touchpoint of the history.
async fn recomputed(
    store: &Arc<dyn Store>,
    site: &str,
    h: &History,
    query: &ReportQuery,
    goal_models: &[(Uuid, Model, bool)],
) -> Report {
    if query.model == Some(Model::DataDriven) {
        return recomputed_data_driven(store, site, h, query, goal_models).await;
    }
    let mut credits = Vec::new();
    let hits: BTreeSet<Uuid> = h.candidates.iter().map(|c| c.conversion.hit_id).collect();
    for hit in hits {
        for c in store.conversions_for_hit(site, hit).await.unwrap() {
            let Some(value) = h.adjusted(&c) else {
                continue;
            };
            let own = goal_models
                .iter()
                .find(|(g, _, _)| *g == c.goal_id)
                .map(|(_, m, _)| *m)
                .unwrap();
            let model = query.model.unwrap_or(own);
            for cr in recredit(&c, model, &h.touchpoints) {
                credits.push(CreditRow {
                    day: c.at.date_naive(),
                    goal: c.goal_id,
                    source: cr.source,
                    medium: cr.medium,
                    campaign: cr.campaign,
                    ad: cr.ad,
                    channel: cr.channel,
                    credit: cr.credit,
                    value,
                    currency: c.currency.clone(),
                });
            }
        }
    }
    let clicks = h.touchpoints.iter().map(|t| ClickRow {
        day: t.at.date_naive(),
        source: t.source.clone(),
        medium: t.medium.clone(),
        campaign: t.campaign.clone(),
        ad: t.ad.clone(),
        channel: t.channel.clone(),
        clicks: 1,
    });
    aggregate_with_clicks(query, credits, clicks)
}

/// The counted conversions of the history, as the store answers hit by
/// hit (whether each counts is checked by [`assert_counted`]).
async fn counted(store: &Arc<dyn Store>, site: &str, h: &History) -> Vec<Conversion> {
    let mut out = Vec::new();
    let hits: BTreeSet<Uuid> = h.candidates.iter().map(|c| c.conversion.hit_id).collect();
    for hit in hits {
        out.extend(store.conversions_for_hit(site, hit).await.unwrap());
    }
    out
}

/// The path tables recomputed from scratch: each counted conversion's
/// path on its day, and each visitor's tail after its latest counted
/// conversion, as (day, goal, path) -> count.
async fn recomputed_paths(
    store: &Arc<dyn Store>,
    site: &str,
    h: &History,
) -> BTreeMap<(NaiveDate, Option<Uuid>, String), i64> {
    let mut rows = BTreeMap::new();
    let mut latest: BTreeMap<String, (chrono::DateTime<chrono::Utc>, Uuid)> = BTreeMap::new();
    for c in counted(store, site, h).await {
        // A retracted conversion still ends its visitor's tail, but its
        // path is in no table: its touchpoints neither converted nor not.
        if h.adjusted(&c).is_some() {
            let steps = recredit(&c, Model::Linear, &h.touchpoints);
            *rows
                .entry((c.at.date_naive(), Some(c.goal_id), markov::path_of(&steps)))
                .or_default() += 1;
        }
        let slot = latest.entry(c.vid.clone()).or_insert((c.at, c.hit_id));
        *slot = (*slot).max((c.at, c.hit_id));
    }
    let visitors: BTreeSet<&str> = h.touchpoints.iter().map(|t| t.vid.as_str()).collect();
    for vid in visitors {
        let tps: Vec<Touchpoint> = h
            .touchpoints
            .iter()
            .filter(|t| t.vid == vid)
            .cloned()
            .collect();
        if let Some((day, path)) = markov::tail(latest.get(vid).copied(), &tps) {
            *rows.entry((day, None, path)).or_default() += 1;
        }
    }
    rows
}

/// The store's path tables over the history's days equal their
/// recomputation.
async fn assert_paths(store: &Arc<dyn Store>, site: &str, h: &History, what: &str) {
    let first: NaiveDate = (t0() - Duration::days(11)).date_naive();
    let last: NaiveDate = (t0() + Duration::days(1)).date_naive();
    let mut got: BTreeMap<(NaiveDate, Option<Uuid>, String), i64> = BTreeMap::new();
    for PathRow {
        day,
        goal,
        path,
        count,
    } in store.path_rows(site, first, last).await.unwrap()
    {
        *got.entry((day, goal, path)).or_default() += count;
    }
    assert_eq!(
        got,
        recomputed_paths(store, site, h).await,
        "{what}: path tables"
    );
}

/// A `data_driven` report recomputed from scratch: the path tables of
/// [`recomputed_paths`] in the range solved, and each channel's credit
/// split by every touchpoint of the counted conversions' paths.
async fn recomputed_data_driven(
    store: &Arc<dyn Store>,
    site: &str,
    h: &History,
    query: &ReportQuery,
    goal_models: &[(Uuid, Model, bool)],
) -> Report {
    let asked: BTreeSet<Uuid> = goal_models
        .iter()
        .map(|(g, _, _)| *g)
        .filter(|g| query.goal.is_none_or(|q| q == *g))
        .collect();
    let in_range = |day: NaiveDate| day >= query.from && day <= query.to;
    let table = markov::table(
        recomputed_paths(store, site, h)
            .await
            .into_iter()
            .filter(|((day, goal, _), _)| in_range(*day) && goal.is_none_or(|g| asked.contains(&g)))
            .map(|((day, goal, path), count)| PathRow {
                day,
                goal,
                path,
                count,
            }),
    );
    let credit = markov::channel_credit(&table);
    let mut touches = Vec::new();
    for c in counted(store, site, h).await {
        if !asked.contains(&c.goal_id) {
            continue;
        }
        let Some(value) = h.adjusted(&c) else {
            continue;
        };
        for step in recredit(&c, Model::Linear, &h.touchpoints) {
            touches.push(CreditRow {
                day: c.at.date_naive(),
                goal: c.goal_id,
                source: step.source,
                medium: step.medium,
                campaign: step.campaign,
                ad: step.ad,
                channel: step.channel,
                currency: c.currency.clone(),
                credit: 1.0,
                value,
            });
        }
    }
    let mut by_channel = query.clone();
    if !by_channel.group_by.contains(&GroupKey::Channel) {
        by_channel.group_by.push(GroupKey::Channel);
    }
    let keep_channel = query.group_by.contains(&GroupKey::Channel);
    let rows = markov::credit_rows(&credit, rollup_rows_from_credits(&by_channel, touches))
        .into_iter()
        .map(|mut r| {
            if !keep_channel {
                r.labels.channel = None;
            }
            r
        });
    let clicks = h.touchpoints.iter().map(|t| ClickRow {
        day: t.at.date_naive(),
        source: t.source.clone(),
        medium: t.medium.clone(),
        campaign: t.campaign.clone(),
        ad: t.ad.clone(),
        channel: t.channel.clone(),
        clicks: 1,
    });
    assemble(query, rows, click_totals_from_rows(query, clicks))
}

/// Reports equal but for the last unit of a rounded share.
pub fn assert_same(got: &Report, want: &Report, what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
    assert_eq!(
        got.rows.len(),
        want.rows.len(),
        "{what}: {got:?} vs {want:?}"
    );
    assert_eq!(got.total.clicks, want.total.clicks, "{what}");
    let same_values = got.total.values.len() == want.total.values.len()
        && got
            .total
            .values
            .iter()
            .zip(want.total.values.iter())
            .all(|((gc, gv), (wc, wv))| gc == wc && close(gv, wv));
    assert!(
        close(got.total.conversions, want.total.conversions)
            && same_values
            && match (got.total.value, want.total.value) {
                (Some(g), Some(w)) => close(g, w),
                (g, w) => g == w,
            },
        "{what}: totals {:?} vs {:?}",
        got.total,
        want.total
    );
    for (g, w) in got.rows.iter().zip(&want.rows) {
        let (mut g0, mut w0) = (g.clone(), w.clone());
        assert!(
            close(g.conversions, w.conversions) && close(g.value, w.value),
            "{what}: {g:?} vs {w:?}"
        );
        (g0.conversions, g0.value, w0.conversions, w0.value) = (0.0, 0.0, 0.0, 0.0);
        assert_eq!(g0, w0, "{what}");
    }
}

/// The groupings a history's reports are checked under: by day and goal
/// only (which a store may answer from per-day totals) and by labels.
const GROUPINGS: &[&str] = &[
    "",
    "day",
    "goal",
    "day,goal",
    "channel",
    "day,channel,source",
    "source,campaign",
    "goal,source,medium,campaign,ad",
    "day,ad",
    "currency",
    "day,goal,currency",
    "source,currency",
];

/// Every report of a grid of queries over the history's ten days, under
/// each of `groupings`, equals its recomputation.
async fn assert_reports(
    store: &Arc<dyn Store>,
    site: &str,
    h: &History,
    goals: &[(Uuid, Model, bool)],
    what: &str,
    groupings: &[&str],
) {
    assert_paths(store, site, h, what).await;
    let first: NaiveDate = (t0() - Duration::days(10)).date_naive();
    let last: NaiveDate = t0().date_naive();
    for group_by in groupings.iter().copied() {
        for model in std::iter::once(None).chain(ROLLUP_MODELS.map(Some)) {
            for (from, to, goal) in [
                (first, last, None),
                (first + Duration::days(3), last - Duration::days(2), None),
                (first, last, Some(goals[1].0)),
            ] {
                let query = ReportQuery {
                    from,
                    to,
                    goal,
                    group_by: GroupKey::parse_list(group_by).unwrap(),
                    model,
                };
                let got = crate::store::report(store.as_ref(), site, &query)
                    .await
                    .unwrap();
                let want = recomputed(store, site, h, &query, goals).await;
                assert_same(
                    &got,
                    &want,
                    &format!("{what}, group_by {group_by:?}, {model:?}, {from}..{to}, {goal:?}"),
                );
            }
        }
    }
}

/// Writes the history in random batches of 1 to `max_batch` touchpoints
/// and candidates, in random order, some of them delivered twice.
async fn write_shuffled(rng: &mut StdRng, store: &Arc<dyn Store>, h: &History, max_batch: usize) {
    type Event = (Option<Touchpoint>, Option<Candidate>, Option<Adjustment>);
    let mut events: Vec<Event> = h
        .touchpoints
        .iter()
        .map(|t| (Some(t.clone()), None, None))
        .chain(h.candidates.iter().map(|c| (None, Some(c.clone()), None)))
        .chain(h.adjustments.iter().map(|a| (None, None, Some(a.clone()))))
        .collect();
    for i in (1..events.len()).rev() {
        events.swap(i, rng.random_range(0..=i));
    }
    let mut rest = &events[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(max_batch));
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        let tps: Vec<Touchpoint> = batch.iter().filter_map(|e| e.0.clone()).collect();
        let cands: Vec<Candidate> = batch.iter().filter_map(|e| e.1.clone()).collect();
        let times = if rng.random_bool(0.2) { 2 } else { 1 };
        for _ in 0..times {
            store.record_batch(&tps, &cands).await.unwrap();
            for a in batch.iter().filter_map(|e| e.2.as_ref()) {
                store.put_adjustment(a).await.unwrap();
            }
        }
    }
}

/// What the store counts is what [`decide`] rules over every candidate
/// of the history, each order held by its earliest candidate.
async fn assert_counted(store: &Arc<dyn Store>, site: &str, h: &History, what: &str) {
    // (goal, order id) -> (time, hit) of each candidate carrying it.
    type Carriers = Vec<(chrono::DateTime<chrono::Utc>, Uuid)>;
    let mut orders: BTreeMap<(Uuid, String), Carriers> = BTreeMap::new();
    let mut groups: BTreeMap<(Uuid, String), Vec<Contender<'_>>> = BTreeMap::new();
    for cand in &h.candidates {
        let c = &cand.conversion;
        if let Some(order) = &c.order_id {
            orders
                .entry((c.goal_id, order.clone()))
                .or_default()
                .push((c.at, c.hit_id));
        }
        groups
            .entry((c.goal_id, c.vid.clone()))
            .or_default()
            .push(Contender {
                conversion: c,
                once_per_visitor: cand.once_per_visitor,
            });
    }
    let mut want: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
    for ((goal, _), group) in &groups {
        let holders = orders
            .iter()
            .filter(|((g, _), _)| g == goal)
            .filter_map(|((_, o), rows)| Some((o.clone(), order_holder(rows.iter().copied())?)))
            .collect();
        for (hit, verdict) in decide(group, &holders) {
            if verdict.is_none() {
                want.insert((hit, *goal));
            }
        }
    }
    let mut got: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
    let hits: BTreeSet<Uuid> = h.candidates.iter().map(|c| c.conversion.hit_id).collect();
    for hit in hits {
        for c in store.conversions_for_hit(site, hit).await.unwrap() {
            got.insert((c.hit_id, c.goal_id));
        }
    }
    assert_eq!(got, want, "{what}: counted conversions");
}

/// A new site with three goals on 7-day windows: signups under `signup`
/// (every), leads once per visitor (linear), purchases (time decay); each
/// as (id, model, once per visitor).
async fn site_with_goals(
    store: &Arc<dyn Store>,
    signup: Model,
) -> (crate::domain::Site, Vec<(Uuid, Model, bool)>) {
    let site = new_site(store).await;
    let mut goals = Vec::new();
    for (event, model, once) in [
        ("signup", signup, false),
        ("lead", Model::Linear, true),
        ("buy", Model::TimeDecay, false),
    ] {
        let mut g = goal(&site.key, event, model);
        g.window_days = 7;
        store.put_goal(&g).await.unwrap();
        goals.push((g.id, model, once));
    }
    (site, goals)
}

/// One visitor with a long history: 300 touchpoints and 300 candidates
/// over ten days, so that most 7-day paths hold more touchpoints than a
/// path keeps, written in shuffled batches with redeliveries. What counts
/// is what [`decide`] rules and every report equals the recomputation.
pub async fn a_long_single_visitor_history_equals_a_recomputation(store: Arc<dyn Store>) {
    let mut rng = StdRng::seed_from_u64(21);
    let (site, goals) = site_with_goals(&store, Model::PositionBased).await;
    let h = history_of(&mut rng, &site.key, &goals, 1, 300..301, 300..301, 40);
    write_shuffled(&mut rng, &store, &h, 40).await;
    assert_counted(&store, &site.key, &h, "one visitor").await;
    assert_reports(&store, &site.key, &h, &goals, "one visitor", GROUPINGS).await;
}

/// A day whose only conversion is displaced (an earlier hit on the day
/// before carries its order id) leaves every report, by day and goal as
/// by labels: a day's rewrite drops what the last one wrote for it.
pub async fn a_day_that_loses_its_last_conversion_leaves_the_reports(store: Arc<dyn Store>) {
    let (site, goals) = site_with_goals(&store, Model::LastClick).await;
    let (goal_id, model, once) = goals[0];
    let candidate = |at, vid: &str| Candidate {
        conversion: Conversion {
            hit_id: Uuid::now_v7(),
            goal_id,
            site: site.key.clone(),
            vid: vid.into(),
            at,
            value: 25.0,
            currency: None,
            order_id: Some("o-1".into()),
            model,
            window_days: 7,
            credits: Vec::new(),
            user_agent: None,
            page_url: None,
        },
        once_per_visitor: once,
    };
    let late = candidate(t0(), "v2");
    let early = candidate(t0() - Duration::days(1), "v1");
    let groupings = &["", "day", "day,goal", "day,source", "channel"];
    let mut h = History {
        touchpoints: Vec::new(),
        candidates: vec![late],
        adjustments: Vec::new(),
    };
    write_shuffled(&mut StdRng::seed_from_u64(0), &store, &h, 1).await;
    assert_reports(&store, &site.key, &h, &goals, "late only", groupings).await;
    h.candidates.push(early);
    write_shuffled(&mut StdRng::seed_from_u64(0), &store, &h, 1).await;
    assert_counted(&store, &site.key, &h, "early displaced late").await;
    assert_reports(
        &store,
        &site.key,
        &h,
        &goals,
        "early displaced late",
        groupings,
    )
    .await;
}

/// A random history written in two steps: a random part of it, reported
/// on, then all of it (the part again as redeliveries), reported on, so
/// every day's rollups and totals are rewritten over what an earlier
/// report left: rows that grew, moved to another day or went.
pub async fn reports_equal_a_recomputation_on_random_histories(store: Arc<dyn Store>) {
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (site, goals) = site_with_goals(&store, Model::LastClick).await;
        let h = history(&mut rng, &site.key, &goals);
        let part = History {
            touchpoints: h
                .touchpoints
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .cloned()
                .collect(),
            candidates: h
                .candidates
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .cloned()
                .collect(),
            adjustments: Vec::new(),
        };
        let what = format!("seed {seed}, part");
        write_shuffled(&mut rng, &store, &part, 6).await;
        assert_counted(&store, &site.key, &part, &what).await;
        assert_reports(
            &store,
            &site.key,
            &part,
            &goals,
            &what,
            &["", "day,goal", "day,source"],
        )
        .await;
        let what = format!("seed {seed}");
        write_shuffled(&mut rng, &store, &h, 6).await;
        assert_counted(&store, &site.key, &h, &what).await;
        assert_reports(&store, &site.key, &h, &goals, &what, GROUPINGS).await;
    }
}

/// Retractions and restatements written in any order among the hits
/// (an adjustment before its conversion is counted, after it, twice),
/// then everything again as a replay would: every report, under every
/// model, equals the recomputation at the adjusted values.
pub async fn adjustments_apply_whatever_the_order(store: Arc<dyn Store>) {
    for seed in 0..3u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let (site, goals) = site_with_goals(&store, Model::Linear).await;
        let mut h = history_of(&mut rng, &site.key, &goals, 14, 0..4, 1..4, 6);
        // Orders o0..o7: some with conversions, some without.
        for i in 0..12 {
            let restate = rng.random_bool(0.6);
            h.adjustments.push(Adjustment {
                id: format!("adj-{seed}-{i}"),
                site: site.key.clone(),
                order_id: format!("o{}", rng.random_range(0..8)),
                kind: if restate {
                    AdjustmentKind::Restate
                } else {
                    AdjustmentKind::Retract
                },
                value: restate.then(|| f64::from(rng.random_range(0..10_000)) / 100.0),
                reason: None,
                at: t0() + Duration::minutes(rng.random_range(0..600)),
            });
        }
        let what = format!("adjustments, seed {seed}");
        write_shuffled(&mut rng, &store, &h, 5).await;
        assert_counted(&store, &site.key, &h, &what).await;
        assert_reports(
            &store,
            &site.key,
            &h,
            &goals,
            &what,
            &["", "day,goal", "channel,source"],
        )
        .await;
        // A replay: every hit and adjustment again, in another order.
        write_shuffled(&mut rng, &store, &h, 7).await;
        assert_reports(
            &store,
            &site.key,
            &h,
            &goals,
            &format!("{what}, replayed"),
            GROUPINGS,
        )
        .await;
        let listed = store
            .adjustments(&site.key, t0().date_naive(), t0().date_naive())
            .await
            .unwrap();
        assert_eq!(listed.len(), h.adjustments.len(), "{what}: kept once each");
    }
}
