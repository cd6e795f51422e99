//! Label sets: the identity of a series.
//!
//! A [`Labels`] is a list of `(name, value)` pairs sorted by name with unique names. Labels
//! with an empty value are equivalent to absent labels and are never stored.

use std::fmt;
use std::sync::Arc;

/// The label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

/// One `name="value"` pair. The strings are shared: cloning a label, or a label set,
/// copies no text, and the head interns them so that each distinct string is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label {
    pub name: Arc<str>,
    pub value: Arc<str>,
}

/// By name, then value. Strings the head interns are often the very same allocation,
/// which settles a comparison without reading the text (equality does so already).
impl Ord for Label {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let by = |a: &Arc<str>, b: &Arc<str>| {
            if Arc::ptr_eq(a, b) {
                std::cmp::Ordering::Equal
            } else {
                a.cmp(b)
            }
        };
        by(&self.name, &other.name).then_with(|| by(&self.value, &other.value))
    }
}

impl PartialOrd for Label {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Label {
    pub fn new(name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A sorted set of labels with unique names. Shared: a clone is a reference count, not
/// a copy (a query hands the same set from the head to its output); a change makes a new
/// set. `None` is the empty set, so that one costs no allocation.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Option<Arc<[Label]>>);

/// Label by label, as the sorted slices they are (the empty set first). Two handles of
/// one shared set are equal without a look at the labels.
impl Ord for Labels {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.same_set(other) {
            return std::cmp::Ordering::Equal;
        }
        self.as_slice().cmp(other.as_slice())
    }
}

impl PartialOrd for Labels {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Labels").field(&self.as_slice()).finish()
    }
}

impl Labels {
    /// An empty label set.
    pub const fn empty() -> Self {
        Self(None)
    }

    /// Starts loading the set (its reference count and first labels) into the cache.
    #[inline]
    pub fn prefetch(&self) {
        if let Some(set) = &self.0 {
            let at = Arc::as_ptr(set).cast::<u8>();
            crate::prefetch(at.wrapping_sub(16));
            crate::prefetch(at.wrapping_add(48));
        }
    }

    /// Whether both are handles of one shared set (or both empty): equal for certain,
    /// though equal sets need not be shared.
    #[inline]
    pub fn same_set(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The address of the shared set, which identifies it while it lives (`None` for the
    /// empty set).
    #[inline]
    pub(crate) fn set_address(&self) -> Option<usize> {
        self.0
            .as_ref()
            .map(|a| Arc::as_ptr(a) as *const Label as usize)
    }

    /// A set of sorted labels with unique names and no empty values.
    fn wrap(v: Vec<Label>) -> Self {
        Self((!v.is_empty()).then(|| v.into()))
    }

    /// Changes the set through a vector of its labels.
    fn edit(&mut self, f: impl FnOnce(&mut Vec<Label>)) {
        let mut v = self.as_slice().to_vec();
        f(&mut v);
        *self = Self::wrap(v);
    }

    /// Builds a label set from pairs in any order. Empty values are dropped; when a name
    /// repeats, the last pair wins (callers that must reject duplicates check first with
    /// [`Labels::duplicate_name`]).
    pub fn from_pairs<N: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label::new(n, v))
            .filter(|l| !l.value.is_empty())
            .collect();
        Self::normalize(&mut v);
        Self::wrap(v)
    }

    /// Replaces every string with the interned copy `intern` returns for it.
    pub(crate) fn intern(&mut self, mut intern: impl FnMut(&Arc<str>) -> Arc<str>) {
        let mut each = |l: &mut Label| {
            l.name = intern(&l.name);
            l.value = intern(&l.value);
        };
        // A set just built is held once: its labels change in place.
        match self.0.as_mut().and_then(Arc::get_mut) {
            Some(unique) => unique.iter_mut().for_each(each),
            None => self.edit(|v| v.iter_mut().for_each(&mut each)),
        }
    }

    /// Takes ownership of a vector of labels, sorting it and dropping empty values.
    pub fn from_vec(mut v: Vec<Label>) -> Self {
        v.retain(|l| !l.value.is_empty());
        Self::normalize(&mut v);
        Self::wrap(v)
    }

    fn normalize(v: &mut Vec<Label>) {
        // Stable sort keeps the input order among equal names, so dedup keeping the last
        // occurrence means "last pair wins".
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.reverse();
        v.dedup_by(|a, b| a.name == b.name);
        v.reverse();
    }

    /// The first name that occurs twice in `names`, if any.
    pub fn duplicate_name<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let mut sorted: Vec<&str> = names.into_iter().collect();
        sorted.sort_unstable();
        sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let s = self.as_slice();
        s.binary_search_by(|l| (*l.name).cmp(name))
            .ok()
            .map(|i| &*s[i].value)
    }

    /// The metric name, if the set has one.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.as_slice().iter()
    }

    pub fn as_slice(&self) -> &[Label] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// Sets `name` to `value`, or removes it when `value` is empty.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.as_slice().binary_search_by(|l| (*l.name).cmp(name)) {
            Ok(i) if value.is_empty() => self.edit(|v| {
                v.remove(i);
            }),
            Ok(i) => self.edit(|v| v[i].value = value.into()),
            Err(_) if value.is_empty() => {}
            Err(i) => self.edit(|v| v.insert(i, Label::new(name, value))),
        }
    }

    /// Removes `name` if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.as_slice().binary_search_by(|l| (*l.name).cmp(name)) {
            self.edit(|v| {
                v.remove(i);
            });
        }
    }

    /// Keeps only the labels for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Label) -> bool) {
        if !self.iter().all(&mut keep) {
            // `keep` sees each label once more; callers' predicates are pure.
            self.edit(|v| v.retain(|l| keep(l)));
        }
    }

    /// A 64-bit hash of the whole set, stable within a process run. Collisions are possible
    /// and handled by the callers that index by it.
    pub fn stable_hash(&self) -> u64 {
        hash_pairs(self.iter().map(|l| (&*l.name, &*l.value)))
    }

    /// Whether the set equals these `(name, value)` pairs, in order.
    pub fn eq_pairs(&self, pairs: &[(&str, &str)]) -> bool {
        self.len() == pairs.len()
            && self
                .iter()
                .zip(pairs)
                .all(|(l, (n, v))| &*l.name == *n && &*l.value == *v)
    }
}

impl Labels {
    /// Formats every label inside the braces, the metric name included:
    /// `{__name__="up", job="a"}`.
    pub fn to_braced_string(&self) -> String {
        let parts: Vec<String> = self
            .iter()
            .map(|l| format!("{}={:?}", l.name, l.value))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

impl fmt::Display for Labels {
    /// Formats as `name{a="b", c="d"}`, the way Prometheus prints series.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        if let Some(n) = name {
            f.write_str(n)?;
        }
        let mut first = true;
        f.write_str("{")?;
        for l in self.iter().filter(|l| &*l.name != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// The hash [`Labels::stable_hash`] gives for a label set of these labels: a subset of
/// a set's labels is hashed without building it.
pub fn hash_labels<'a>(labels: impl Iterator<Item = &'a Label>) -> u64 {
    hash_pairs(labels.map(|l| (&*l.name, &*l.value)))
}

/// The hash [`Labels::stable_hash`] gives for the same pairs.
pub(crate) fn hash_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = Hash64::new();
    for (n, v) in pairs {
        h.write(n.as_bytes());
        h.write_sep();
        h.write(v.as_bytes());
        h.write_sep();
    }
    h.finish()
}

/// A `HashMap` hasher for integer keys — label hashes, series references, pointers — with
/// one multiplication: SipHash showed in profiles of the write and forwarding paths. Keys
/// come from this process, not from requests, so flooding a bucket is not a concern.
#[derive(Default, Clone, Copy)]
pub struct MixHasher(u64);

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n ^ (n >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

/// Builds [`MixHasher`]s.
pub type MixState = std::hash::BuildHasherDefault<MixHasher>;

/// A small, fast, non-cryptographic 64-bit hash (multiply-xorshift over 8-byte words).
pub(crate) struct Hash64 {
    state: u64,
}

impl Hash64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    pub(crate) fn new() -> Self {
        Self {
            state: 0x243F_6A88_85A3_08D3,
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(Self::K).rotate_left(29);
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    pub(crate) fn write_u64(&mut self, word: u64) {
        self.mix(word);
    }

    pub(crate) fn write_sep(&mut self) {
        self.mix(0xFF);
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut x = self.state;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_and_drops_empty_values() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("c", "")]);
        assert_eq!(l.as_slice(), &[Label::new("a", "1"), Label::new("b", "2")]);
    }

    #[test]
    fn clones_share_and_changes_make_a_new_set() {
        let a = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let mut b = a.clone();
        assert!(std::ptr::eq(a.as_slice(), b.as_slice()));
        b.set("job", "b");
        b.set("zone", "z");
        assert_eq!(a.get("job"), Some("a"));
        assert_eq!(b.get("job"), Some("b"));
        assert_eq!(a.len(), 2);
        b.remove("__name__");
        b.retain(|l| &*l.name != "zone");
        assert_eq!(b, Labels::from_pairs([("job", "b")]));
        b.set("job", "");
        // Emptied, the set equals and sorts with the empty set.
        assert!(b.is_empty());
        assert_eq!(b, Labels::empty());
        assert_eq!(b, Labels::from_vec(Vec::new()));
        assert!(Labels::empty() < a);
        assert_eq!(format!("{b:?}"), "Labels([])");
    }

    #[test]
    fn last_pair_wins_on_repeat() {
        let l = Labels::from_pairs([("a", "1"), ("a", "2")]);
        assert_eq!(l.get("a"), Some("2"));
        assert_eq!(Labels::duplicate_name(["x", "a", "x"]), Some("x"));
        assert_eq!(Labels::duplicate_name(["x", "a"]), None);
    }

    #[test]
    fn set_and_remove() {
        let mut l = Labels::from_pairs([("a", "1")]);
        l.set("b", "2");
        l.set("a", "");
        assert_eq!(l, Labels::from_pairs([("b", "2")]));
        l.remove("b");
        assert!(l.is_empty());
    }

    #[test]
    fn display_like_prometheus() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a\"b")]);
        assert_eq!(l.to_string(), r#"up{job="a\"b"}"#);
    }

    #[test]
    fn hash_separates_name_and_value() {
        let a = Labels::from_pairs([("ab", "c")]);
        let b = Labels::from_pairs([("a", "bc")]);
        assert_ne!(a.stable_hash(), b.stable_hash());
        assert_eq!(a.stable_hash(), a.clone().stable_hash());
    }
}
