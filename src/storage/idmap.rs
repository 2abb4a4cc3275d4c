//! A map from tag ids to values, and a set of tag ids, stored densely. Tag
//! ids come from the live database's autoincrement and run 1, 2, 3 … so a
//! vector indexed by id holds 10,000 tags in 10,000 slots, where a hash map
//! would allocate 16,384 buckets plus control bytes, and a set of them is
//! one bit a tag: the biggest per-tag savings in the storage thread (see
//! README: Memory).

/// Where an id lives in every map and set, worked out once when one sample
/// touches several of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl Slot {
    /// `id`'s slot; `None` for ids below 1.
    #[inline(always)]
    pub fn of(id: i64) -> Option<Slot> {
        Some(Slot(usize::try_from(id).ok()?.checked_sub(1)?))
    }
}

/// Values by tag id (ids are positive; the slot is `id - 1`).
#[derive(Debug, Clone)]
pub struct IdMap<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        IdMap {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> IdMap<T> {
    #[inline]
    fn slot(id: i64) -> Option<usize> {
        Slot::of(id).map(|s| s.0)
    }

    /// The value of `id`.
    #[inline]
    pub fn get(&self, id: &i64) -> Option<&T> {
        self.slots.get(Self::slot(*id)?)?.as_ref()
    }

    /// The value of `id`, mutable.
    #[inline]
    pub fn get_mut(&mut self, id: &i64) -> Option<&mut T> {
        self.slots.get_mut(Self::slot(*id)?)?.as_mut()
    }

    /// The value at `slot`, mutable.
    #[inline(always)]
    pub fn at_mut(&mut self, slot: Slot) -> Option<&mut T> {
        self.slots.get_mut(slot.0)?.as_mut()
    }

    /// Sets the value of `id` (ids below 1 are ignored), returning the old one.
    pub fn insert(&mut self, id: i64, value: T) -> Option<T> {
        let i = Self::slot(id)?;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Takes the value of `id` out.
    pub fn remove(&mut self, id: &i64) -> Option<T> {
        let old = self.slots.get_mut(Self::slot(*id)?)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Makes room for ids up to `max_id` exactly (registration knows the
    /// highest id of a batch; growing by doubling would leave up to half
    /// the slots spare).
    pub fn reserve_ids(&mut self, max_id: i64) {
        if let Ok(n) = usize::try_from(max_id)
            && n > self.slots.len()
        {
            self.slots.reserve_exact(n - self.slots.len());
        }
    }

    /// Number of ids with a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id has a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every value, keeping the slots.
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.slots.iter_mut().for_each(|s| *s = None);
            self.len = 0;
        }
    }

    /// (id, value) in id order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as i64 + 1, v)))
    }

    /// (id, value) in id order, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (i64, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|v| (i as i64 + 1, v)))
    }
}

/// A set of tag ids, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    words: Vec<u64>,
    len: usize,
}

impl IdSet {
    /// Adds `id` (ids below 1 are ignored); returns whether it was new.
    #[inline]
    pub fn insert(&mut self, id: i64) -> bool {
        Slot::of(id).is_some_and(|s| self.insert_at(s))
    }

    /// Adds the id at `slot`; returns whether it was new.
    #[inline(always)]
    pub fn insert_at(&mut self, slot: Slot) -> bool {
        let i = slot.0;
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += usize::from(new);
        new
    }

    /// Takes `id` out; returns whether it was in.
    pub fn remove(&mut self, id: i64) -> bool {
        let Some(i) = IdMap::<()>::slot(id) else {
            return false;
        };
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        let was = *word & bit != 0;
        *word &= !bit;
        self.len -= usize::from(was);
        was
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: i64) -> bool {
        IdMap::<()>::slot(id)
            .and_then(|i| self.words.get(i / 64).map(|w| w & (1u64 << (i % 64)) != 0))
            .unwrap_or(false)
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every id, keeping the room.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }

    /// The ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| (w * 64 + b) as i64 + 1)
        })
    }
}

impl FromIterator<i64> for IdSet {
    fn from_iter<I: IntoIterator<Item = i64>>(iter: I) -> Self {
        let mut s = IdSet::default();
        for id in iter {
            s.insert(id);
        }
        s
    }
}

impl<T> FromIterator<(i64, T)> for IdMap<T> {
    fn from_iter<I: IntoIterator<Item = (i64, T)>>(iter: I) -> Self {
        let mut m = IdMap::default();
        for (id, v) in iter {
            m.insert(id, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut m = IdMap::default();
        assert_eq!(m.insert(3, "c"), None);
        assert_eq!(m.insert(1, "a"), None);
        assert_eq!(m.insert(3, "C"), Some("c"));
        assert_eq!(m.insert(0, "zero"), None);
        assert_eq!(m.insert(-5, "neg"), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&3), Some(&"C"));
        assert_eq!(m.get(&2), None);
        assert_eq!(m.get(&99), None);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(1, &"a"), (3, &"C")]);
        assert_eq!(m.remove(&1), Some("a"));
        assert_eq!(m.len(), 1);
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.get(&3), None);
    }

    #[test]
    fn behaves_as_a_set_against_a_btreeset() {
        use std::collections::BTreeSet;
        // Word edges (63, 64, 65, 128), the first id, ids far apart, repeats
        // and ids that are not tag ids (0, negative).
        let ids = [64, 1, 65, 63, 128, 129, 1_000_003, 64, 0, -7, 2, 1];
        let mut set = IdSet::default();
        let mut model = BTreeSet::new();
        for id in ids {
            let expected = id >= 1 && model.insert(id);
            assert_eq!(set.insert(id), expected, "insert {id}");
        }
        assert_eq!(set.len(), model.len());
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        for id in [
            -7,
            0,
            1,
            3,
            62,
            63,
            64,
            66,
            127,
            128,
            1_000_002,
            1_000_003,
            i64::MAX,
        ] {
            assert_eq!(set.contains(id), model.contains(&id), "contains {id}");
        }
        for id in [64, 64, 1, 5, 1_000_003, -7, i64::MAX] {
            assert_eq!(set.remove(id), model.remove(&id), "remove {id}");
            assert_eq!(set.len(), model.len());
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        set.clear();
        assert!(set.is_empty());
        assert_eq!(set.iter().count(), 0);
        assert!(!set.contains(64));
    }
}
