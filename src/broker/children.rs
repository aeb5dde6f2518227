//! The children of a node of a topic trie (the subscription index, the
//! retained tree), by level name, in order.
//!
//! Most trie nodes have one child or a handful: a device's topics share
//! their first levels and then fan out a little. A map per node would cost
//! a whole map allocation even for one child (a `BTreeMap` leaf is about
//! 1 KiB, a `HashMap` a table of four buckets), which a client could make
//! the gateway pay once per level. So a node keeps up to [`FEW`] children
//! in a sorted vector of exactly their size, and only a wider one a map.
//! That bounds what one level of a trie costs, whatever the shape
//! ([`level_cost`]), which is what the ledger charges for it.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;

/// Children kept in a vector, at most.
const FEW: usize = 8;

#[derive(Debug)]
pub enum Children<N> {
    /// Sorted by name, allocated to exactly their number.
    Few(Vec<(Box<str>, N)>),
    Many(BTreeMap<Box<str>, N>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

/// What one child costs at most in its parent, beside its name's bytes:
/// its entry, and its share of the map or vector holding it. A `BTreeMap`
/// node holds 11 entries and, but for the root, never fewer than 5, so
/// an entry's share of its node is under 3 entries' worth; the name's own
/// allocation and the allocator's headers are the rest.
pub const fn level_cost<N>() -> usize {
    3 * std::mem::size_of::<(Box<str>, N)>() + 64
}

/// Where `name` is among sorted children, or would go.
fn position<N>(few: &[(Box<str>, N)], name: &str) -> Result<usize, usize> {
    few.binary_search_by(|(k, _)| (**k).cmp(name))
}

impl<N> Children<N> {
    pub fn len(&self) -> usize {
        match self {
            Children::Few(few) => few.len(),
            Children::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, name: &str) -> Option<&N> {
        match self {
            Children::Few(few) => position(few, name)
                .ok()
                .and_then(|i| few.get(i))
                .map(|(_, n)| n),
            Children::Many(many) => many.get(name),
        }
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut N> {
        match self {
            Children::Few(few) => position(few, name)
                .ok()
                .and_then(|i| few.get_mut(i))
                .map(|(_, n)| n),
            Children::Many(many) => many.get_mut(name),
        }
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The child `name`, made with `N::default()` if missing.
    pub fn get_or_default(&mut self, name: &str) -> &mut N
    where
        N: Default,
    {
        if let Children::Few(few) = self {
            if few.len() >= FEW && position(few, name).is_err() {
                let many: BTreeMap<Box<str>, N> = std::mem::take(few).into_iter().collect();
                *self = Children::Many(many);
            }
        }
        match self {
            Children::Few(few) => {
                let i = match position(few, name) {
                    Ok(i) => i,
                    Err(i) => {
                        // Exactly one more: a vector's doubling would make a
                        // one-child node pay for four.
                        few.reserve_exact(1);
                        few.insert(i, (name.into(), N::default()));
                        i
                    }
                };
                match few.get_mut(i) {
                    Some((_, node)) => node,
                    // `i` was found or inserted just above.
                    None => unreachable!("a child just found or inserted"),
                }
            }
            Children::Many(many) => many.entry(name.into()).or_default(),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<N> {
        let removed = match self {
            Children::Few(few) => {
                let i = position(few, name).ok()?;
                let (_, node) = few.remove(i);
                few.shrink_to_fit();
                Some(node)
            }
            Children::Many(many) => many.remove(name),
        };
        if let Children::Many(many) = self {
            // Back to a vector well below the bound, so that a node
            // hovering around it does not convert back and forth.
            if many.len() <= FEW / 2 {
                let mut few: Vec<(Box<str>, N)> = Vec::with_capacity(many.len());
                few.extend(std::mem::take(many));
                *self = Children::Few(few);
            }
        }
        removed
    }

    /// The first child in order, taken out.
    pub fn pop_first(&mut self) -> Option<(Box<str>, N)> {
        match self {
            Children::Few(few) if few.is_empty() => None,
            Children::Few(few) => Some(few.remove(0)),
            Children::Many(many) => many.pop_first(),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &N> {
        self.range(Bound::Unbounded, Bound::Unbounded)
            .map(|(_, n)| n)
    }

    pub fn into_values(self) -> impl Iterator<Item = N> {
        let (few, many) = match self {
            Children::Few(few) => (Some(few.into_iter().map(|(_, n)| n)), None),
            Children::Many(many) => (None, Some(many.into_values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The children whose names lie between `from` and `to`, in order.
    pub fn range<'a>(&'a self, from: Bound<&str>, to: Bound<&str>) -> Range<'a, N> {
        match self {
            Children::Few(few) => {
                let start = match from {
                    Bound::Included(k) => few.partition_point(|(n, _)| &**n < k),
                    Bound::Excluded(k) => few.partition_point(|(n, _)| &**n <= k),
                    Bound::Unbounded => 0,
                };
                let end = match to {
                    Bound::Included(k) => few.partition_point(|(n, _)| &**n <= k),
                    Bound::Excluded(k) => few.partition_point(|(n, _)| &**n < k),
                    Bound::Unbounded => few.len(),
                };
                Range::Few(few.get(start..end.max(start)).unwrap_or_default().iter())
            }
            Children::Many(many) => {
                // `BTreeMap::range` panics on an empty or inverted pair of
                // bounds; such a range holds nothing anyway.
                let empty = match (from, to) {
                    (
                        Bound::Included(a) | Bound::Excluded(a),
                        Bound::Included(b) | Bound::Excluded(b),
                    ) => {
                        a > b
                            || (a == b
                                && !matches!((from, to), (Bound::Included(_), Bound::Included(_))))
                    }
                    _ => false,
                };
                if empty {
                    Range::Few([].iter())
                } else {
                    Range::Many(many.range::<str, _>((from, to)))
                }
            }
        }
    }
}

/// Children in order, from [`Children::range`].
pub enum Range<'a, N> {
    Few(std::slice::Iter<'a, (Box<str>, N)>),
    Many(btree_map::Range<'a, Box<str>, N>),
}

impl<'a, N> Iterator for Range<'a, N> {
    type Item = (&'a str, &'a N);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Range::Few(few) => few.next().map(|(k, n)| (&**k, n)),
            Range::Many(many) => many.next().map(|(k, n)| (&**k, n)),
        }
    }
}

#[cfg(test)]
mod tests;
