use super::*;
use proptest::prelude::*;
use std::ops::RangeBounds;

proptest! {
    /// Whatever the sequence of inserts and removals, the children behave
    /// as an ordered map, in both forms and across the switch between them.
    #[test]
    fn children_behave_as_an_ordered_map(
        ops in prop::collection::vec((any::<bool>(), 0u8..24), 0..200),
        from in 0u8..24,
        to in 0u8..24,
    ) {
        let mut children: Children<u32> = Children::default();
        let mut model: BTreeMap<Box<str>, u32> = BTreeMap::new();
        for (insert, key) in ops {
            let name = format!("k{key:02}");
            if insert {
                *children.get_or_default(&name) += 1;
                *model.entry(name.into()).or_default() += 1;
            } else {
                prop_assert_eq!(children.remove(&name), model.remove(name.as_str()));
            }
            prop_assert_eq!(children.len(), model.len());
        }
        let (from, to) = (format!("k{from:02}"), format!("k{to:02}"));
        for (lo, hi) in [
            (Bound::Included(from.as_str()), Bound::Excluded(to.as_str())),
            (Bound::Included(from.as_str()), Bound::Included(to.as_str())),
            (Bound::Excluded(from.as_str()), Bound::Unbounded),
            (Bound::Unbounded, Bound::Unbounded),
        ] {
            let got: Vec<(&str, &u32)> = children.range(lo, hi).collect();
            let want: Vec<(&str, &u32)> = model
                .iter()
                .filter(|(k, _)| {
                    let k: &str = k;
                    RangeBounds::<&str>::contains(&(lo, hi), &k)
                })
                .map(|(k, v)| (&**k, v))
                .collect();
            prop_assert_eq!(got, want);
        }
        for (k, v) in &model {
            prop_assert_eq!(children.get(k), Some(v));
        }
    }
}

#[test]
fn one_child_allocates_one_entry() {
    let mut children: Children<u64> = Children::default();
    children.get_or_default("a");
    let Children::Few(few) = &children else {
        panic!("one child in a vector");
    };
    assert_eq!(few.capacity(), 1);
}
