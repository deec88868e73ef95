//! The archive's object format, shared by every archive adapter.
//!
//! Objects are gzipped NDJSON, one stamped [`Hit`] per line, keyed
//! `dt=YYYY-MM-DD/hh=HH/<first-hit-id>-<n>.ndjson.gz` (relative to the
//! adapter's root or prefix) by the hits' UTC `received_at`. The key is a
//! pure function of the hits, so rewriting a batch after a crash replaces
//! the object instead of adding a copy. Readers should still dedup by `id`
//! (a RabbitMQ redelivery can regroup hits).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Range;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Timelike, Utc};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::ArchiveError;
use crate::domain::{Hit, HitKey, HitLines};

/// One object to write: its key and its NDJSON, as runs of consecutive
/// lines of the batch (one run when the batch is in one partition).
#[derive(Debug)]
pub struct Object<'a> {
    pub key: String,
    runs: Vec<&'a [u8]>,
}

/// The partition (day and hour prefix) a hit belongs to.
pub fn partition(hit: &Hit) -> String {
    partition_at(hit.received_at)
}

/// The partition of a hit received at `at`.
pub fn partition_at(at: DateTime<Utc>) -> String {
    format!("dt={}/hh={:02}/", at.date_naive(), at.hour())
}

/// The prefix under which one UTC day's objects live.
pub fn day_prefix(day: NaiveDate) -> String {
    format!("dt={day}/")
}

/// Splits lines `range` of a batch (in queue order; `keys[i]` is line
/// `i`'s key) into one object per partition. The lines are the bytes the
/// queue delivered: an object is written without decoding a hit.
pub fn objects<'a>(keys: &[HitKey], lines: &'a HitLines, range: Range<usize>) -> Vec<Object<'a>> {
    // Per partition: the id of its first hit (it names the object), its
    // runs of consecutive lines and how many lines.
    let mut by_partition: BTreeMap<String, (uuid::Uuid, Vec<Range<usize>>, usize)> =
        BTreeMap::new();
    for i in range {
        let key = &keys[i];
        let (_, runs, n) = by_partition
            .entry(partition_at(key.received_at))
            .or_insert_with(|| (key.id, Vec::new(), 0));
        match runs.last_mut() {
            Some(run) if run.end == i => run.end = i + 1,
            _ => runs.push(i..i + 1),
        }
        *n += 1;
    }
    by_partition
        .into_iter()
        .map(|(part, (first, runs, n))| Object {
            key: format!("{part}{first}-{n}.ndjson.gz"),
            runs: runs.into_iter().map(|r| lines.ndjson(r)).collect(),
        })
        .collect()
}

/// Gzipped NDJSON of the object's lines.
///
/// The NDJSON is compressed with one write: flate2 zero-fills the
/// output's spare capacity on every `write`, so streaming each small line
/// into the encoder spent more time in `memset` than in deflate. An object
/// in one run (the usual case) is compressed straight from the batch's
/// bytes; several runs are joined first.
pub fn encode(object: &Object<'_>) -> Result<Bytes, ArchiveError> {
    let joined;
    let ndjson: &[u8] = match object.runs.as_slice() {
        [one] => one,
        runs => {
            joined = runs.concat();
            &joined
        }
    };
    // NDJSON of hits compresses about 10:1.
    let mut gz = GzEncoder::new(
        Vec::with_capacity(ndjson.len() / 8 + 64),
        Compression::default(),
    );
    gz.write_all(ndjson)?;
    Ok(Bytes::from(gz.finish()?))
}

/// Reads the hits of one object. Blank lines are skipped; a line that is
/// not a hit makes the whole object unreadable (it was not ours).
pub fn decode(body: &[u8]) -> Result<Vec<Hit>, ArchiveError> {
    let mut text = String::new();
    MultiGzDecoder::new(body)
        .read_to_string(&mut text)
        .map_err(|e| ArchiveError::Corrupt(format!("not gzip NDJSON: {e}")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| ArchiveError::Corrupt(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RawHit, Stamp};
    use chrono::{TimeZone, Utc};

    fn hit_at(h: u32) -> Hit {
        let raw = RawHit {
            site: Some("s".into()),
            url: Some("https://x.example/?gclid=1".into()),
            ..Default::default()
        };
        let stamp = Stamp {
            received_at: Utc.with_ymd_and_hms(2026, 11, 20, h, 59, 0).unwrap(),
            user_agent: None,
            ip: None,
            request_id: None,
            keep_full_ip: false,
        };
        Hit::stamp(raw, &stamp).unwrap()
    }

    #[test]
    fn hits_split_by_hour_and_round_trip() {
        let hits = vec![hit_at(9), hit_at(10), hit_at(9)];
        let lines = HitLines::encode(&hits).unwrap();
        let keys = lines.keys().unwrap();
        let objs = objects(&keys, &lines, 0..3);
        assert_eq!(objs.len(), 2);
        assert_eq!(
            objs[0].key,
            format!("dt=2026-11-20/hh=09/{}-2.ndjson.gz", hits[0].id)
        );
        assert_eq!(
            objs[1].key,
            format!("dt=2026-11-20/hh=10/{}-1.ndjson.gz", hits[1].id)
        );
        let body = encode(&objs[0]).unwrap();
        assert_eq!(
            decode(&body).unwrap(),
            vec![hits[0].clone(), hits[2].clone()]
        );
    }

    #[test]
    fn an_object_in_one_run_is_the_batch_bytes_gzipped() {
        let hits = vec![hit_at(9), hit_at(9), hit_at(10)];
        let lines = HitLines::encode(&hits).unwrap();
        let keys = lines.keys().unwrap();
        let objs = objects(&keys, &lines, 1..3);
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].runs, vec![lines.ndjson(1..2)]);
        let mut text = Vec::new();
        MultiGzDecoder::new(&encode(&objs[1]).unwrap()[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, lines.ndjson(2..3));
    }

    #[test]
    fn garbage_is_reported_not_skipped() {
        assert!(decode(b"not gzip").is_err());
    }
}
