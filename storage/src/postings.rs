//! The inverted index shared by the head and blocks: for each label pair, the bitmap of
//! series references that carry it.

use std::collections::HashMap;
use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::labels::Labels;
use crate::matcher::Matcher;
use crate::SeriesRef;

/// An inverted index: label name → value → bitmap of series references.
#[derive(Default)]
pub(crate) struct Postings {
    by_label: HashMap<Arc<str>, HashMap<Arc<str>, RoaringBitmap>>,
    all: RoaringBitmap,
}

/// Cardinality figures, each list sorted by count (descending) then name, cut to a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostingsStats {
    /// Series per metric name.
    pub series_by_metric_name: Vec<(String, u64)>,
    /// Distinct values per label name.
    pub values_by_label_name: Vec<(String, u64)>,
    /// Total bytes of the distinct values per label name.
    pub bytes_by_label_name: Vec<(String, u64)>,
    /// Series per `name=value` pair.
    pub series_by_pair: Vec<(String, u64)>,
}

fn top(mut v: Vec<(String, u64)>, limit: usize) -> Vec<(String, u64)> {
    v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}

impl Postings {
    /// Series carrying the pair `name=value`.
    pub(crate) fn count(&self, name: &str, value: &str) -> u64 {
        self.by_label
            .get(name)
            .and_then(|m| m.get(value))
            .map_or(0, RoaringBitmap::len)
    }

    pub(crate) fn stats(&self, limit: usize) -> PostingsStats {
        let mut by_metric = Vec::new();
        let mut values = Vec::new();
        let mut bytes = Vec::new();
        let mut pairs = Vec::new();
        for (name, vals) in &self.by_label {
            values.push((name.to_string(), vals.len() as u64));
            bytes.push((name.to_string(), vals.keys().map(|v| v.len() as u64).sum()));
            for (value, p) in vals {
                if &**name == crate::METRIC_NAME {
                    by_metric.push((value.to_string(), p.len()));
                }
                pairs.push((format!("{name}={value}"), p.len()));
            }
        }
        PostingsStats {
            series_by_metric_name: top(by_metric, limit),
            values_by_label_name: top(values, limit),
            bytes_by_label_name: top(bytes, limit),
            series_by_pair: top(pairs, limit),
        }
    }

    /// Label names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_label.keys().map(|k| k.to_string()).collect();
        v.sort_unstable();
        v
    }

    /// Values of one label, sorted.
    pub(crate) fn values(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_label
            .get(name)
            .map(|m| m.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Adds a whole bitmap for one label pair (a block's serialized postings).
    pub(crate) fn insert_bitmap(&mut self, name: Arc<str>, value: Arc<str>, bitmap: RoaringBitmap) {
        *self
            .by_label
            .entry(name)
            .or_default()
            .entry(value)
            .or_default() |= bitmap;
    }

    /// Declares the series `0..n` as every series there is.
    pub(crate) fn set_all(&mut self, n: u32) {
        self.all = RoaringBitmap::new();
        self.all.insert_range(0..n);
    }

    /// Removes a series; label values and names left without series go too.
    pub(crate) fn remove(&mut self, r: SeriesRef, labels: &Labels) {
        for l in labels {
            if let Some(values) = self.by_label.get_mut(&*l.name) {
                if let Some(p) = values.get_mut(&*l.value) {
                    p.remove(r.0);
                    if p.is_empty() {
                        values.remove(&*l.value);
                    }
                }
                if values.is_empty() {
                    self.by_label.remove(&*l.name);
                }
            }
        }
        self.all.remove(r.0);
    }

    pub(crate) fn add(&mut self, r: SeriesRef, labels: &Labels) {
        for l in labels {
            self.by_label
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default()
                .insert(r.0);
        }
        self.all.insert(r.0);
    }

    /// The series whose labels satisfy every matcher.
    pub(crate) fn select(&self, matchers: &[Matcher]) -> RoaringBitmap {
        let mut result: Option<RoaringBitmap> = None;
        let empty = HashMap::new();
        for m in matchers {
            let values = self.by_label.get(m.name.as_str()).unwrap_or(&empty);
            let set = if m.matches("") {
                // Series without the label match; subtract those whose value does not.
                let mut excluded = RoaringBitmap::new();
                for (v, p) in values {
                    if !m.matches(v) {
                        excluded |= p;
                    }
                }
                match &result {
                    Some(r) => r - &excluded,
                    None => &self.all - &excluded,
                }
            } else {
                let mut included = RoaringBitmap::new();
                if let (crate::MatchKind::Equal, Some(p)) = (&m.kind, values.get(m.value.as_str()))
                {
                    included |= p;
                } else if !matches!(m.kind, crate::MatchKind::Equal) {
                    for (v, p) in values {
                        if m.matches(v) {
                            included |= p;
                        }
                    }
                }
                match &result {
                    Some(r) => r & &included,
                    None => included,
                }
            };
            if set.is_empty() {
                return set;
            }
            result = Some(set);
        }
        result.unwrap_or_else(|| self.all.clone())
    }
}
