//! A map from tag ids to values, stored densely. Tag ids come from the live
//! database's autoincrement and run 1, 2, 3 … so a vector indexed by id
//! holds 10,000 tags in 10,000 slots, where a hash map would allocate
//! 16,384 buckets plus control bytes: the biggest per-tag saving in the
//! storage thread (see README: Memory).

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
    fn slot(id: i64) -> Option<usize> {
        usize::try_from(id).ok()?.checked_sub(1)
    }

    /// The value of `id`.
    pub fn get(&self, id: &i64) -> Option<&T> {
        self.slots.get(Self::slot(*id)?)?.as_ref()
    }

    /// The value of `id`, mutable.
    pub fn get_mut(&mut self, id: &i64) -> Option<&mut T> {
        self.slots.get_mut(Self::slot(*id)?)?.as_mut()
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
}
