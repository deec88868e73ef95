use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn paths(rows: &[(&str, i64, i64)]) -> PathTable {
    rows.iter()
        .map(|(p, c, n)| {
            (
                (*p).to_owned(),
                PathCount {
                    conversions: *c,
                    nulls: *n,
                },
            )
        })
        .collect()
}

fn shares(credit: &BTreeMap<String, i64>) -> BTreeMap<String, f64> {
    let total: i64 = credit.values().sum();
    credit
        .iter()
        .map(|(c, u)| (c.clone(), *u as f64 / total as f64))
        .collect()
}

/// The hand-worked example: A>B>C converts, A does not, B>C does
/// not. P = 1/3; without A 1/6, without B or C 0: effects 0.5, 1, 1.
#[test]
fn three_paths_give_the_closed_form_shares() {
    let t = paths(&[("A>B>C", 1, 0), ("A", 0, 1), ("B>C", 0, 1)]);
    let re = removal_effects(&t);
    assert!((re["A"] - 0.5).abs() < 1e-12, "{re:?}");
    assert!((re["B"] - 1.0).abs() < 1e-12);
    assert!((re["C"] - 1.0).abs() < 1e-12);
    let credit = channel_credit(&t);
    assert_eq!(credit.values().sum::<i64>(), CREDIT_UNITS);
    assert_eq!(credit["A"], CREDIT_UNITS / 5);
    assert_eq!(credit["B"], 2 * CREDIT_UNITS / 5);
    assert_eq!(credit["C"], 2 * CREDIT_UNITS / 5);
}

/// X>Y and Y>X mirror each other, and so do X and Y>Y once the repeat is
/// seen as the self-loop it is: the two channels share equally.
#[test]
fn symmetric_paths_share_equally_and_repeats_are_self_loops() {
    let t = paths(&[("X>Y", 2, 0), ("Y>X", 2, 0), ("X", 1, 1), ("Y>Y", 1, 1)]);
    let credit = channel_credit(&t);
    assert_eq!(credit["X"], 3 * CREDIT_UNITS);
    assert_eq!(credit["Y"], 3 * CREDIT_UNITS);
}

#[test]
fn direct_conversions_go_to_direct_whole_and_the_total_is_exact() {
    let t = paths(&[("", 7, 0), ("Paid Search", 3, 5), ("Organic Search", 0, 9)]);
    let credit = channel_credit(&t);
    assert_eq!(credit[DIRECT_CHANNEL], 7 * CREDIT_UNITS);
    assert_eq!(credit["Paid Search"], 3 * CREDIT_UNITS);
    // Never precedes a conversion: nothing, not even a zero row.
    assert!(!credit.contains_key("Organic Search"), "{credit:?}");
    assert_eq!(credit.values().sum::<i64>(), 10 * CREDIT_UNITS);
    assert!(channel_credit(&PathTable::new()).is_empty());
    assert!(channel_credit(&paths(&[("A", 0, 4)])).is_empty());
}

#[test]
fn path_keys_follow_time_order_and_skip_the_direct_step() {
    use chrono::{TimeZone, Utc};
    let step = |channel: &str, hour: u32| Credit {
        touchpoint: Some(uuid::Uuid::from_u128(u128::from(hour))),
        source: "s".into(),
        medium: None,
        campaign: None,
        ad: None,
        channel: channel.into(),
        at: Some(Utc.with_ymd_and_hms(2026, 11, 20, hour, 0, 0).unwrap()),
        credit: 0.0,
    };
    let steps = vec![step("Email", 9), step("Paid Search", 3), step("Email", 5)];
    assert_eq!(path_of(&steps), "Paid Search>Email>Email");
    assert_eq!(
        channels(&path_of(&steps)),
        ["Paid Search", "Email", "Email"]
    );
    let direct = Credit {
        touchpoint: None,
        channel: DIRECT_CHANNEL.into(),
        at: None,
        credit: 1.0,
        ..steps[0].clone()
    };
    assert_eq!(path_of(&[direct]), "");
    assert!(channels("").is_empty());
}

#[test]
fn finer_groups_split_a_channels_credit_by_touchpoints_and_value_follows() {
    let row = |source: &str, channel: &str, touches: i64, value: f64| RollupRow {
        labels: Labels {
            channel: Some(channel.into()),
            source: Some(source.into()),
            ..Labels::default()
        },
        conversions: (touches * CREDIT_UNITS) as f64,
        value,
    };
    let credit: BTreeMap<String, i64> = [
        ("Paid Search".to_owned(), 3 * CREDIT_UNITS),
        ("Email".to_owned(), CREDIT_UNITS),
    ]
    .into();
    let rows = credit_rows(
        &credit,
        vec![
            row("google", "Paid Search", 4, 400.0),
            row("bing", "Paid Search", 2, 100.0),
            row("newsletter", "Email", 5, 50.0),
            row("tiktok", "Paid Social", 3, 30.0),
        ],
    );
    let by: BTreeMap<String, (f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r.labels.source.clone().unwrap(),
                (r.conversions / CREDIT_UNITS as f64, r.value),
            )
        })
        .collect();
    assert_eq!(by["google"], (2.0, 200.0));
    assert_eq!(by["bing"], (1.0, 50.0));
    assert_eq!(by["newsletter"], (1.0, 10.0));
    assert!(!by.contains_key("tiktok"));
    let total: f64 = rows.iter().map(|r| r.conversions).sum();
    assert_eq!(total, 4.0 * CREDIT_UNITS as f64);
}

/// A second solver, written apart from the one above: the chain is built
/// from the paths as transition counts between named states (self-loops
/// kept, start, conversion and null explicit) and the conversion
/// probabilities are found by value iteration, not elimination.
fn independent_removal_effects(t: &PathTable) -> HashMap<String, f64> {
    const START: &str = "(start)";
    const CONV: &str = "(conversion)";
    const NULL: &str = "(null)";
    let mut counts: HashMap<(String, String), f64> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    for (path, n) in t {
        if path.is_empty() {
            continue;
        }
        let mut states = vec![START.to_owned()];
        states.extend(path.split('>').map(str::to_owned));
        for s in &states[1..] {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
        for w in states.windows(2) {
            *counts.entry((w[0].clone(), w[1].clone())).or_default() +=
                (n.conversions + n.nulls) as f64;
        }
        let last = states.last().unwrap().clone();
        *counts.entry((last.clone(), CONV.to_owned())).or_default() += n.conversions as f64;
        *counts.entry((last, NULL.to_owned())).or_default() += n.nulls as f64;
    }
    let mut out_of: HashMap<String, f64> = HashMap::new();
    for ((from, _), c) in &counts {
        *out_of.entry(from.clone()).or_default() += c;
    }
    let probability = |removed: Option<&str>| -> f64 {
        let mut x: HashMap<String, f64> = HashMap::new();
        x.insert(CONV.to_owned(), 1.0);
        for _ in 0..20_000 {
            let mut next = x.clone();
            let mut change: f64 = 0.0;
            for s in names.iter().map(String::as_str).chain([START]) {
                let v = if Some(s) == removed {
                    0.0
                } else {
                    counts
                        .iter()
                        .filter(|((from, _), _)| from == s)
                        .map(|((_, to), c)| c / out_of[s] * x.get(to).copied().unwrap_or(0.0))
                        .sum()
                };
                change = change.max((v - x.get(s).copied().unwrap_or(0.0)).abs());
                next.insert(s.to_owned(), v);
            }
            x = next;
            if change < 1e-15 {
                break;
            }
        }
        x[START]
    };
    let p = probability(None);
    names
        .iter()
        .map(|c| (c.clone(), (1.0 - probability(Some(c)) / p).max(0.0)))
        .collect()
}

fn random_table() -> impl Strategy<Value = PathTable> {
    (5usize..=15).prop_flat_map(|n| {
        prop::collection::vec(
            (prop::collection::vec(0..n, 1..6), 0i64..40, 0i64..200),
            n..60,
        )
        .prop_map(move |rows| {
            let mut t = PathTable::new();
            for (steps, conv, nulls) in rows {
                let key = join(steps.iter().map(|i| CHANNELS[*i]));
                let slot = t.entry(key).or_default();
                slot.conversions += conv;
                slot.nulls += nulls;
            }
            t
        })
    })
}

const CHANNELS: [&str; 15] = [
    "Paid Search",
    "Organic Search",
    "Paid Social",
    "Organic Social",
    "Email",
    "Referral",
    "Display",
    "Affiliates",
    "Paid Video",
    "Organic Video",
    "Paid Shopping",
    "Organic Shopping",
    "Cross-network",
    "SMS",
    "Audio",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random tables of 5 to 15 channels: every channel's share is within
    /// 2% (of all conversions) of the independent solver's, and the
    /// credit adds up to exactly the conversions.
    #[test]
    fn shares_agree_with_an_independent_solver(t in random_table()) {
        let converting: i64 = t.values().map(|c| c.conversions).sum();
        let credit = channel_credit(&t);
        prop_assert_eq!(credit.values().sum::<i64>(), converting * CREDIT_UNITS);
        let effects = independent_removal_effects(&t);
        let sum: f64 = effects.values().sum();
        if converting > 0 && sum > 0.0 {
            let ours = shares(&credit);
            for (channel, e) in &effects {
                let theirs = e / sum;
                let mine = ours.get(channel).copied().unwrap_or(0.0);
                prop_assert!((mine - theirs).abs() <= 0.02, "{}: {} vs {}", channel, mine, theirs);
                prop_assert!((mine - theirs).abs() <= 1e-6, "{}: {} vs {}", channel, mine, theirs);
            }
        }
    }

    /// A channel that never precedes a conversion gets nothing.
    #[test]
    fn a_channel_only_on_unconverted_paths_gets_nothing(t in random_table()) {
        let mut t = t;
        t.entry("Never".to_owned()).or_default().nulls += 5;
        t.entry("Paid Search>Never".to_owned()).or_default().nulls += 3;
        let credit = channel_credit(&t);
        prop_assert!(!credit.contains_key("Never"));
    }
}

#[test]
fn a_tail_is_what_follows_the_latest_conversion_capped_like_a_path() {
    use chrono::{Duration, TimeZone, Utc};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap();
    let tp = |i: u32, channel: &str| Touchpoint {
        hit_id: Uuid::from_u128(u128::from(i)),
        site: "s".into(),
        vid: "v".into(),
        at: t0 + Duration::hours(i64::from(i)),
        source: "x".into(),
        medium: None,
        campaign: None,
        ad: None,
        channel: channel.into(),
        click_id: None,
    };
    let tps = vec![
        tp(3, "Email"),
        tp(1, "Paid Search"),
        tp(2, "Referral"),
        tp(1, "Paid Search"),
    ];
    assert_eq!(
        tail(None, &tps),
        Some((t0.date_naive(), "Paid Search>Referral>Email".into()))
    );
    // A conversion on the second touchpoint's hit ends the path there.
    let after = Some((tps[2].at, tps[2].hit_id));
    assert_eq!(tail(after, &tps), Some((t0.date_naive(), "Email".into())));
    assert_eq!(tail(Some((tps[0].at, tps[0].hit_id)), &tps), None);
    let long: Vec<Touchpoint> = (0..30)
        .map(|i| tp(i, if i == 0 { "Email" } else { "SMS" }))
        .collect();
    let (day, path) = tail(None, &long).unwrap();
    assert_eq!(day, (t0 + Duration::hours(29)).date_naive());
    assert_eq!(channels(&path).len(), MAX_CREDITED);
    assert_eq!(channels(&path)[0], "Email");
}
