//! A small fixed-capacity set of recent entries, replaced oldest first: the per-thread
//! caches of decoded block times and of head chunk file windows.

/// At most `N` entries; once full, each new one replaces the oldest.
pub(crate) struct Ring<T, const N: usize> {
    entries: Vec<T>,
    next: usize,
}

impl<T, const N: usize> Ring<T, N> {
    pub(crate) const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: 0,
        }
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.entries.iter()
    }

    /// The entry the next [`Ring::insert`] replaces, when the ring is full.
    pub(crate) fn victim(&mut self) -> Option<&mut T> {
        if self.entries.len() < N {
            None
        } else {
            self.entries.get_mut(self.next)
        }
    }

    pub(crate) fn insert(&mut self, entry: T) {
        if self.entries.len() < N {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % N;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn keeps_the_newest_entries() {
        let mut r: Ring<u32, 3> = Ring::new();
        for i in 0..3 {
            assert!(r.victim().is_none());
            r.insert(i);
        }
        assert_eq!(r.victim().copied(), Some(0));
        r.insert(3);
        r.insert(4);
        let mut kept: Vec<u32> = r.iter().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, [2, 3, 4]);
    }
}
