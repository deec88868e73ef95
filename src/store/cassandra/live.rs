//! Against a real cluster: only when `CASSANDRA_CONTACT_POINTS` is set,
//! each test in a fresh random keyspace, dropped afterwards.

use super::*;
use crate::config::Settings;
use crate::domain::{Credit, Model};
use crate::store::{DuplicateReason, Recorded};

/// Drops the test keyspace when the test ends. A fresh session on its
/// own thread and runtime, so it works whatever runtime the test used.
pub struct KeyspaceGuard {
    settings: CassandraSettings,
}

impl KeyspaceGuard {
    /// Another store on the test's keyspace, to play a second worker
    /// (or a crashed one) with the adapter's own methods.
    pub async fn second_handle(&self) -> CassandraStore {
        CassandraStore::connect(&self.settings, Arc::new(Metrics::new()))
            .await
            .expect("a second handle on the test keyspace")
    }
}

impl Drop for KeyspaceGuard {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Runtime::new() else {
                return;
            };
            rt.block_on(async {
                let Ok(store) = CassandraStore::connect(&settings, Arc::new(Metrics::new())).await
                else {
                    return;
                };
                let _ = store
                    .ddl(format!("DROP KEYSPACE IF EXISTS {}", store.keyspace))
                    .await;
            });
        })
        .join();
    }
}

/// The store conformance suite (the SQLite store runs the same one),
/// against the cluster in `CASSANDRA_CONTACT_POINTS`.
mod conformance {
    use super::*;
    use crate::store::conformance::Guard;

    async fn cassandra() -> Option<(Arc<dyn Store>, Guard)> {
        let (store, guard) = cassandra_store().await?;
        Some((store, Box::new(guard)))
    }

    store_conformance_tests!(cassandra);
    mod earliest_wins {
        use super::cassandra;
        store_conformance_tests!(earliest_wins cassandra);
    }
    mod rollups {
        use super::cassandra;
        store_conformance_tests!(rollups cassandra);
    }
    mod one_visitor {
        use super::cassandra;
        store_conformance_tests!(one_visitor cassandra);
    }
}

/// A migrated store in a fresh keyspace, or `None` (test skipped).
pub async fn cassandra_store() -> Option<(Arc<dyn Store>, KeyspaceGuard)> {
    let settings = Settings::from_env().expect("settings from the environment");
    let crate::config::StoreSettings::Cassandra(mut c) = settings.store else {
        crate::test_support::skip("CASSANDRA_CONTACT_POINTS");
        return None;
    };
    c.keyspace = format!("tally_t_{}", Uuid::new_v4().simple());
    let store = CassandraStore::connect(&c, Arc::new(Metrics::new()))
        .await
        .expect("connect to CASSANDRA_CONTACT_POINTS");
    store.migrate().await.expect("migrate a fresh keyspace");
    Some((Arc::new(store), KeyspaceGuard { settings: c }))
}

fn conversion(site: &str, hit: Uuid, goal: Uuid, order: Option<&str>, vid: &str) -> Conversion {
    Conversion {
        hit_id: hit,
        goal_id: goal,
        site: site.into(),
        vid: vid.into(),
        at: Utc::now(),
        value: 10.0,
        currency: Some("EUR".into()),
        order_id: order.map(Into::into),
        model: Model::Linear,
        window_days: 30,
        // What the store computes for a visitor without touchpoints.
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

/// One candidate on its own, as the attributor writes it.
async fn rec(store: &Arc<dyn Store>, c: &Conversion, once_per_visitor: bool) -> Recorded {
    let cand = Candidate {
        conversion: c.clone(),
        once_per_visitor,
    };
    store.record_batch(&[], &[cand]).await.unwrap().recorded[0].clone()
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_ready_passes() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    store.migrate().await.unwrap();
    store.check().await.unwrap();
    assert_eq!(store.name(), "cassandra");
}

#[tokio::test]
async fn sites_keys_goals_and_touchpoints_round_trip_exactly() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    let site = Site::new("shop", vec!["shop.example".into()], Utc::now());
    store.create_site(&site).await.unwrap();
    assert_eq!(store.site(&site.key).await.unwrap(), Some(site.clone()));
    assert_eq!(store.site("s_nope").await.unwrap(), None);

    let key = ApiKey::mint(&site.key);
    store.add_api_key(&key).await.unwrap();
    assert_eq!(
        store.site_for_key_hash(&key.hash).await.unwrap(),
        Some(site.key.clone())
    );
    assert_eq!(store.revoke_api_keys(&key.prefix).await.unwrap(), 1);
    assert_eq!(store.site_for_key_hash(&key.hash).await.unwrap(), None);
    assert_eq!(store.revoke_api_keys(&key.prefix).await.unwrap(), 0);

    let draft = serde_json::from_value(serde_json::json!({
        "match": {"url": "/thanks/*", "op": "wildcard"}, "value": 5.0, "count": "once_per_visitor"
    }))
    .unwrap();
    let goal = Goal::from_draft(draft, Uuid::now_v7(), &site.key, Utc::now()).unwrap();
    store.put_goal(&goal).await.unwrap();
    assert_eq!(
        store.goal(&site.key, goal.id).await.unwrap(),
        Some(goal.clone())
    );
    assert_eq!(store.goals(&site.key).await.unwrap(), vec![goal.clone()]);
    assert!(store.delete_goal(&site.key, goal.id).await.unwrap());
    assert!(!store.delete_goal(&site.key, goal.id).await.unwrap());
    assert!(store.goals(&site.key).await.unwrap().is_empty());

    let now = Utc::now();
    let tp = |ago: i64| Touchpoint {
        hit_id: Uuid::now_v7(),
        site: site.key.clone(),
        vid: "v1".into(),
        at: now - chrono::Duration::days(ago),
        source: "google".into(),
        medium: Some("cpc".into()),
        campaign: None,
        ad: None,
        channel: "Paid Search".into(),
        click_id: Some(("gclid".into(), "abc".into())),
    };
    let (recent, old) = (tp(1), tp(40));
    for t in [&recent, &old, &recent] {
        store.put_touchpoint(t).await.unwrap();
    }
    let got = store
        .touchpoints(&site.key, "v1", now - chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(got, vec![recent.clone()]);
    let since_exact = store.touchpoints(&site.key, "v1", recent.at).await.unwrap();
    assert_eq!(since_exact, vec![recent]);
}

#[tokio::test]
async fn conversions_dedup_by_hit_order_and_visitor_and_report() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    let (site, goal) = ("s_t", Uuid::now_v7());
    let first = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v1");
    assert_eq!(rec(&store, &first, false).await, Recorded::Inserted);
    assert_eq!(
        rec(&store, &first, false).await,
        Recorded::Duplicate(DuplicateReason::SameHit)
    );
    let same_order = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v2");
    assert_eq!(
        rec(&store, &same_order, false).await,
        Recorded::Duplicate(DuplicateReason::OrderId)
    );
    let a = conversion(site, Uuid::now_v7(), goal, None, "v3");
    let b = conversion(site, Uuid::now_v7(), goal, Some("o-2"), "v3");
    assert_eq!(rec(&store, &a, true).await, Recorded::Inserted);
    assert_eq!(
        rec(&store, &b, true).await,
        Recorded::Duplicate(DuplicateReason::Visitor)
    );
    // b did not count, but it is the earliest hit with o-2: it holds
    // the order all the same (no cascade), so a later one does not count.
    let c = conversion(site, Uuid::now_v7(), goal, Some("o-2"), "v4");
    assert_eq!(
        rec(&store, &c, false).await,
        Recorded::Duplicate(DuplicateReason::OrderId)
    );

    let day = first.at.date_naive();
    let rows = store.credit_rows(site, day, day, None).await.unwrap();
    assert_eq!(rows.len(), 2, "two conversions, one credit each");
    let total: f64 = rows.iter().map(|r| r.credit).sum();
    assert!((total - 2.0).abs() < 1e-9);
    assert!(store
        .credit_rows(site, day, day, Some(Uuid::now_v7()))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.conversions_for_hit(site, first.hit_id).await.unwrap(),
        vec![first]
    );
    assert!(store
        .conversions_for_hit(site, b.hit_id)
        .await
        .unwrap()
        .is_empty());
}

/// A conversion written and removed by two workers at once ends, row
/// by row, as one of the two units left it: registered, with its
/// per-hit row and every credit row, or none of them. Were they written
/// as separate statements, a removal racing a write could leave the
/// per-hit row counted without a registration, which no later settle
/// finds.
#[tokio::test]
async fn a_write_and_a_removal_racing_leave_all_rows_or_none() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    let cass = Arc::new(_guard.second_handle().await);
    let site = "s_t";
    let (mut both, mut neither) = (0, 0);
    for round in 0..64 {
        let mut c = conversion(
            site,
            Uuid::now_v7(),
            Uuid::now_v7(),
            None,
            &format!("v{round}"),
        );
        let half = Credit {
            credit: 0.5,
            ..c.credits[0].clone()
        };
        c.credits = vec![
            half.clone(),
            Credit {
                source: "google".into(),
                ..half
            },
        ];
        let units: Vec<_> = [true, false]
            .into_iter()
            .map(|put| {
                let (cass, c) = (cass.clone(), c.clone());
                tokio::spawn(async move { cass.put_unit(&c, false, put).await })
            })
            .collect();
        for u in units {
            u.await.unwrap().unwrap();
        }
        let registered = cass
            .registration(&super::rows::Stored {
                conversion: c.clone(),
                once_per_visitor: false,
            })
            .await
            .unwrap()
            .is_some();
        let by_hit = store
            .conversions_for_hit(site, c.hit_id)
            .await
            .unwrap()
            .len();
        let day = c.at.date_naive();
        let credits = store
            .credit_rows(site, day, day, Some(c.goal_id))
            .await
            .unwrap()
            .len();
        match (registered, by_hit, credits) {
            (true, 1, 2) => both += 1,
            (false, 0, 0) => neither += 1,
            state => panic!("round {round}: half a conversion left: {state:?}"),
        }
    }
    eprintln!("units racing: the write won {both} times, the removal {neither}");
}

/// A conversion counted before schema 5 has no stored candidate, so
/// earliest-wins cannot see it: an earlier hit with its order id
/// counts beside it. Replaying its hit (`tally replay`) stores the
/// candidate, and the order goes to the earliest hit alone.
#[tokio::test]
async fn a_conversion_counted_before_schema_5_joins_earliest_wins_once_replayed() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    let cass = _guard.second_handle().await;
    let goal = Uuid::now_v7();
    let late = conversion("s_t", Uuid::now_v7(), goal, Some("o-1"), "v-late");
    let mut early = conversion("s_t", Uuid::now_v7(), goal, Some("o-1"), "v-early");
    early.at = late.at - chrono::Duration::hours(1);
    // What schema 4 left: the conversion's rows, no candidate.
    cass.put_unit(&late, false, true).await.unwrap();
    let day = late.at.date_naive();
    let counted = || async {
        let mut hits: Vec<Uuid> = Vec::new();
        for h in [early.hit_id, late.hit_id] {
            if !store
                .conversions_for_hit("s_t", h)
                .await
                .unwrap()
                .is_empty()
            {
                hits.push(h);
            }
        }
        let rows = store.credit_rows("s_t", early.at.date_naive(), day, Some(goal));
        (hits, rows.await.unwrap().len())
    };
    assert_eq!(rec(&store, &early, false).await, Recorded::Inserted);
    assert_eq!(counted().await, (vec![early.hit_id, late.hit_id], 2));
    // The replay of the late hit.
    assert_eq!(
        rec(&store, &late, false).await,
        Recorded::Duplicate(DuplicateReason::OrderId)
    );
    assert_eq!(counted().await, (vec![early.hit_id], 1));
}

#[tokio::test]
async fn redelivery_after_a_crash_mid_write_completes_the_conversion_once() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    // A second handle on the same keyspace, to play the crashed delivery.
    let cass = _guard.second_handle().await;
    let c = conversion("s_t", Uuid::now_v7(), Uuid::now_v7(), Some("o-9"), "v1");
    let cand = Candidate {
        conversion: c.clone(),
        once_per_visitor: false,
    };
    // The first delivery stored its candidate, registered the
    // conversion as being written and wrote its credit rows, then died
    // before the per-hit row and the complete registration.
    cass.store_candidate(&cand).await.unwrap();
    cass.register(&c, false).await.unwrap();
    cass.write_credit_rows(&c).await.unwrap();
    assert!(store
        .conversions_for_hit(&c.site, c.hit_id)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(rec(&store, &c, false).await, Recorded::Inserted);
    let day = c.at.date_naive();
    let rows = || async { store.credit_rows(&c.site, day, day, None).await.unwrap() };
    assert_eq!(rows().await.len(), 1);
    assert_eq!(
        store.conversions_for_hit(&c.site, c.hit_id).await.unwrap(),
        vec![c.clone()]
    );
    assert_eq!(
        rec(&store, &c, false).await,
        Recorded::Duplicate(DuplicateReason::SameHit)
    );
    assert_eq!(rows().await.len(), 1);
}

#[tokio::test]
async fn a_crash_mid_removal_is_finished_by_the_next_settle() {
    let Some((store, _guard)) = cassandra_store().await else {
        return;
    };
    let cass = _guard.second_handle().await;
    let (site, goal) = ("s_t", Uuid::now_v7());
    let mut late = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v2");
    late.at += chrono::Duration::minutes(5);
    assert_eq!(rec(&store, &late, false).await, Recorded::Inserted);
    // The earlier hit's delivery stored its candidate, began removing
    // the displaced one (marked it, deleted its credit rows) and died.
    let early = conversion(site, Uuid::now_v7(), goal, Some("o-1"), "v1");
    cass.store_candidate(&Candidate {
        conversion: early.clone(),
        once_per_visitor: false,
    })
    .await
    .unwrap();
    cass.register(&late, false).await.unwrap();
    let st = cass.st().await.unwrap();
    cass.exec(
        &st.delete_credits_from,
        (
            site,
            late.at.date_naive(),
            credit_bucket(late.hit_id),
            goal,
            late.hit_id,
            0_i32,
        ),
    )
    .await
    .unwrap();
    // Its redelivery finishes: the early hit counts, the late one is gone.
    let out = store
        .record_batch(
            &[],
            &[Candidate {
                conversion: early.clone(),
                once_per_visitor: false,
            }],
        )
        .await
        .unwrap();
    assert_eq!(out.recorded, vec![Recorded::Inserted]);
    assert_eq!(out.displaced, 1);
    assert!(store
        .conversions_for_hit(site, late.hit_id)
        .await
        .unwrap()
        .is_empty());
    let day = early.at.date_naive();
    let rows = store.credit_rows(site, day, day, None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        store.conversions_for_hit(site, early.hit_id).await.unwrap(),
        vec![early]
    );
}

/// A keyspace gets the rollups and totals of the days written before it
/// had them from `migrate`: one at schema 7 with its rollups built (here:
/// the totals tables dropped, the version and backfill mark set back),
/// and one from before rollups (every rollup and total row and the
/// backfill mark taken away). Reports by labels and by day and goal read
/// empty where their rows are gone and whole after `migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_backfills_the_rollups_of_days_written_before_them() {
    use crate::domain::report::ReportQuery;
    use crate::domain::GroupKey;
    let Some((store, guard)) = cassandra_store().await else {
        return;
    };
    let cass = guard.second_handle().await;
    let site = "s_backfill";
    let draft: crate::domain::GoalDraft = serde_json::from_value(serde_json::json!({
        "name": "Signup", "match": {"event": "signup"}, "value": 10.0, "model": "linear"
    }))
    .unwrap();
    let goal = Goal::from_draft(draft, Uuid::now_v7(), site, Utc::now()).unwrap();
    store.put_goal(&goal).await.unwrap();
    let tp = Touchpoint {
        hit_id: Uuid::now_v7(),
        site: site.into(),
        vid: "v1".into(),
        at: Utc::now() - chrono::Duration::minutes(1),
        source: "google".into(),
        medium: Some("cpc".into()),
        campaign: None,
        ad: None,
        channel: "Paid Search".into(),
        click_id: None,
    };
    let c = conversion(site, Uuid::now_v7(), goal.id, None, "v1");
    store
        .record_batch(
            std::slice::from_ref(&tp),
            &[Candidate {
                conversion: c.clone(),
                once_per_visitor: false,
            }],
        )
        .await
        .unwrap();
    let day = c.at.date_naive();
    let reports = || async {
        let mut out = Vec::new();
        for group_by in [
            vec![GroupKey::Source],
            vec![],
            vec![GroupKey::Day, GroupKey::Goal],
        ] {
            let query = ReportQuery {
                from: day,
                to: day,
                goal: None,
                group_by,
                model: None,
            };
            out.push(
                crate::store::report(store.as_ref(), site, &query)
                    .await
                    .unwrap(),
            );
        }
        out
    };
    let counts = |r: &crate::domain::Report| (r.total.conversions, r.total.clicks);
    let before = reports().await;
    assert!(before.iter().all(|r| counts(r) == (1.0, 1)), "{before:?}");
    let ks = cass.keyspace().to_owned();

    // Schema 7, its backfill done: no totals tables yet.
    for cql in [
        format!("DROP TABLE {ks}.rollup_totals"),
        format!("DROP TABLE {ks}.click_totals"),
        format!("UPDATE {ks}.schema_version SET version = 7 WHERE component = 'tally'"),
        format!(
            "UPDATE {ks}.schema_version SET version = 1 WHERE component = '{}'",
            super::rollups::BACKFILL_COMPONENT
        ),
    ] {
        cass.ddl(cql).await.unwrap();
    }
    store.migrate().await.unwrap();
    assert_eq!(reports().await, before, "upgraded from schema 7");

    // Before rollups: none of them, nor the backfill mark.
    for cql in [
        format!("TRUNCATE {ks}.rollups_by_day"),
        format!("TRUNCATE {ks}.click_rollups_by_day"),
        format!("TRUNCATE {ks}.rollup_totals"),
        format!("TRUNCATE {ks}.click_totals"),
        format!(
            "DELETE FROM {ks}.schema_version WHERE component = '{}'",
            super::rollups::BACKFILL_COMPONENT
        ),
    ] {
        cass.ddl(cql).await.unwrap();
    }
    let emptied = reports().await;
    assert!(emptied.iter().all(|r| counts(r) == (0.0, 0)), "{emptied:?}");
    store.migrate().await.unwrap();
    assert_eq!(reports().await, before, "upgraded from before rollups");
}

/// A once-per-visitor conversion registered before `once_counted` existed
/// (here: its row and the backfill mark taken away) is found by `migrate`,
/// so an earlier candidate of its visitor still displaces it. Without the
/// backfill both would count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_backfills_once_counted_so_an_earlier_candidate_still_displaces() {
    let Some((store, guard)) = cassandra_store().await else {
        return;
    };
    let cass = guard.second_handle().await;
    let (site, goal) = ("s_once", Uuid::now_v7());
    let late = conversion(site, Uuid::now_v7(), goal, None, "v1");
    assert_eq!(rec(&store, &late, true).await, Recorded::Inserted);
    let ks = cass.keyspace().to_owned();
    for cql in [
        format!("TRUNCATE {ks}.once_counted"),
        format!(
            "DELETE FROM {ks}.schema_version WHERE component = '{}'",
            super::batch::ONCE_BACKFILL_COMPONENT
        ),
    ] {
        cass.ddl(cql).await.unwrap();
    }
    store.migrate().await.unwrap();
    let mut early = conversion(site, Uuid::now_v7(), goal, None, "v1");
    early.at = late.at - chrono::Duration::minutes(5);
    assert_eq!(rec(&store, &early, true).await, Recorded::Inserted);
    assert!(store
        .conversions_for_hit(site, late.hit_id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.conversions_for_hit(site, early.hit_id).await.unwrap(),
        vec![early]
    );
}

/// Every `tails_by_day` row of `vid` on days `from..=to`, as (day, path).
async fn tail_rows(
    cass: &CassandraStore,
    site: &str,
    vid: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Vec<(NaiveDate, String)> {
    let st = cass.st().await.unwrap();
    let bucket = super::paths::tail_bucket(vid);
    let mut out = Vec::new();
    for day in from.iter_days().take_while(|d| *d <= to) {
        let rows: Vec<(Option<String>,)> = cass
            .all_rows(&st.select_day_tails, (site, day, bucket))
            .await
            .unwrap();
        out.extend(rows.into_iter().map(|(p,)| (day, p.unwrap_or_default())));
    }
    out
}

/// Two workers writing one visitor's touchpoints and conversions at once,
/// each computing the visitor's tail after its writes, leave exactly one
/// tail row, the one the stored hits make, and the day's path table
/// counts it once. Then rows as a computation that lost a race leaves
/// them (a listed row on another day and the same day, written at an
/// older timestamp) are removed or overwritten by the next computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_leave_one_tail_per_visitor() {
    use crate::domain::markov;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let Some((store, guard)) = cassandra_store().await else {
        return;
    };
    let other: Arc<dyn Store> = Arc::new(guard.second_handle().await);
    let cass = guard.second_handle().await;
    let (site, vid, goal) = ("s_tails", "v1", Uuid::now_v7());
    let start = Utc::now() - chrono::Duration::days(6);
    let (first, last) = (start.date_naive(), Utc::now().date_naive());
    let mut rng = StdRng::seed_from_u64(11);
    let channels = ["Paid Search", "Email", "Referral"];
    let mut touchpoints: Vec<Touchpoint> = Vec::new();
    let mut candidates: Vec<Conversion> = Vec::new();
    for round in 0..24 {
        let mut tp = || Touchpoint {
            hit_id: Uuid::now_v7(),
            site: site.into(),
            vid: vid.into(),
            at: start + chrono::Duration::minutes(rng.random_range(0..6 * 24 * 60)),
            source: "google".into(),
            medium: Some("cpc".into()),
            campaign: None,
            ad: None,
            channel: channels[rng.random_range(0..channels.len())].into(),
            click_id: None,
        };
        let (a, b) = (tp(), tp());
        let cands: Vec<Candidate> = if round % 6 == 5 {
            let mut c = conversion(site, Uuid::now_v7(), goal, None, vid);
            c.at = start + chrono::Duration::minutes(rng.random_range(0..6 * 24 * 60));
            candidates.push(c.clone());
            vec![Candidate {
                conversion: c,
                once_per_visitor: false,
            }]
        } else {
            Vec::new()
        };
        let (ra, rb) = tokio::join!(
            store.record_batch(std::slice::from_ref(&a), &cands),
            other.record_batch(std::slice::from_ref(&b), &[]),
        );
        ra.unwrap();
        rb.unwrap();
        touchpoints.extend([a, b]);
    }
    let latest = candidates.iter().map(|c| (c.at, c.hit_id)).max();
    let want = markov::tail(latest, &touchpoints).expect("touchpoints after the conversion");
    let tails = |rows: Vec<markov::PathRow>| -> Vec<(NaiveDate, String, i64)> {
        rows.into_iter()
            .filter(|r| r.goal.is_none())
            .map(|r| (r.day, r.path, r.count))
            .collect()
    };
    assert_eq!(
        tail_rows(&cass, site, vid, first, last).await,
        vec![want.clone()]
    );
    let rows = store.path_rows(site, first, last).await.unwrap();
    assert_eq!(tails(rows), vec![(want.0, want.1.clone(), 1)]);

    // What a computation that lost a race may leave: its rows on another
    // day and on the winner's day, older than the winner's.
    let st = cass.st().await.unwrap();
    let old = Utc::now().timestamp_micros() - 60_000_000;
    let stale_day = if want.0 == first { last } else { first };
    let bucket = super::paths::tail_bucket(vid);
    for day in [stale_day, want.0] {
        cass.exec(&st.insert_tail, (site, vid, day, day, "Stale", old, old))
            .await
            .unwrap();
        cass.exec(&st.insert_day_tail, (site, day, bucket, vid, "Stale", old))
            .await
            .unwrap();
    }
    let mut stale = tail_rows(&cass, site, vid, first, last).await;
    stale.sort();
    assert_eq!(stale.len(), 2, "{stale:?}");
    let days = cass.refresh_tail(site, vid).await.unwrap();
    assert!(days.contains(&stale_day), "{days:?}");
    super::rollups::mark_days(&cass, site, &days).await.unwrap();
    assert_eq!(
        tail_rows(&cass, site, vid, first, last).await,
        vec![want.clone()]
    );
    let rows = store.path_rows(site, first, last).await.unwrap();
    assert_eq!(tails(rows), vec![(want.0, want.1, 1)]);
}

/// A keyspace at schema 10 (here: the path tables dropped, the version
/// and the rollups backfill set back, the tails backfill mark taken
/// away) gets its `data_driven` rollups, path tables and visitors' tails
/// from `migrate`: a data-driven report and the path rows read after it
/// equal what the same hits gave when written at schema 11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_from_schema_10_fills_the_path_tables_and_tails() {
    use crate::domain::report::ReportQuery;
    use crate::domain::GroupKey;
    let Some((store, guard)) = cassandra_store().await else {
        return;
    };
    let cass = guard.second_handle().await;
    let site = "s_paths";
    let draft: crate::domain::GoalDraft = serde_json::from_value(serde_json::json!({
        "name": "Signup", "match": {"event": "signup"}, "value": 10.0, "model": "linear"
    }))
    .unwrap();
    let goal = Goal::from_draft(draft, Uuid::now_v7(), site, Utc::now()).unwrap();
    store.put_goal(&goal).await.unwrap();
    let tp = |vid: &str, source: &str, channel: &str, ago: i64| Touchpoint {
        hit_id: Uuid::now_v7(),
        site: site.into(),
        vid: vid.into(),
        at: Utc::now() - chrono::Duration::minutes(ago),
        source: source.into(),
        medium: Some("cpc".into()),
        campaign: None,
        ad: None,
        channel: channel.into(),
        click_id: None,
    };
    let tps = [
        tp("v1", "google", "Paid Search", 3),
        tp("v1", "news", "Email", 2),
        tp("v2", "news", "Email", 2),
        tp("v3", "google", "Paid Search", 2),
    ];
    let c = conversion(site, Uuid::now_v7(), goal.id, None, "v1");
    store
        .record_batch(
            &tps,
            &[Candidate {
                conversion: c.clone(),
                once_per_visitor: false,
            }],
        )
        .await
        .unwrap();
    let day = c.at.date_naive();
    let query = ReportQuery {
        from: day,
        to: day,
        goal: None,
        group_by: vec![GroupKey::Channel],
        model: Some(Model::DataDriven),
    };
    let report = || async {
        let mut paths = store.path_rows(site, day, day).await.unwrap();
        paths.sort_by(|a, b| (a.goal, &a.path).cmp(&(b.goal, &b.path)));
        (
            paths,
            crate::store::report(store.as_ref(), site, &query)
                .await
                .unwrap(),
        )
    };
    let before = report().await;
    assert_eq!(before.0.len(), 3, "{:?}", before.0);
    assert!(before.1.total.conversions > 0.99, "{:?}", before.1);
    let ks = cass.keyspace().to_owned();
    // Schema 10: none of the tables, no data_driven rows, no marks.
    for cql in [
        format!("DROP TABLE {ks}.path_rollups"),
        format!("DROP TABLE {ks}.visitor_tails"),
        format!("DROP TABLE {ks}.tails_by_day"),
        format!("DELETE FROM {ks}.rollups_by_day WHERE site = '{site}' AND day = '{day}' AND model = 'data_driven'"),
        format!("DELETE FROM {ks}.rollup_totals WHERE site = '{site}' AND model = 'data_driven'"),
        format!("UPDATE {ks}.schema_version SET version = 10 WHERE component = 'tally'"),
        format!(
            "UPDATE {ks}.schema_version SET version = 3 WHERE component = '{}'",
            super::rollups::BACKFILL_COMPONENT
        ),
        format!(
            "DELETE FROM {ks}.schema_version WHERE component = '{}'",
            super::paths::TAILS_BACKFILL_COMPONENT
        ),
    ] {
        cass.ddl(cql).await.unwrap();
    }
    store.migrate().await.unwrap();
    assert_eq!(report().await, before, "upgraded from schema 10");
}

/// The total a report over `day` counts for `site`'s goals.
async fn day_total(store: &Arc<dyn Store>, site: &str, day: NaiveDate) -> crate::domain::Report {
    let query = ReportQuery {
        from: day,
        to: day,
        goal: None,
        group_by: Vec::new(),
        model: None,
    };
    crate::store::report(store.as_ref(), site, &query)
        .await
        .unwrap()
}

fn adjustment(
    site: &str,
    id: &str,
    order: &str,
    value: Option<f64>,
    at: DateTime<Utc>,
) -> crate::domain::adjustment::Adjustment {
    use crate::domain::adjustment::{Adjustment, AdjustmentKind};
    Adjustment {
        id: id.into(),
        site: site.into(),
        order_id: order.into(),
        kind: if value.is_some() {
            AdjustmentKind::Restate
        } else {
            AdjustmentKind::Retract
        },
        value,
        reason: None,
        at,
    }
}

/// Two web processes receiving the same idempotency key at once (a
/// client retrying while its first call is still running) record one
/// adjustment, the first claim's, and both answer it: the order's
/// partition and the day's listing hold it once, and reports count the
/// order at what the claimed adjustments say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_processes_racing_one_adjustment_id_record_it_once() {
    let Some((store, guard)) = cassandra_store().await else {
        return;
    };
    let other: Arc<dyn Store> = Arc::new(guard.second_handle().await);
    let site = "s_adj";
    let g = crate::store::conformance::goal(site, "purchase", Model::Linear);
    store.put_goal(&g).await.unwrap();
    let c = conversion(site, Uuid::now_v7(), g.id, Some("o-1"), "v1");
    assert_eq!(rec(&store, &c, false).await, Recorded::Inserted);
    let day = c.at.date_naive();
    for round in 0..6 {
        let id = format!("refund-{round}");
        let attempts: Vec<_> = (0..6)
            .map(|i| {
                let at = c.at + chrono::Duration::milliseconds(i64::from(i) * 7 - 20);
                adjustment(site, &id, "o-1", Some(f64::from(round * 10 + i)), at)
            })
            .collect();
        let results = futures_util::future::join_all(attempts.iter().enumerate().map(|(i, a)| {
            let s = if i % 2 == 0 { &store } else { &other };
            async move { s.put_adjustment(a).await.unwrap() }
        }))
        .await;
        let won: Vec<_> = results.iter().filter(|(_, new)| *new).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let winner = &won[0].0;
        assert!(attempts.contains(winner), "round {round}");
        assert!(results.iter().all(|(a, _)| a == winner), "round {round}");
    }
    let kept = other.order_adjustments(site, "o-1").await.unwrap();
    let ids: Vec<&str> = kept.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        6
    );
    let listed = store.adjustments(site, day, day).await.unwrap();
    assert_eq!(listed.len(), 6);
    let want = crate::domain::adjustment::adjusted_value(
        c.value,
        crate::domain::adjustment::effect(&kept),
    );
    let got = day_total(&other, site, day).await.total;
    assert_eq!((got.conversions, got.value), (1.0, want));
}

/// A conversion written before schema 12 has no order id on its credit
/// rows: an adjustment of its order still applies, the day's rewrite
/// finding the order in the conversion itself.
#[tokio::test]
async fn an_adjustment_applies_to_a_conversion_written_before_schema_12() {
    let Some((store, guard)) = cassandra_store().await else {
        return;
    };
    let cass = guard.second_handle().await;
    let site = "s_old";
    let g = crate::store::conformance::goal(site, "purchase", Model::Linear);
    store.put_goal(&g).await.unwrap();
    let c = conversion(site, Uuid::now_v7(), g.id, Some("o-9"), "v1");
    let plain = conversion(site, Uuid::now_v7(), g.id, None, "v2");
    assert_eq!(rec(&store, &c, false).await, Recorded::Inserted);
    assert_eq!(rec(&store, &plain, false).await, Recorded::Inserted);
    let day = c.at.date_naive();
    // As a build before schema 12 wrote it: no order id on the row.
    for x in [&c, &plain] {
        cass.session()
            .query_unpaged(
                format!(
                    "DELETE order_id FROM {}.credits_by_day WHERE site = ? AND day = ? AND bucket = ? AND goal = ? AND hit = ? AND idx = 0",
                    cass.keyspace()
                ),
                (site, day, credit_bucket(x.hit_id), g.id, x.hit_id),
            )
            .await
            .unwrap();
    }
    assert_eq!(day_total(&store, site, day).await.total.value, Some(20.0));
    let retract = adjustment(site, "r-1", "o-9", None, c.at);
    assert!(store.put_adjustment(&retract).await.unwrap().1);
    let total = day_total(&store, site, day).await.total;
    assert_eq!((total.conversions, total.value), (1.0, Some(10.0)));
    let restate = adjustment(
        site,
        "r-2",
        "o-9",
        Some(4.5),
        c.at + chrono::Duration::seconds(1),
    );
    assert!(store.put_adjustment(&restate).await.unwrap().1);
    let total = day_total(&store, site, day).await.total;
    assert_eq!((total.conversions, total.value), (2.0, Some(14.5)));
    // The same id again changes nothing and answers the stored one.
    let again = adjustment(
        site,
        "r-2",
        "o-9",
        None,
        c.at + chrono::Duration::seconds(9),
    );
    assert_eq!(
        store.put_adjustment(&again).await.unwrap(),
        (restate, false)
    );
    assert_eq!(day_total(&store, site, day).await.total.value, Some(14.5));
}
