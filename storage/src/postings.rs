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

impl Postings {
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
