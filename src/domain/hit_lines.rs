//! Hits encoded once: NDJSON, one stamped [`Hit`] per line, the same bytes
//! from `/collect` to the archive.
//!
//! `/collect` encodes each hit once into a [`HitLines`]; the queue stores
//! and delivers those bytes as they are; the archiver sizes, groups and
//! compresses them without decoding a hit; the attributor decodes each
//! line once. The only fields read on the way are a line's [`HitKey`] (id
//! and `received_at`, which name and partition archive objects), parsed
//! without allocating, once: the queue reads them to check a message and
//! the lines keep them for the archiver. A line is exactly what `serde_json` writes for a
//! [`Hit`]: compact JSON, so it never holds a raw newline.
//!
//! This module must never change a line's bytes once encoded: the archive
//! and the queue rely on reading back what was written.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::Hit;

/// What the archive needs of a hit: its id and its server time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitKey {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
}

/// Only the key's fields; every other field is skipped, not built.
#[derive(Deserialize)]
struct KeyWire {
    id: Uuid,
    received_at: DateTime<Utc>,
}

/// A line that is not a hit, and which one (0-based).
#[derive(Debug, thiserror::Error)]
#[error("line {index} is not a hit: {error}")]
pub struct LineError {
    pub index: usize,
    pub error: serde_json::Error,
}

/// NDJSON of hits with each line's end, and the keys of the first lines
/// as far as they are known (so a key read once, when the queue checks a
/// message, is not read again by the archiver).
#[derive(Debug, Clone, Default)]
pub struct HitLines {
    /// Every line followed by `\n`.
    text: Vec<u8>,
    /// `ends[i]`: the offset just past line `i`'s newline.
    ends: Vec<usize>,
    /// `keys[i]`: line `i`'s key, for the first `keys.len()` lines.
    keys: Vec<HitKey>,
}

/// Lines are equal when their bytes are: which keys are known already is
/// a cache, not part of the value.
impl PartialEq for HitLines {
    fn eq(&self, other: &HitLines) -> bool {
        self.text == other.text && self.ends == other.ends
    }
}

impl HitLines {
    pub fn new() -> HitLines {
        HitLines::default()
    }

    /// Encodes hits, one line each.
    pub fn encode(hits: &[Hit]) -> Result<HitLines, serde_json::Error> {
        let mut lines = HitLines {
            // A stamped hit is about 300-500 bytes of JSON.
            text: Vec::with_capacity(hits.len() * 512),
            ends: Vec::with_capacity(hits.len()),
            keys: Vec::with_capacity(hits.len()),
        };
        for hit in hits {
            lines.push(hit)?;
        }
        Ok(lines)
    }

    /// Appends one hit's line.
    pub fn push(&mut self, hit: &Hit) -> Result<(), serde_json::Error> {
        let start = self.text.len();
        if let Err(e) = serde_json::to_writer(&mut self.text, hit) {
            self.text.truncate(start);
            return Err(e);
        }
        self.text.push(b'\n');
        if self.keys.len() == self.ends.len() {
            self.keys.push(HitKey {
                id: hit.id,
                received_at: hit.received_at,
            });
        }
        self.ends.push(self.text.len());
        Ok(())
    }

    /// Appends lines as they are (the NDJSON of another `HitLines`, read
    /// back from the queue). Every line must end with `\n`; returns how
    /// many lines were added, or `None` (and adds nothing) if the text
    /// does not end with one.
    pub fn extend_ndjson(&mut self, ndjson: &[u8]) -> Option<usize> {
        if ndjson.is_empty() {
            return Some(0);
        }
        if ndjson.last() != Some(&b'\n') {
            return None;
        }
        let base = self.text.len();
        self.text.extend_from_slice(ndjson);
        let before = self.ends.len();
        self.ends.extend(
            ndjson
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .map(|(i, _)| base + i + 1),
        );
        Some(self.ends.len() - before)
    }

    /// Appends lines `range` of `other`.
    pub fn extend_from(&mut self, other: &HitLines, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let keyed = self.keys.len() == self.ends.len() && range.end <= other.keys.len();
        let _ = self.extend_ndjson(other.ndjson(range.clone()));
        if keyed {
            self.keys.extend_from_slice(&other.keys[range]);
        }
    }

    /// Keeps the first `n` lines.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.text.truncate(self.start(n));
            self.ends.truncate(n);
            self.keys.truncate(n);
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// Line `i` without its newline.
    pub fn line(&self, i: usize) -> &[u8] {
        &self.text[self.start(i)..self.ends[i] - 1]
    }

    /// The lines without their newlines, in order.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.line(i))
    }

    /// Lines `range` as NDJSON (each with its newline), without copying.
    pub fn ndjson(&self, range: Range<usize>) -> &[u8] {
        if range.is_empty() {
            return &[];
        }
        &self.text[self.start(range.start)..self.ends[range.end - 1]]
    }

    /// The whole NDJSON.
    pub fn as_ndjson(&self) -> &[u8] {
        &self.text
    }

    /// Decodes line `i`.
    pub fn decode_line(&self, i: usize) -> Result<Hit, LineError> {
        serde_json::from_slice(self.line(i)).map_err(|error| LineError { index: i, error })
    }

    /// Decodes every line; the first line that is not a hit fails it.
    pub fn decode(&self) -> Result<Vec<Hit>, LineError> {
        (0..self.len()).map(|i| self.decode_line(i)).collect()
    }

    /// Reads line `i`'s key. Reading a key checks the whole line is JSON
    /// but builds nothing besides the id and the time.
    fn read_key(&self, i: usize) -> Result<HitKey, LineError> {
        serde_json::from_slice::<KeyWire>(self.line(i))
            .map(|k| HitKey {
                id: k.id,
                received_at: k.received_at,
            })
            .map_err(|error| LineError { index: i, error })
    }

    /// Checks that lines `range` are hits as far as their keys go, and
    /// keeps the keys read when they extend the known ones (as they do
    /// when the queue checks the lines it just appended).
    pub fn check_keys(&mut self, range: Range<usize>) -> Result<(), LineError> {
        let keep = range.start <= self.keys.len();
        for i in range {
            let key = self.read_key(i)?;
            if keep && i == self.keys.len() {
                self.keys.push(key);
            }
        }
        Ok(())
    }

    /// Each line's key: those already known, the rest read now (see
    /// [`HitLines::check_keys`]).
    pub fn keys(&self) -> Result<Vec<HitKey>, LineError> {
        let mut keys = Vec::with_capacity(self.len());
        keys.extend_from_slice(&self.keys);
        for i in self.keys.len()..self.len() {
            keys.push(self.read_key(i)?);
        }
        Ok(keys)
    }

    /// How many lines' keys are known without reading them.
    #[cfg(test)]
    pub fn known_keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hit::test_hits;

    #[test]
    fn lines_are_the_hits_json_and_decode_back() {
        let hits = test_hits(3, "r-1");
        let lines = HitLines::encode(&hits).unwrap();
        assert_eq!(lines.len(), 3);
        for (i, hit) in hits.iter().enumerate() {
            assert_eq!(lines.line(i), serde_json::to_vec(hit).unwrap().as_slice());
        }
        assert_eq!(lines.decode().unwrap(), hits);
        let keys = lines.keys().unwrap();
        assert_eq!(keys[1].id, hits[1].id);
        assert_eq!(keys[1].received_at, hits[1].received_at);
        assert_eq!(lines.ndjson(1..3), {
            let mut want = lines.line(1).to_vec();
            want.push(b'\n');
            want.extend_from_slice(lines.line(2));
            want.push(b'\n');
            want
        });
    }

    #[test]
    fn ndjson_read_back_gives_the_same_lines() {
        let hits = test_hits(4, "r-2");
        let lines = HitLines::encode(&hits).unwrap();
        let mut back = HitLines::encode(&hits[..1]).unwrap();
        assert_eq!(back.extend_ndjson(lines.ndjson(1..4)), Some(3));
        assert_eq!(back, lines);
        let mut copy = HitLines::new();
        copy.extend_from(&lines, 0..2);
        copy.extend_from(&lines, 2..4);
        assert_eq!(copy, lines);
        // A cut line is refused whole.
        let whole = lines.as_ndjson();
        assert_eq!(back.extend_ndjson(&whole[..whole.len() - 1]), None);
        assert_eq!(back.len(), 4);
    }

    #[test]
    fn keys_are_read_once_and_kept_through_copies() {
        let hits = test_hits(4, "r-4");
        let lines = HitLines::encode(&hits).unwrap();
        assert_eq!(lines.known_keys(), 4, "encoding knows every key");
        let want = lines.keys().unwrap();
        // Read back as the queue does: appended bytes, then checked.
        let mut back = HitLines::new();
        back.extend_ndjson(lines.as_ndjson()).unwrap();
        assert_eq!(back.known_keys(), 0);
        back.check_keys(0..2).unwrap();
        assert_eq!(back.known_keys(), 2);
        back.check_keys(2..4).unwrap();
        assert_eq!(back.known_keys(), 4);
        assert_eq!(back.keys().unwrap(), want);
        // A gap is not filled out of order, and copies keep what is known.
        let mut gap = HitLines::new();
        gap.extend_ndjson(lines.as_ndjson()).unwrap();
        gap.check_keys(1..4).unwrap();
        assert_eq!(gap.known_keys(), 0);
        assert_eq!(gap.keys().unwrap(), want);
        let mut copy = HitLines::new();
        copy.extend_from(&back, 1..3);
        assert_eq!(copy.known_keys(), 2);
        copy.extend_from(&gap, 3..4);
        assert_eq!(copy.known_keys(), 2);
        assert_eq!(copy.keys().unwrap(), want[1..4]);
        copy.truncate(1);
        assert_eq!(copy.known_keys(), 1);
        assert_eq!(copy.keys().unwrap(), want[1..2]);
    }

    #[test]
    fn a_line_that_is_not_a_hit_is_named() {
        let mut lines = HitLines::encode(&test_hits(1, "r-3")).unwrap();
        lines.extend_ndjson(b"{\"id\":\"x\"}\n").unwrap();
        assert_eq!(lines.keys().unwrap_err().index, 1);
        assert_eq!(lines.decode().unwrap_err().index, 1);
    }
}
