//! Store conformance suite: the behaviour every `Store` adapter must show,
//! written against `Arc<dyn Store>` only.
//!
//! An adapter runs it with `store_conformance_tests!(factory)` inside its
//! `#[cfg(test)]` module, where `factory` is
//! `async fn() -> Option<(Arc<dyn Store>, Guard)>`. `None` means the backend
//! is not configured (no server address in the environment): the factory
//! has reported the skip (`test_support::skip`) and each test returns. The guard lives as long as the test
//! (a temporary directory, a keyspace to drop...).
//!
//! Every case makes fresh random site keys, goal and hit ids, so cases may
//! share one backend and run concurrently. Instants are whole milliseconds:
//! the port does not promise finer precision (Cassandra keeps ms).
//! Test-only: nothing here may be used by production code.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use uuid::Uuid;

use super::{Candidate, DashboardSession, DuplicateReason, Recorded, Store};
use crate::domain::attribution::{MAX_CREDITED, MAX_DIMENSION_BYTES};
use crate::domain::hit::MAX_FIELD_LEN;
use crate::domain::{
    credit_split, ApiKey, Conversion, Credit, Goal, GoalDraft, Model, Site, Touchpoint,
};

mod rollups;
pub use rollups::{
    a_day_that_loses_its_last_conversion_leaves_the_reports,
    a_long_single_visitor_history_equals_a_recomputation, adjustments_apply_whatever_the_order,
    assert_same, reports_equal_a_recomputation_on_random_histories,
};

/// Keeps whatever backs a store (a temporary directory...) alive.
pub type Guard = Box<dyn Any + Send>;

/// Expands to one `#[tokio::test]` per behaviour of the store port, each
/// getting its store from `$factory`.
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store::conformance::store_conformance_tests!(@cases $factory;
            site_round_trip,
            api_key_resolves_by_hash_until_revoked_by_prefix,
            goals_put_replace_list_get_delete_scoped_to_site,
            touchpoint_is_idempotent_and_filtered_by_since,
            touchpoints_in_one_call_are_all_kept_once,
            same_hit_again_is_a_same_hit_duplicate,
            order_id_is_counted_once_across_hits,
            order_id_of_another_goal_or_site_is_not_a_duplicate,
            once_per_visitor_counts_a_visitor_once,
            every_mode_counts_each_hit,
            credit_rows_cover_inclusive_days_and_filter_by_goal,
            conversions_for_hit_round_trip_with_credits,
            concurrent_claims_of_one_order_insert_exactly_once,
            late_touchpoint_recredits_the_conversions_it_precedes,
            migrate_twice_is_fine,
            verified_only_goal_round_trips,
            goal_currency_round_trips,
            daily_salt_is_shared_and_earlier_days_are_deleted,
            clicks_are_counted_per_day_and_keys_once_per_hit,
            converted_hits_are_the_range_newest_first,
            a_long_path_of_long_labels_is_counted_in_full,
            dashboard_session_is_read_back_until_it_expires,
            ended_dashboard_session_is_gone_and_others_stay,
            export_pages_hold_each_counted_conversion_once,
        );
    };
    // Earliest-wins dedup (a later-processed, earlier hit takes the order
    // id or the visitor over). Every adapter runs these (a separate arm so
    // a new adapter can be brought up in steps).
    (earliest_wins $factory:path) => {
        $crate::store::conformance::store_conformance_tests!(@cases $factory;
            earlier_order_candidate_takes_the_order_over,
            earliest_candidate_is_the_one_per_visitor,
            racing_calls_leave_exactly_the_earliest_counted,
        );
    };
    // Reports read from per-day rollups equal a recomputation from scratch.
    (rollups $factory:path) => {
        $crate::store::conformance::store_conformance_tests!(@cases $factory;
            reports_equal_a_recomputation_on_random_histories,
            a_day_that_loses_its_last_conversion_leaves_the_reports,
            adjustments_apply_whatever_the_order,
        );
    };
    // One visitor with a long history, written in shuffled batches.
    (one_visitor $factory:path) => {
        $crate::store::conformance::store_conformance_tests!(@cases $factory;
            a_long_single_visitor_history_equals_a_recomputation,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, _guard)) = $factory().await else {
                    return;
                };
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}
pub(crate) use store_conformance_tests;

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 10, 30, 15).unwrap() + Duration::milliseconds(123)
}

pub(crate) async fn new_site(store: &Arc<dyn Store>) -> Site {
    let site = Site::new(
        "conformance",
        vec!["shop.example".into(), "www.shop.example".into()],
        t0(),
    );
    store.create_site(&site).await.unwrap();
    site
}

pub(crate) fn goal(site: &str, event: &str, model: Model) -> Goal {
    let draft: GoalDraft = serde_json::from_value(serde_json::json!({
        "name": format!("{event} goal"),
        "match": {"event": event},
        "value": 49.5,
        "model": model,
        "window_days": 14,
    }))
    .unwrap();
    Goal::from_draft(draft, Uuid::now_v7(), site, t0()).unwrap()
}

fn touchpoint(site: &str, vid: &str, at: DateTime<Utc>, source: &str) -> Touchpoint {
    Touchpoint {
        hit_id: Uuid::now_v7(),
        site: site.into(),
        vid: vid.into(),
        at,
        source: source.into(),
        medium: Some("cpc".into()),
        campaign: Some(format!("{source}-bf")),
        ad: None,
        channel: "Paid Search".into(),
        click_id: Some(("gclid".into(), format!("c-{source}"))),
    }
}

pub(crate) fn conversion(site: &str, goal: Uuid, vid: &str, at: DateTime<Utc>) -> Conversion {
    Conversion {
        hit_id: Uuid::now_v7(),
        goal_id: goal,
        site: site.into(),
        vid: vid.into(),
        at,
        value: 49.5,
        currency: None,
        order_id: None,
        model: Model::LastClick,
        window_days: 30,
        credits: vec![Credit {
            touchpoint: None,
            source: "(direct)".into(),
            medium: None,
            campaign: None,
            ad: None,
            channel: "Direct".into(),
            at: None,
            credit: 1.0,
        }],
        user_agent: None,
        page_url: None,
    }
}

fn with_order(mut c: Conversion, order: &str) -> Conversion {
    c.order_id = Some(order.into());
    c
}

fn candidate(c: &Conversion, once_per_visitor: bool) -> Candidate {
    Candidate {
        conversion: c.clone(),
        once_per_visitor,
    }
}

/// One candidate on its own, as the attributor would write it.
async fn record(store: &Arc<dyn Store>, c: &Conversion, once_per_visitor: bool) -> Recorded {
    let out = store
        .record_batch(&[], &[candidate(c, once_per_visitor)])
        .await
        .unwrap();
    assert_eq!(out.recorded.len(), 1);
    out.recorded[0].clone()
}

const INSERTED: Recorded = Recorded::Inserted;
const SAME_HIT: Recorded = Recorded::Duplicate(DuplicateReason::SameHit);
const ORDER_ID: Recorded = Recorded::Duplicate(DuplicateReason::OrderId);
const VISITOR: Recorded = Recorded::Duplicate(DuplicateReason::Visitor);

pub async fn site_round_trip(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    assert_eq!(store.site(&site.key).await.unwrap(), Some(site.clone()));
    let other = Site::new("missing", vec![], t0());
    assert_eq!(store.site(&other.key).await.unwrap(), None);
    store.check().await.unwrap();
    // An update replaces every setting and keeps key and creation time;
    // a missing site is not created by one.
    let changed = Site {
        name: "renamed".into(),
        domains: vec!["shop.example".into()],
        currency: Some("EUR".into()),
        ignore_referrers: vec!["partner.example".into(), "pay.example".into()],
        ..site.clone()
    };
    assert!(store.update_site(&changed).await.unwrap());
    assert_eq!(store.site(&site.key).await.unwrap(), Some(changed.clone()));
    let cleared = Site {
        currency: None,
        ignore_referrers: Vec::new(),
        ..changed
    };
    assert!(store.update_site(&cleared).await.unwrap());
    assert_eq!(store.site(&site.key).await.unwrap(), Some(cleared));
    assert!(!store.update_site(&other).await.unwrap());
    assert_eq!(store.site(&other.key).await.unwrap(), None);
}

pub async fn api_key_resolves_by_hash_until_revoked_by_prefix(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let (a, b) = (ApiKey::mint(&site.key), ApiKey::mint(&site.key));
    store.add_api_key(&a).await.unwrap();
    store.add_api_key(&b).await.unwrap();
    assert_eq!(
        store.site_for_key_hash(&a.hash).await.unwrap(),
        Some(site.key.clone())
    );
    let unknown = ApiKey::hash("tk_not-a-key");
    assert_eq!(store.site_for_key_hash(&unknown).await.unwrap(), None);

    assert_eq!(store.revoke_api_keys(&a.prefix).await.unwrap(), 1);
    assert_eq!(store.site_for_key_hash(&a.hash).await.unwrap(), None);
    assert_eq!(
        store.site_for_key_hash(&b.hash).await.unwrap(),
        Some(site.key.clone()),
        "revoking one key must leave the other"
    );
    assert_eq!(
        store.revoke_api_keys(&a.prefix).await.unwrap(),
        0,
        "an already revoked key is not counted again"
    );
}

pub async fn goals_put_replace_list_get_delete_scoped_to_site(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let other = new_site(&store).await;
    let g1 = goal(&site.key, "signup", Model::LastClick);
    let g2 = goal(&site.key, "purchase", Model::Linear);
    let foreign = goal(&other.key, "signup", Model::FirstClick);
    for g in [&g1, &g2, &foreign] {
        store.put_goal(g).await.unwrap();
    }
    let ids = |gs: Vec<Goal>| gs.into_iter().map(|g| g.id).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(store.goals(&site.key).await.unwrap()),
        BTreeSet::from([g1.id, g2.id])
    );
    assert_eq!(
        store.goal(&site.key, g1.id).await.unwrap(),
        Some(g1.clone())
    );
    assert_eq!(
        store.goal(&site.key, foreign.id).await.unwrap(),
        None,
        "another site's goal is invisible"
    );

    let mut replaced = g1.clone();
    replaced.name = "renamed".into();
    replaced.window_days = 7;
    store.put_goal(&replaced).await.unwrap();
    let got = store.goal(&site.key, g1.id).await.unwrap().unwrap();
    assert_eq!(got, replaced);
    assert_eq!(store.goals(&site.key).await.unwrap().len(), 2);
    // A stored goal comes back ready to match (its pattern compiled).
    let url_goal: GoalDraft = serde_json::from_value(
        serde_json::json!({"match": {"url": "/thanks/*", "op": "wildcard"}}),
    )
    .unwrap();
    let url_goal = Goal::from_draft(url_goal, Uuid::now_v7(), &site.key, t0()).unwrap();
    store.put_goal(&url_goal).await.unwrap();
    assert_eq!(
        store.goal(&site.key, url_goal.id).await.unwrap(),
        Some(url_goal.clone())
    );

    assert!(!store.delete_goal(&site.key, foreign.id).await.unwrap());
    assert!(store.goal(&other.key, foreign.id).await.unwrap().is_some());
    assert!(store.delete_goal(&site.key, g1.id).await.unwrap());
    assert!(!store.delete_goal(&site.key, g1.id).await.unwrap());
    assert_eq!(store.goal(&site.key, g1.id).await.unwrap(), None);
    assert_eq!(
        ids(store.goals(&site.key).await.unwrap()),
        BTreeSet::from([g2.id, url_goal.id])
    );
}

pub async fn touchpoint_is_idempotent_and_filtered_by_since(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let old = touchpoint(&site.key, "v1", t0() - Duration::days(10), "google");
    let edge = touchpoint(&site.key, "v1", t0() - Duration::days(3), "bing");
    let fresh = Touchpoint {
        ad: Some("ad-7".into()),
        medium: None,
        click_id: None,
        ..touchpoint(&site.key, "v1", t0(), "facebook")
    };
    let other_visitor = touchpoint(&site.key, "v2", t0(), "google");
    for tp in [&old, &edge, &fresh, &fresh, &other_visitor, &edge] {
        store.put_touchpoint(tp).await.unwrap();
    }
    let mut got = store
        .touchpoints(&site.key, "v1", t0() - Duration::days(30))
        .await
        .unwrap();
    got.sort_by_key(|t| t.at);
    assert_eq!(got, vec![old.clone(), edge.clone(), fresh.clone()]);

    // `since` is inclusive.
    let mut got = store.touchpoints(&site.key, "v1", edge.at).await.unwrap();
    got.sort_by_key(|t| t.at);
    assert_eq!(got, vec![edge, fresh]);

    let other = new_site(&store).await;
    assert!(store
        .touchpoints(&other.key, "v1", t0() - Duration::days(30))
        .await
        .unwrap()
        .is_empty());
}

pub async fn touchpoints_in_one_call_are_all_kept_once(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let batch: Vec<Touchpoint> = (0..50)
        .map(|i| {
            touchpoint(
                &site.key,
                &format!("v{}", i % 5),
                t0() + Duration::seconds(i),
                "google",
            )
        })
        .collect();
    store.put_touchpoint(&batch[7]).await.unwrap();
    store.put_touchpoints(&batch).await.unwrap();
    // A redelivered batch, overlapping the first, changes nothing.
    store.put_touchpoints(&batch[40..]).await.unwrap();
    store.put_touchpoints(&[]).await.unwrap();
    for v in 0..5 {
        let mut got = store
            .touchpoints(&site.key, &format!("v{v}"), t0() - Duration::days(1))
            .await
            .unwrap();
        got.sort_by_key(|t| t.at);
        let want: Vec<Touchpoint> = batch.iter().skip(v).step_by(5).cloned().collect();
        assert_eq!(got, want, "visitor v{v}");
    }
}

pub async fn same_hit_again_is_a_same_hit_duplicate(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let c = conversion(&site.key, g, "v1", t0());
    assert_eq!(record(&store, &c, false).await, INSERTED);
    assert_eq!(record(&store, &c, false).await, SAME_HIT);
    assert_eq!(record(&store, &c, true).await, SAME_HIT);
    assert_eq!(
        store
            .conversions_for_hit(&site.key, c.hit_id)
            .await
            .unwrap()
            .len(),
        1
    );
    let day = t0().date_naive();
    assert_eq!(
        store
            .credit_rows(&site.key, day, day, None)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn order_id_is_counted_once_across_hits(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let first = with_order(conversion(&site.key, g, "v1", t0()), "o-1");
    let second = with_order(conversion(&site.key, g, "v2", t0()), "o-1");
    assert_eq!(record(&store, &first, false).await, INSERTED);
    assert_eq!(record(&store, &second, false).await, ORDER_ID);
    // The winner redelivered is a redelivery, not an order clash.
    assert_eq!(record(&store, &first, false).await, SAME_HIT);
    assert_eq!(record(&store, &second, false).await, ORDER_ID);
    assert!(store
        .conversions_for_hit(&site.key, second.hit_id)
        .await
        .unwrap()
        .is_empty());
    let other_order = with_order(conversion(&site.key, g, "v2", t0()), "o-2");
    assert_eq!(record(&store, &other_order, false).await, INSERTED);
}

pub async fn order_id_of_another_goal_or_site_is_not_a_duplicate(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let other_site = new_site(&store).await;
    let (g1, g2) = (Uuid::now_v7(), Uuid::now_v7());
    let a = with_order(conversion(&site.key, g1, "v1", t0()), "o-1");
    // The same hit completing a second goal, with the same order.
    let b = Conversion {
        goal_id: g2,
        ..a.clone()
    };
    let c = with_order(conversion(&other_site.key, g1, "v1", t0()), "o-1");
    assert_eq!(record(&store, &a, false).await, INSERTED);
    assert_eq!(record(&store, &b, false).await, INSERTED);
    assert_eq!(record(&store, &c, false).await, INSERTED);
    assert_eq!(
        store
            .conversions_for_hit(&site.key, a.hit_id)
            .await
            .unwrap()
            .len(),
        2
    );
}

pub async fn once_per_visitor_counts_a_visitor_once(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let first = conversion(&site.key, g, "v1", t0());
    let again = conversion(&site.key, g, "v1", t0() + Duration::hours(1));
    let other_visitor = conversion(&site.key, g, "v2", t0());
    assert_eq!(record(&store, &first, true).await, INSERTED);
    assert_eq!(record(&store, &again, true).await, VISITOR);
    assert_eq!(record(&store, &first, true).await, SAME_HIT);
    assert_eq!(record(&store, &other_visitor, true).await, INSERTED);
    // The claim is per goal: the same visitor may convert on another goal.
    let other_goal = Conversion {
        goal_id: Uuid::now_v7(),
        ..again.clone()
    };
    assert_eq!(record(&store, &other_goal, true).await, INSERTED);
    let day = t0().date_naive();
    let rows = store
        .credit_rows(&site.key, day, day, Some(g))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
}

pub async fn every_mode_counts_each_hit(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    for i in 0..3 {
        let c = conversion(&site.key, g, "v1", t0() + Duration::minutes(i));
        assert_eq!(record(&store, &c, false).await, INSERTED);
    }
    let day = t0().date_naive();
    let rows = store
        .credit_rows(&site.key, day, day, Some(g))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.credit == 1.0 && r.value == 49.5));
}

pub async fn credit_rows_cover_inclusive_days_and_filter_by_goal(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let other_site = new_site(&store).await;
    let (g1, g2) = (Uuid::now_v7(), Uuid::now_v7());
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    // First and last instants of UTC days, so an off-by-one shows.
    let start = |d: u32| Utc.from_utc_datetime(&day(d).and_hms_opt(0, 0, 0).unwrap());
    let end = |d: u32| start(d) + Duration::days(1) - Duration::milliseconds(1);
    // A conversion split over two touchpoints the store holds (linear).
    let mut split = conversion(&site.key, g1, "v2", end(21));
    split.value = 100.0;
    split.model = Model::Linear;
    let google = Touchpoint {
        medium: Some("cpc".into()),
        campaign: Some("bf".into()),
        ad: Some("ad-1".into()),
        ..touchpoint(&site.key, "v2", start(19), "google")
    };
    let facebook = Touchpoint {
        medium: None,
        campaign: None,
        ..touchpoint(&site.key, "v2", start(20), "facebook")
    };
    store.put_touchpoints(&[google, facebook]).await.unwrap();
    let writes = [
        conversion(&site.key, g1, "v1", end(19)),
        conversion(&site.key, g1, "v1", start(20)),
        split.clone(),
        conversion(&site.key, g2, "v1", start(21)),
        conversion(&site.key, g1, "v1", start(22)),
        conversion(&other_site.key, g1, "v1", start(21)),
    ];
    for c in &writes {
        assert_eq!(record(&store, c, false).await, INSERTED);
    }
    let rows = store
        .credit_rows(&site.key, day(20), day(21), None)
        .await
        .unwrap();
    let mut days: Vec<_> = rows.iter().map(|r| r.day).collect();
    days.sort();
    assert_eq!(days, vec![day(20), day(21), day(21), day(21)], "{rows:?}");

    let rows = store
        .credit_rows(&site.key, day(20), day(21), Some(g1))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.goal == g1));
    let google = rows.iter().find(|r| r.source == "google").unwrap();
    assert_eq!(google.day, day(21));
    assert_eq!(google.credit, 0.5);
    assert_eq!(google.value, 100.0);
    assert_eq!(google.medium.as_deref(), Some("cpc"));
    assert_eq!(google.campaign.as_deref(), Some("bf"));
    assert_eq!(google.ad.as_deref(), Some("ad-1"));
    let facebook = rows.iter().find(|r| r.source == "facebook").unwrap();
    assert_eq!(
        (facebook.medium.clone(), facebook.campaign.clone()),
        (None, None)
    );

    let single = store
        .credit_rows(&site.key, day(22), day(22), None)
        .await
        .unwrap();
    assert_eq!(single.len(), 1);
    assert!(store
        .credit_rows(&site.key, day(23), day(30), None)
        .await
        .unwrap()
        .is_empty());
}

pub async fn conversions_for_hit_round_trip_with_credits(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let tps = [
        touchpoint(&site.key, "v1", t0() - Duration::days(3), "google"),
        touchpoint(&site.key, "v1", t0() - Duration::days(2), "facebook"),
        touchpoint(&site.key, "v1", t0() - Duration::days(1), "bing"),
    ];
    let mut first = with_order(conversion(&site.key, Uuid::now_v7(), "v1", t0()), "o-9");
    first.model = Model::PositionBased;
    first.window_days = 14;
    first.currency = Some("EUR".into());
    first.value = 120.25;
    store.put_touchpoints(&tps).await.unwrap();
    // The store computes the split from the touchpoints it holds.
    first.credits = credit_split(&first, &tps);
    assert_eq!(first.credits.len(), 3);
    let second = Conversion {
        goal_id: Uuid::now_v7(),
        model: Model::LastClick,
        credits: vec![Credit {
            credit: 1.0,
            ..first.credits[2].clone()
        }],
        ..first.clone()
    };
    assert_eq!(record(&store, &first, false).await, INSERTED);
    assert_eq!(record(&store, &second, true).await, INSERTED);

    // The store keeps each conversion's path; its recorded model's
    // credits follow from it.
    let mut got: Vec<Conversion> = store
        .conversions_for_hit(&site.key, first.hit_id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let model = c.model;
            c.under(model)
        })
        .collect();
    got.sort_by_key(|c| c.goal_id);
    let mut want = vec![first.clone(), second];
    want.sort_by_key(|c| c.goal_id);
    assert_eq!(got, want);

    let other = new_site(&store).await;
    assert!(store
        .conversions_for_hit(&other.key, first.hit_id)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .conversions_for_hit(&site.key, Uuid::now_v7())
        .await
        .unwrap()
        .is_empty());
}

pub async fn concurrent_claims_of_one_order_insert_exactly_once(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            let c = with_order(conversion(&site.key, g, &format!("v{i}"), t0()), "o-race");
            tokio::spawn(async move {
                store
                    .record_batch(&[], &[candidate(&c, i % 2 == 0)])
                    .await
                    .map(|b| b.recorded[0].clone())
            })
        })
        .collect();
    let mut inserted = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Recorded::Inserted => inserted += 1,
            other => assert_eq!(other, ORDER_ID),
        }
    }
    // Each call answers as things stood when its batch was written: where
    // the earliest hit wins (SQLite), an earlier hit written later takes
    // the order over, so more than one call may have seen itself counted.
    // What stands afterwards is exactly one conversion.
    assert!(inserted >= 1, "no call counted the order");
    let day = t0().date_naive();
    assert_eq!(
        store
            .credit_rows(&site.key, day, day, Some(g))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Sources and summed credit of a site's credit rows on `t0`'s day.
async fn sources(store: &Arc<dyn Store>, site: &str) -> Vec<(String, i64)> {
    let day = t0().date_naive();
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    for r in store.credit_rows(site, day, day, None).await.unwrap() {
        *by.entry(r.source).or_default() += r.credit;
    }
    by.into_iter()
        .map(|(s, c)| (s, (c * 1000.0).round() as i64))
        .collect()
}

pub async fn late_touchpoint_recredits_the_conversions_it_precedes(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let c = conversion(&site.key, g, "v1", t0());
    assert_eq!(record(&store, &c, false).await, INSERTED);
    assert_eq!(
        sources(&store, &site.key).await,
        vec![("(direct)".into(), 1000)]
    );
    // Processed after the conversion, but earlier in time and in its window.
    let landing = touchpoint(&site.key, "v1", t0() - Duration::hours(1), "google");
    let out = store
        .record_batch(std::slice::from_ref(&landing), &[])
        .await
        .unwrap();
    assert_eq!(out.recredited, 1);
    assert_eq!(
        sources(&store, &site.key).await,
        vec![("google".into(), 1000)]
    );
    // Again (a redelivery), after the conversion or before its window:
    // nothing changes.
    let after = touchpoint(&site.key, "v1", t0() + Duration::hours(1), "bing");
    let before = touchpoint(&site.key, "v1", t0() - Duration::days(31), "yahoo");
    let out = store
        .record_batch(&[landing, after, before], &[])
        .await
        .unwrap();
    assert_eq!(out.recredited, 0);
    assert_eq!(
        sources(&store, &site.key).await,
        vec![("google".into(), 1000)]
    );
    let explained = store
        .conversions_for_hit(&site.key, c.hit_id)
        .await
        .unwrap();
    assert_eq!(explained.len(), 1);
    assert_eq!(explained[0].credits[0].source, "google");
}

pub async fn earlier_order_candidate_takes_the_order_over(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let early = with_order(conversion(&site.key, g, "v1", t0()), "o-1");
    let late = with_order(
        conversion(&site.key, g, "v2", t0() + Duration::minutes(5)),
        "o-1",
    );
    // The later hit is processed first and counts for now...
    assert_eq!(record(&store, &late, false).await, INSERTED);
    // ...until the earlier one arrives: it owns the order.
    let out = store
        .record_batch(&[], &[candidate(&early, false)])
        .await
        .unwrap();
    assert_eq!((out.recorded[0].clone(), out.displaced), (INSERTED, 1));
    // Redelivered, it says why it does not count.
    assert_eq!(record(&store, &late, false).await, ORDER_ID);
    assert!(store
        .conversions_for_hit(&site.key, late.hit_id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .conversions_for_hit(&site.key, early.hit_id)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        sources(&store, &site.key).await,
        vec![("(direct)".into(), 1000)]
    );
}

pub async fn earliest_candidate_is_the_one_per_visitor(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let g = Uuid::now_v7();
    let early = conversion(&site.key, g, "v1", t0());
    let late = conversion(&site.key, g, "v1", t0() + Duration::hours(2));
    let out = store
        .record_batch(&[], &[candidate(&late, true), candidate(&early, true)])
        .await
        .unwrap();
    // In one batch or in two, the earlier visit is the one counted.
    assert_eq!(out.recorded, vec![VISITOR, INSERTED]);
    let again = conversion(&site.key, g, "v1", t0() - Duration::hours(1));
    let out = store
        .record_batch(&[], &[candidate(&again, true)])
        .await
        .unwrap();
    assert_eq!((out.recorded[0].clone(), out.displaced), (INSERTED, 1));
    assert_eq!(
        sources(&store, &site.key).await,
        vec![("(direct)".into(), 1000)]
    );
}

/// Two `record_batch` calls race, many times over: one holds the earlier
/// hit of an order and the later of a visitor's once-per-visitor pair, the
/// other the later hit of the order and the earlier of the pair. Whichever
/// is written first, exactly the earliest of each counts afterwards.
pub async fn racing_calls_leave_exactly_the_earliest_counted(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let (g_order, g_once) = (Uuid::now_v7(), Uuid::now_v7());
    const ROUNDS: usize = 48;
    for round in 0..ROUNDS {
        let order = format!("o-{round}");
        let later = t0() + Duration::minutes(1);
        let early = with_order(
            conversion(&site.key, g_order, &format!("a{round}"), t0()),
            &order,
        );
        let late = with_order(
            conversion(&site.key, g_order, &format!("b{round}"), later),
            &order,
        );
        let vid = format!("v{round}");
        let first = conversion(&site.key, g_once, &vid, t0());
        let second = conversion(&site.key, g_once, &vid, later);
        let mut calls = vec![
            vec![candidate(&early, false), candidate(&second, true)],
            vec![candidate(&late, false), candidate(&first, true)],
        ];
        // Alternate which call is spawned first.
        if round % 2 == 1 {
            calls.reverse();
        }
        let tasks: Vec<_> = calls
            .into_iter()
            .map(|cands| {
                let store = store.clone();
                tokio::spawn(async move { store.record_batch(&[], &cands).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for (c, counted) in [
            (&early, true),
            (&late, false),
            (&first, true),
            (&second, false),
        ] {
            let n = store
                .conversions_for_hit(&site.key, c.hit_id)
                .await
                .unwrap()
                .len();
            assert_eq!(n, usize::from(counted), "round {round}: hit at {}", c.at);
        }
        // Redelivered, each says why it counts or not.
        assert_eq!(record(&store, &early, false).await, SAME_HIT);
        assert_eq!(record(&store, &late, false).await, ORDER_ID);
        assert_eq!(record(&store, &first, true).await, SAME_HIT);
        assert_eq!(record(&store, &second, true).await, VISITOR);
    }
    let day = t0().date_naive();
    for g in [g_order, g_once] {
        let rows = store
            .credit_rows(&site.key, day, day, Some(g))
            .await
            .unwrap();
        assert_eq!(rows.len(), ROUNDS, "one conversion per round");
    }
}

pub async fn migrate_twice_is_fine(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.check().await.unwrap();
    assert_eq!(store.site(&site.key).await.unwrap(), Some(site));
}

pub async fn verified_only_goal_round_trips(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let mut g = goal(&site.key, "purchase", Model::LastClick);
    g.verified_only = true;
    store.put_goal(&g).await.unwrap();
    assert_eq!(store.goal(&site.key, g.id).await.unwrap(), Some(g.clone()));
    g.verified_only = false;
    store.put_goal(&g).await.unwrap();
    assert!(
        !store
            .goal(&site.key, g.id)
            .await
            .unwrap()
            .unwrap()
            .verified_only
    );
}

pub async fn goal_currency_round_trips(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let mut g = goal(&site.key, "purchase", Model::LastClick);
    g.currency = Some("EUR".into());
    store.put_goal(&g).await.unwrap();
    assert_eq!(store.goal(&site.key, g.id).await.unwrap(), Some(g.clone()));
    assert_eq!(store.goals(&site.key).await.unwrap(), vec![g.clone()]);
    g.currency = None;
    store.put_goal(&g).await.unwrap();
    assert_eq!(
        store.goal(&site.key, g.id).await.unwrap().unwrap().currency,
        None
    );
}

pub async fn daily_salt_is_shared_and_earlier_days_are_deleted(store: Arc<dyn Store>) {
    let day = Utc::now().date_naive();
    let tomorrow = day.succ_opt().unwrap();
    // Concurrent first takers (several web processes) all get one salt.
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.daily_salt(day, &[i; 32]).await.unwrap() })
        })
        .collect();
    let mut got = BTreeSet::new();
    for t in tasks {
        got.insert(t.await.unwrap());
    }
    assert_eq!(got.len(), 1, "one salt per day: {got:?}");
    let today = got.into_iter().next().unwrap();
    assert_eq!(store.daily_salt(day, &[99; 32]).await.unwrap(), today);
    // A new day gets its own salt, and the old one is gone for good: asking
    // for that day again cannot give back the salt it had.
    assert_eq!(
        store.daily_salt(tomorrow, &[7; 32]).await.unwrap(),
        vec![7; 32]
    );
    assert_ne!(store.daily_salt(day, &[42; 32]).await.unwrap(), today);
}

pub async fn clicks_are_counted_per_day_and_keys_once_per_hit(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let other_site = new_site(&store).await;
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let start = |d: u32| Utc.from_utc_datetime(&day(d).and_hms_opt(0, 0, 0).unwrap());
    let end = |d: u32| start(d) + Duration::days(1) - Duration::milliseconds(1);
    let tps = vec![
        touchpoint(&site.key, "v1", end(19), "google"),
        touchpoint(&site.key, "v1", start(20), "google"),
        touchpoint(&site.key, "v2", end(20), "google"),
        touchpoint(&site.key, "v3", start(20), "bing"),
        touchpoint(&site.key, "v1", start(21), "google"),
        touchpoint(&other_site.key, "v1", start(20), "google"),
    ];
    store.put_touchpoints(&tps).await.unwrap();
    // A redelivery counts nothing twice.
    store.put_touchpoints(&tps[1..3]).await.unwrap();
    store.put_touchpoint(&tps[3]).await.unwrap();

    let mut got: Vec<(NaiveDate, String, Option<String>, u64)> = store
        .click_rows(&site.key, day(20), day(20))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.day, r.source, r.campaign, r.clicks))
        .collect();
    // Adapters may return one row per click or one per group: sum by key.
    got.sort();
    let mut summed: Vec<(NaiveDate, String, Option<String>, u64)> = Vec::new();
    for (d, s, c, n) in got {
        match summed.last_mut() {
            Some(last) if (last.0, &last.1, &last.2) == (d, &s, &c) => last.3 += n,
            _ => summed.push((d, s, c, n)),
        }
    }
    assert_eq!(
        summed,
        vec![
            (day(20), "bing".into(), Some("bing-bf".into()), 1),
            (day(20), "google".into(), Some("google-bf".into()), 2),
        ]
    );
    let all: u64 = store
        .click_rows(&site.key, day(19), day(21))
        .await
        .unwrap()
        .iter()
        .map(|r| r.clicks)
        .sum();
    assert_eq!(all, 5);
    assert!(store
        .click_rows(&site.key, day(22), day(30))
        .await
        .unwrap()
        .is_empty());
}

pub async fn converted_hits_are_the_range_newest_first(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let (g1, g2) = (Uuid::now_v7(), Uuid::now_v7());
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let at = |d: u32| Utc.from_utc_datetime(&day(d).and_hms_opt(12, 0, 0).unwrap());
    let older = conversion(&site.key, g1, "v1", at(20));
    let newer = conversion(&site.key, g1, "v2", at(21));
    // The same hit completing a second goal is still one hit.
    let mut newer_g2 = newer.clone();
    newer_g2.goal_id = g2;
    let outside = conversion(&site.key, g1, "v3", at(25));
    for c in [&older, &newer, &newer_g2, &outside] {
        assert_eq!(record(&store, c, false).await, INSERTED);
    }
    let hits = store
        .converted_hits(&site.key, day(19), day(22), 10)
        .await
        .unwrap();
    assert_eq!(hits, vec![newer.hit_id, older.hit_id]);
    let one = store
        .converted_hits(&site.key, day(19), day(22), 1)
        .await
        .unwrap();
    assert_eq!(one, vec![newer.hit_id]);
}

/// The largest conversion a hit can make: a visitor id and an order id
/// as long as a hit may carry, credited (linear) over a path longer than
/// [`MAX_CREDITED`] whose labels are all as long as a touchpoint keeps
/// them. It is counted, with every credit row, and explained in full (on
/// Cassandra its unit is one logged batch, which the server refuses past
/// 50 KiB: with [`MAX_CREDITED`] at 28 or more this case failed there
/// with "Batch too large").
pub async fn a_long_path_of_long_labels_is_counted_in_full(store: Arc<dyn Store>) {
    let site = new_site(&store).await;
    let vid = "v".repeat(MAX_FIELD_LEN);
    let label = |i: usize, what: &str| {
        let s = format!("{what}-{i}-");
        format!("{s}{}", "x".repeat(MAX_DIMENSION_BYTES - s.len()))
    };
    let path: Vec<Touchpoint> = (0..120)
        .map(|i| Touchpoint {
            medium: Some(label(i, "medium")),
            campaign: Some(label(i, "campaign")),
            ad: Some(label(i, "ad")),
            ..touchpoint(
                &site.key,
                &vid,
                t0() - Duration::minutes(200 - i as i64),
                &label(i, "source"),
            )
        })
        .collect();
    store.record_batch(&path, &[]).await.unwrap();
    let mut c = with_order(
        conversion(&site.key, Uuid::now_v7(), &vid, t0()),
        &"o".repeat(MAX_FIELD_LEN),
    );
    c.model = Model::Linear;
    assert_eq!(record(&store, &c, false).await, INSERTED);
    let explained = store
        .conversions_for_hit(&site.key, c.hit_id)
        .await
        .unwrap();
    assert_eq!(explained.len(), 1);
    let credits = &explained[0].credits;
    assert_eq!(credits.len(), MAX_CREDITED);
    assert_eq!(credits[0].touchpoint, Some(path[0].hit_id));
    assert_eq!(credits[MAX_CREDITED - 1].touchpoint, Some(path[119].hit_id));
    assert_eq!(credits[1].source, label(120 - (MAX_CREDITED - 1), "source"));
    let day = t0().date_naive();
    let rows = store
        .credit_rows(&site.key, day, day, Some(c.goal_id))
        .await
        .unwrap();
    assert_eq!(rows.len(), MAX_CREDITED);
}

fn dashboard_session(site: &str, expires_at: DateTime<Utc>) -> DashboardSession {
    DashboardSession {
        token_hash: ApiKey::hash(&Uuid::new_v4().to_string()),
        site: site.into(),
        key_hash: ApiKey::hash(&Uuid::new_v4().to_string()),
        expires_at,
    }
}

/// Whole milliseconds, the precision the port keeps.
fn now_ms() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .single()
        .unwrap()
}

pub async fn dashboard_session_is_read_back_until_it_expires(store: Arc<dyn Store>) {
    let now = now_ms();
    let s = dashboard_session("site-a", now + Duration::days(7));
    let other = dashboard_session("site-b", now + Duration::hours(1));
    store.create_dashboard_session(&s).await.unwrap();
    store.create_dashboard_session(&other).await.unwrap();

    assert_eq!(
        store.dashboard_session(&s.token_hash, now).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store
            .dashboard_session(&other.token_hash, now)
            .await
            .unwrap(),
        Some(other.clone())
    );
    assert_eq!(
        store.dashboard_session("no-such-hash", now).await.unwrap(),
        None
    );
    // Live up to the last millisecond, over at the expiry itself.
    let last = s.expires_at - Duration::milliseconds(1);
    assert_eq!(
        store.dashboard_session(&s.token_hash, last).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store
            .dashboard_session(&s.token_hash, s.expires_at)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .dashboard_session(&other.token_hash, other.expires_at + Duration::days(1))
            .await
            .unwrap(),
        None
    );

    // A session already over when written is never read back.
    let stale = dashboard_session("site-a", now - Duration::seconds(1));
    store.create_dashboard_session(&stale).await.unwrap();
    assert_eq!(
        store
            .dashboard_session(&stale.token_hash, now)
            .await
            .unwrap(),
        None
    );
}

pub async fn ended_dashboard_session_is_gone_and_others_stay(store: Arc<dyn Store>) {
    let now = now_ms();
    let ended = dashboard_session("site-a", now + Duration::days(7));
    let kept = dashboard_session("site-a", now + Duration::days(7));
    store.create_dashboard_session(&ended).await.unwrap();
    store.create_dashboard_session(&kept).await.unwrap();

    store
        .end_dashboard_session(&ended.token_hash)
        .await
        .unwrap();
    assert_eq!(
        store
            .dashboard_session(&ended.token_hash, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .dashboard_session(&kept.token_hash, now)
            .await
            .unwrap(),
        Some(kept.clone()),
        "ending one session leaves the others"
    );
    // Ending it again, or one never made, is fine.
    store
        .end_dashboard_session(&ended.token_hash)
        .await
        .unwrap();
    store.end_dashboard_session("no-such-hash").await.unwrap();
}

/// An export's pages: every counted conversion of the goal in the range
/// once, none of another goal, another day or a lost order claim, each
/// with its last touchpoint's click (whatever the goal's model), the
/// converting hit's user agent and page URL, and its recorded value (an
/// export applies the order's adjustments, which the store returns).
pub async fn export_pages_hold_each_counted_conversion_once(store: Arc<dyn Store>) {
    use crate::domain::export::{self, Cell, Format, LastClick};
    let site = new_site(&store).await;
    let g = goal(&site.key, "buy", Model::Linear);
    let other = goal(&site.key, "signup", Model::LastClick);
    store.put_goal(&g).await.unwrap();
    store.put_goal(&other).await.unwrap();
    let tp = |vid: &str, at: DateTime<Utc>, click: Option<(&str, &str)>| Touchpoint {
        click_id: click.map(|(p, v)| (p.to_owned(), v.to_owned())),
        ..touchpoint(&site.key, vid, at, "ads")
    };
    let cand = |c: Conversion| Candidate {
        conversion: Conversion {
            credits: Vec::new(),
            model: Model::Linear,
            ..c
        },
        once_per_visitor: false,
    };
    let conv = |goal: Uuid, vid: &str, at: DateTime<Utc>| {
        let mut c = conversion(&site.key, goal, vid, at);
        c.user_agent = Some(format!("UA {vid}"));
        c.page_url = Some(format!("https://shop.example/{vid}"));
        c
    };
    let mut tps = vec![
        // v1: a Google click, then a Meta click: Meta's is the last.
        tp("v1", t0() - Duration::hours(3), Some(("gclid", "g-1"))),
        tp("v1", t0() - Duration::hours(2), Some(("fbclid", "f-1"))),
        // v2: a click, then a tagged visit with no click id: no last click.
        tp("v2", t0() - Duration::hours(2), Some(("gclid", "g-2"))),
        tp("v2", t0() - Duration::minutes(30), None),
        tp("v4", t0() - Duration::hours(1), Some(("msclkid", "m-4"))),
    ];
    let v1 = conv(g.id, "v1", t0());
    let v2 = conv(g.id, "v2", t0() + Duration::minutes(1));
    let mut v3 = conv(g.id, "v3", t0() + Duration::minutes(2));
    (v3.user_agent, v3.page_url) = (None, None);
    let v4 = conv(g.id, "v4", t0() + Duration::minutes(3));
    // The same hit completes the other goal too: not in this export.
    let v4_other = Conversion {
        goal_id: other.id,
        ..v4.clone()
    };
    // Two hits with one order: the later one is a duplicate.
    let first = with_order(conv(g.id, "v5", t0() + Duration::minutes(4)), "o-1");
    let dup = with_order(conv(g.id, "v6", t0() + Duration::minutes(5)), "o-1");
    let late = conv(g.id, "v7", t0() + Duration::days(2));
    let mut cands = vec![
        cand(v1.clone()),
        cand(v2.clone()),
        cand(v3.clone()),
        cand(v4.clone()),
        cand(v4_other),
        cand(first.clone()),
        cand(dup),
        cand(late),
    ];
    let mut want: BTreeSet<Uuid> = [v1.hit_id, v2.hit_id, v3.hit_id, v4.hit_id, first.hit_id]
        .into_iter()
        .collect();
    // Enough more, over two days, for several pages.
    for i in 0..24 {
        let vid = format!("w{i}");
        let at = t0() + Duration::minutes(10 + 97 * i);
        tps.push(tp(
            &vid,
            at - Duration::minutes(5),
            Some(("gclid", &format!("g-w{i}"))),
        ));
        let c = conv(g.id, &vid, at);
        want.insert(c.hit_id);
        cands.push(cand(c));
    }
    store.record_batch(&tps, &cands).await.unwrap();

    let (from, to) = (t0().date_naive(), t0().date_naive() + Duration::days(1));
    let mut rows = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .export_page(&site.key, g.id, from, to, cursor.as_ref(), 3)
            .await
            .unwrap();
        assert!(page.rows.len() <= 3, "{}", page.rows.len());
        rows.extend(page.rows);
        pages += 1;
        assert!(pages < 1_000, "the pages never end");
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let got: Vec<Uuid> = rows.iter().map(|r| r.hit_id).collect();
    let unique: BTreeSet<Uuid> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a conversion twice: {got:?}");
    assert_eq!(unique, want);
    assert!(rows.iter().all(|r| r.goal_id == g.id));
    let row = |hit: Uuid| rows.iter().find(|r| r.hit_id == hit).unwrap();
    let r1 = row(v1.hit_id);
    assert_eq!(
        r1.last_click,
        Some(LastClick {
            param: "fbclid".into(),
            value: "f-1".into(),
            at: t0() - Duration::hours(2),
        })
    );
    assert_eq!((r1.at, r1.value), (t0(), 49.5));
    assert_eq!(r1.user_agent.as_deref(), Some("UA v1"));
    assert_eq!(r1.page_url.as_deref(), Some("https://shop.example/v1"));
    assert_eq!(row(v2.hit_id).last_click, None);
    let r3 = row(v3.hit_id);
    assert_eq!(
        (&r3.last_click, &r3.user_agent, &r3.page_url),
        (&None, &None, &None)
    );
    assert_eq!(
        row(v4.hit_id).last_click.as_ref().map(|c| c.param.as_str()),
        Some("msclkid")
    );
    assert_eq!(row(first.hit_id).order_id.as_deref(), Some("o-1"));

    // Adjustments: the store keeps the recorded value; the export applies
    // the order's adjustments.
    let restate = crate::domain::adjustment::Adjustment {
        id: "r-1".into(),
        site: site.key.clone(),
        order_id: "o-1".into(),
        kind: crate::domain::adjustment::AdjustmentKind::Restate,
        value: Some(20.0),
        reason: None,
        at: t0() + Duration::hours(1),
    };
    store.put_adjustment(&restate).await.unwrap();
    let adjustments = store.order_adjustments(&site.key, "o-1").await.unwrap();
    let mut r5 = row(first.hit_id).clone();
    r5.last_click = Some(LastClick {
        param: "gclid".into(),
        value: "x".into(),
        at: t0(),
    });
    let cells = export::csv_record(Format::GoogleAds, "n", &r5, &adjustments).unwrap();
    assert_eq!(cells[3], Cell::Number(20.0));
    // Every page: the partition (day, bucket) holding `first` depends on
    // its random hit id.
    let mut stored = None;
    let mut cursor = None;
    loop {
        let page = store
            .export_page(&site.key, g.id, from, to, cursor.as_ref(), 1_000)
            .await
            .unwrap();
        stored = stored.or(page
            .rows
            .iter()
            .find(|r| r.hit_id == first.hit_id)
            .map(|r| r.value));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(stored, Some(49.5));
}
