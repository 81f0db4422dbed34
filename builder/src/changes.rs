//! What changed between two maps keyed alike: an entry added, changed or
//! removed. `--explain` names the files a copy changed with it and
//! `--verify` the files two builds' layers differ in.

use std::collections::BTreeMap;

/// One difference between an old and a new map.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a, K, V> {
    /// Only in the new map.
    Added(&'a K),
    /// In both, with the old and the new value.
    Changed(&'a K, &'a V, &'a V),
    /// Only in the old map.
    Removed(&'a K),
}

/// The differences from `old` to `new`: the added and changed entries in
/// the order of `new`, then the removed ones in the order of `old`.
pub fn changes<'a, K: Ord, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> Vec<Change<'a, K, V>> {
    let mut out = Vec::new();
    for (key, value) in new {
        match old.get(key) {
            None => out.push(Change::Added(key)),
            Some(before) if before != value => out.push(Change::Changed(key, before, value)),
            Some(_) => {}
        }
    }
    out.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(Change::Removed),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_changed_removed_in_order() {
        let old: BTreeMap<&str, u8> = [("a", 1), ("b", 2), ("c", 3)].into();
        let new: BTreeMap<&str, u8> = [("a", 1), ("b", 9), ("d", 4)].into();
        assert_eq!(
            changes(&old, &new),
            vec![
                Change::Changed(&"b", &2, &9),
                Change::Added(&"d"),
                Change::Removed(&"c"),
            ]
        );
        assert!(changes(&old, &old).is_empty());
    }
}
