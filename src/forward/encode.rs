//! Remote-write request bodies (before snappy): `prometheus.WriteRequest` (1.0) and
//! `io.prometheus.write.v2.Request` (2.0), written straight from a batch without an
//! intermediate message tree.

use std::collections::HashMap;

use super::{Batch, IdMap, SeriesEntry};

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    out.push(field << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// `prometheus.Label` messages of a series, each as field 1 of a `TimeSeries`: encoded once
/// per series and copied into every request that carries it.
pub(crate) fn v1_labels(labels: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut msg = Vec::new();
    for (k, v) in labels {
        msg.clear();
        put_bytes(&mut msg, 1, k.as_bytes());
        put_bytes(&mut msg, 2, v.as_bytes());
        put_bytes(&mut out, 1, &msg);
    }
    out
}

/// A `Sample` message body: value (field 1, double) and timestamp (field 2, int64).
fn sample(out: &mut Vec<u8>, t: i64, v: f64) {
    out.push(0x09);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
    out.push(0x10);
    put_varint(out, t as u64);
}

fn sample_len(t: i64) -> usize {
    1 + 8 + 1 + varint_len(t as u64)
}

/// The batch's samples grouped by series, each series' samples in log order.
fn by_series(batch: &Batch) -> Vec<(&SeriesEntry, Vec<(i64, f64)>)> {
    let mut index: IdMap<*const SeriesEntry, usize> = IdMap::default();
    index.reserve(batch.len());
    let mut out: Vec<(&SeriesEntry, Vec<(i64, f64)>)> = Vec::new();
    for (s, t, v) in batch {
        let key = std::sync::Arc::as_ptr(s);
        let i = *index.entry(key).or_insert_with(|| {
            out.push((s, Vec::new()));
            out.len() - 1
        });
        out[i].1.push((*t, *v));
    }
    out
}

/// A `prometheus.WriteRequest`: one `TimeSeries` (field 1) per series of the batch.
pub(crate) fn v1(batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    for (s, samples) in by_series(batch) {
        let body_len = s.v1_labels.len()
            + samples
                .iter()
                .map(|&(t, _)| {
                    let n = sample_len(t);
                    1 + varint_len(n as u64) + n
                })
                .sum::<usize>();
        out.push(1 << 3 | 2);
        put_varint(out, body_len as u64);
        out.extend_from_slice(&s.v1_labels);
        for (t, v) in samples {
            out.push(2 << 3 | 2);
            put_varint(out, sample_len(t) as u64);
            sample(out, t, v);
        }
    }
}

/// An `io.prometheus.write.v2.Request`: the symbol table (field 4, starting with "") and
/// one `TimeSeries` (field 5) per series, its labels as symbol references.
pub(crate) fn v2(batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    let groups = by_series(batch);
    let mut symbols: HashMap<&str, u32> = HashMap::new();
    let mut table: Vec<&str> = vec![""];
    symbols.insert("", 0);
    let mut refs: Vec<Vec<u32>> = Vec::with_capacity(groups.len());
    for (s, _) in &groups {
        let mut r = Vec::with_capacity(s.labels.len() * 2);
        for (k, v) in &s.labels {
            for sym in [k.as_str(), v.as_str()] {
                let id = *symbols.entry(sym).or_insert_with(|| {
                    table.push(sym);
                    (table.len() - 1) as u32
                });
                r.push(id);
            }
        }
        refs.push(r);
    }
    for sym in &table {
        put_bytes(out, 4, sym.as_bytes());
    }
    let mut ts = Vec::new();
    let mut packed = Vec::new();
    for ((_, samples), r) in groups.iter().zip(&refs) {
        ts.clear();
        packed.clear();
        for &id in r {
            put_varint(&mut packed, id as u64);
        }
        put_bytes(&mut ts, 1, &packed);
        for &(t, v) in samples {
            ts.push(2 << 3 | 2);
            put_varint(&mut ts, sample_len(t) as u64);
            sample(&mut ts, t, v);
        }
        put_bytes(out, 5, &ts);
    }
}
