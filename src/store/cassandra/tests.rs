//! The schema and the statements checked offline: plain CQL that
//! Cassandra 4.0 accepts, and statements that touch declared columns and
//! whole partitions.

use std::collections::{BTreeMap, BTreeSet};

use super::schema::{create_keyspace_cql, render, schema_version_cql, MIGRATIONS, SCHEMA_VERSION};
use super::statements::STATEMENTS;

/// A table as its `CREATE TABLE` declares it.
#[derive(Debug)]
struct Table {
    columns: BTreeSet<String>,
    partition: Vec<String>,
    clustering: Vec<String>,
}

/// Reserved words of Cassandra 4.0 CQL: none may name a column.
const RESERVED: &[&str] = &[
    "add",
    "allow",
    "alter",
    "and",
    "apply",
    "asc",
    "authorize",
    "batch",
    "begin",
    "by",
    "columnfamily",
    "create",
    "default",
    "delete",
    "desc",
    "describe",
    "drop",
    "entries",
    "execute",
    "from",
    "full",
    "grant",
    "if",
    "in",
    "index",
    "infinity",
    "insert",
    "into",
    "is",
    "keyspace",
    "limit",
    "materialized",
    "mbean",
    "mbeans",
    "modify",
    "nan",
    "norecursive",
    "not",
    "null",
    "of",
    "on",
    "or",
    "order",
    "primary",
    "rename",
    "replace",
    "revoke",
    "schema",
    "select",
    "set",
    "table",
    "to",
    "token",
    "truncate",
    "unlogged",
    "unset",
    "update",
    "use",
    "using",
    "view",
    "where",
    "with",
];

/// Syntax Cassandra 4.0 rejects or that this store must not rely on.
const FORBIDDEN: &[&str] = &[
    "per partition limit",
    "bypass cache",
    "using timeout",
    "allow filtering",
    "counter",
    "cdc",
    "tombstone_gc",
    "scylla",
    "group by",
    "like ",
];

/// The statements of the store and of its adjustments, by name.
fn all_statements() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    STATEMENTS.iter().chain(super::adjustments::STATEMENTS)
}

fn idents(s: &str) -> Vec<String> {
    s.split(',')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

fn tables() -> BTreeMap<String, Table> {
    let mut out = BTreeMap::new();
    for (_, statements) in MIGRATIONS {
        for cql in *statements {
            let cql = render(cql, "ks");
            if let Some(add) = cql.strip_prefix("ALTER TABLE ks.") {
                let (name, col) = add.split_once(" ADD ").unwrap();
                let mut words = col.split_whitespace();
                let (cname, ty) = (words.next().unwrap(), words.next().unwrap());
                assert!(
                    [
                        "text",
                        "int",
                        "double",
                        "boolean",
                        "uuid",
                        "timestamp",
                        "list<text>"
                    ]
                    .contains(&ty),
                    "{cql}"
                );
                let table: &mut Table = out
                    .get_mut(name)
                    .unwrap_or_else(|| panic!("ALTER of an undeclared table: {cql}"));
                assert!(table.columns.insert(cname.to_owned()), "{cql}: added twice");
                continue;
            }
            let rest = cql
                .strip_prefix("CREATE TABLE IF NOT EXISTS ks.")
                .unwrap_or_else(|| {
                    panic!("not a keyspace-qualified CREATE TABLE IF NOT EXISTS: {cql}")
                });
            let (name, body) = rest.split_once(" (").unwrap();
            let body = &body[..body.rfind(')').unwrap()];
            let (cols, key) = match body.find("PRIMARY KEY ((") {
                Some(i) => (&body[..i], Some(&body[i + "PRIMARY KEY ((".len()..])),
                None => (body, None),
            };
            let mut columns = BTreeSet::new();
            let mut partition = Vec::new();
            for col in cols.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let mut words = col.split_whitespace();
                let cname = words.next().unwrap().to_owned();
                let ty = words.next().unwrap();
                assert!(
                    [
                        "text",
                        "int",
                        "double",
                        "boolean",
                        "bigint",
                        "uuid",
                        "timestamp",
                        "date",
                        "list<text>"
                    ]
                    .contains(&ty),
                    "{name}.{cname}: type {ty} is not in the plain set"
                );
                if words.next() == Some("PRIMARY") {
                    partition.push(cname.clone());
                }
                columns.insert(cname);
            }
            let mut clustering = Vec::new();
            if let Some(key) = key {
                // `site, vid), at, hit)) …`: partition, then clustering.
                let (p, rest) = key.split_once(')').unwrap();
                let c = &rest[..rest.find(')').unwrap()];
                partition = idents(p);
                clustering = idents(c);
            }
            assert!(!partition.is_empty(), "{name} has no partition key");
            for k in partition.iter().chain(&clustering) {
                assert!(columns.contains(k), "{name}: key column {k} not declared");
            }
            out.insert(
                name.to_owned(),
                Table {
                    columns,
                    partition,
                    clustering,
                },
            );
        }
    }
    out
}

#[test]
fn schema_is_plain_cql_that_cassandra_4_accepts() {
    let tables = tables();
    assert_eq!(tables.len(), 29);
    for (name, t) in &tables {
        for c in &t.columns {
            assert!(
                !RESERVED.contains(&c.as_str()),
                "{name}.{c} is a reserved word"
            );
            assert!(c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        }
    }
    let all: Vec<String> = MIGRATIONS
        .iter()
        .flat_map(|(_, s)| s.iter().map(|c| render(c, "ks")))
        .chain([
            create_keyspace_cql("ks", 3, Some("dc1")),
            schema_version_cql("ks"),
        ])
        .collect();
    for cql in &all {
        let lower = cql.to_ascii_lowercase();
        for bad in FORBIDDEN {
            assert!(!lower.contains(bad), "`{bad}` in {cql}");
        }
        assert!(
            lower.contains("if not exists") || lower.starts_with("alter table ks."),
            "not idempotent: {cql}"
        );
        assert_eq!(cql.matches('(').count(), cql.matches(')').count(), "{cql}");
        assert!(
            !cql.contains('{') || cql.contains("replication"),
            "unfilled: {cql}"
        );
    }
    let tp = &tables["touchpoints"];
    assert_eq!(tp.partition, ["site", "vid"]);
    assert_eq!(tp.clustering, ["at", "hit"]);
    assert!(all
        .iter()
        .any(|c| c.contains("CLUSTERING ORDER BY (at DESC, hit ASC)")
            && c.contains(&format!("default_time_to_live = {}", 365 * 86_400))));
    assert_eq!(
        tables["credits_by_day"].partition,
        ["site", "day", "bucket"]
    );
    assert_eq!(
        tables["order_claims"].partition,
        ["site", "goal", "order_id"]
    );
    assert_eq!(tables["visitor_claims"].partition, ["site", "goal", "vid"]);
    assert_eq!(tables["conversions_by_hit"].partition, ["site", "hit"]);
    let by_visitor = &tables["conversions_by_visitor"];
    assert_eq!(by_visitor.partition, ["site", "vid"]);
    assert_eq!(by_visitor.clustering, ["at", "hit", "goal"]);
    assert!(by_visitor.columns.contains("complete"));
    let by_order = &tables["order_candidates"];
    assert_eq!(by_order.partition, ["site", "goal", "order_id"]);
    assert_eq!(by_order.clustering, ["at", "hit"]);
    let candidates = &tables["visitor_candidates"];
    assert_eq!(candidates.partition, ["site", "vid"]);
    assert_eq!(candidates.clustering, ["goal", "at", "hit"]);
    // A report by day and goal reads one slice per model and one for
    // clicks, whatever its range.
    let totals = &tables["rollup_totals"];
    assert_eq!(totals.partition, ["site", "model"]);
    assert_eq!(totals.clustering, ["day", "goal", "currency"]);
    assert_eq!(tables["click_totals"].partition, ["site"]);
    assert_eq!(tables["click_totals"].clustering, ["day"]);
    // Data-driven paths: a day's table is one partition; a visitor's
    // tail is one partition (static current tail, a row per day it may
    // still be indexed on); the per-day index is bucketed like credits.
    let paths = &tables["path_rollups"];
    assert_eq!(paths.partition, ["site", "day"]);
    assert_eq!(paths.clustering, ["goal", "path"]);
    let tails = &tables["visitor_tails"];
    assert_eq!(tails.partition, ["site", "vid"]);
    assert_eq!(tails.clustering, ["day"]);
    assert!(["tail_day", "path", "ts"]
        .iter()
        .all(|c| tails.columns.contains(*c)));
    assert!(all.iter().any(|c| c.contains("tail_day date static")));
    let by_day = &tables["tails_by_day"];
    assert_eq!(by_day.partition, ["site", "day", "bucket"]);
    assert_eq!(by_day.clustering, ["vid"]);
    // Adjustments are kept forever: no TTL on their tables.
    for name in [
        "adjustment_ids",
        "adjustments_by_order",
        "adjustments_by_day",
        "adjusted_order_buckets",
    ] {
        assert!(tables.contains_key(name), "{name}");
        assert!(!all
            .iter()
            .any(|c| c.contains(&format!("ks.{name} ")) && c.contains("time_to_live")));
    }
    assert_eq!(
        tables["adjustments_by_order"].partition,
        ["site", "order_id"]
    );
    assert_eq!(tables["adjustments_by_day"].partition, ["site", "day"]);
    assert!(tables["credits_by_day"].columns.contains("order_id"));
    // Earliest-wins needs no Paxos: only the goal delete, the site update
    // (an operator's change, which must not create a site), the daily
    // salt and an adjustment's idempotency key (an API call, never the
    // attributor) are conditional.
    let conditional: Vec<&str> = all_statements()
        .filter(|(_, cql)| cql.contains(" IF "))
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(
        conditional,
        [
            "update_site",
            "delete_goal",
            "claim_salt",
            "claim_adjustment"
        ]
    );
    assert_eq!(MIGRATIONS.last().map(|(v, _)| *v), Some(SCHEMA_VERSION));
}

/// Every prepared statement names real tables and columns, binds every
/// partition key column with `=` (a single-partition request, no
/// filtering), and writes whole primary keys.
#[test]
fn every_statement_targets_declared_columns_and_whole_partitions() {
    let tables = tables();
    let word_after = |cql: &str, kw: &str| -> String {
        let i = cql.find(kw).unwrap_or_else(|| panic!("no {kw} in {cql}")) + kw.len();
        cql[i..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("ks.")
            .to_owned()
    };
    for (name, raw) in all_statements() {
        let cql = render(raw, "ks");
        let lower = cql.to_ascii_lowercase();
        for bad in FORBIDDEN {
            assert!(!lower.contains(bad), "`{bad}` in {name}");
        }
        let (table, mut used, mut bound): (String, Vec<String>, Vec<String>) =
            if let Some(rest) = cql.strip_prefix("INSERT INTO ks.") {
                let (t, rest) = rest.split_once(" (").unwrap();
                let cols = idents(&rest[..rest.find(')').unwrap()]);
                let values = rest.split("VALUES (").nth(1).unwrap();
                let values = idents(&values[..values.find(')').unwrap()]);
                assert_eq!(cols.len(), values.len(), "{name}: columns vs values");
                (t.to_owned(), cols.clone(), cols)
            } else if let Some(rest) = cql.strip_prefix("SELECT ") {
                let (cols, _) = rest.split_once(" FROM ").unwrap();
                (word_after(&cql, " FROM "), idents(cols), vec![])
            } else if cql.starts_with("UPDATE ") {
                let t = word_after(&cql, "UPDATE ");
                let set = cql.split(" SET ").nth(1).unwrap();
                let set = &set[..set.find(" WHERE ").unwrap()];
                let cols = set
                    .split(',')
                    .map(|a| a.split('=').next().unwrap().trim().to_owned())
                    .collect();
                (t, cols, vec![])
            } else if cql.starts_with("DELETE FROM ") {
                (word_after(&cql, "DELETE FROM "), vec![], vec![])
            } else {
                panic!("unexpected statement {name}: {cql}");
            };
        let t = tables
            .get(&table)
            .unwrap_or_else(|| panic!("{name}: unknown table {table}"));
        if let Some(w) = cql.split(" WHERE ").nth(1) {
            let w = w.split(" IF ").next().unwrap();
            for cond in w.split(" AND ") {
                let col = cond.split_whitespace().next().unwrap().to_owned();
                if cond.contains(" = ") {
                    bound.push(col.clone());
                }
                used.push(col);
            }
        }
        if let Some(cond) = cql.split(" IF ").nth(1) {
            // `IF NOT EXISTS USING TTL ?`: the TTL is no column.
            let cond = cond.split(" USING ").next().unwrap();
            if cond != "NOT EXISTS" && cond != "EXISTS" {
                used.push(cond.split_whitespace().next().unwrap().to_owned());
            }
        }
        for c in &used {
            assert!(t.columns.contains(c), "{name}: {table} has no column {c}");
        }
        for k in &t.partition {
            assert!(
                bound.contains(k),
                "{name}: partition key {k} not bound with ="
            );
        }
        if cql.starts_with("INSERT") || cql.starts_with("UPDATE") || cql.starts_with("DELETE") {
            // A `*_from` delete is a range over the last clustering
            // column (`>=`), inside one fully bound prefix.
            // A rollup partition is rewritten whole: its delete is a
            // partition tombstone (under the rows of the same rewrite).
            // A day's totals: a range tombstone on the day, the first
            // clustering column.
            let whole = if name.ends_with("_from") {
                &t.clustering[..t.clustering.len() - 1]
            } else if name.starts_with("delete_") && name.ends_with("rollups") {
                &t.clustering[..0]
            } else if *name == "delete_rollup_totals" {
                &t.clustering[..1]
            } else if *name == "insert_no_tail" {
                // A visitor without a tail: its static columns alone.
                &t.clustering[..0]
            } else {
                &t.clustering[..]
            };
            for k in whole {
                assert!(bound.contains(k), "{name}: clustering key {k} not bound");
            }
        }
        assert!(
            cql.contains('?'),
            "{name}: every statement takes bound values (token-aware routing)"
        );
    }
}
