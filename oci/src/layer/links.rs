//! Settling a layer's entries once parsed: the last definition of each path
//! wins, and hard links within the layer name the entry that carries the
//! data.

use std::collections::{BTreeMap, HashMap};

use super::{LinkTo, Pending, Seen};

/// Keeps the last definition of each path, sorted by path, and settles hard
/// links within the layer. An entry is also dropped when a later entry of
/// the layer defined one of its ancestors as a non-directory (tar order: `d/`,
/// `d/x`, then a file `d` leaves only the file).
///
/// A link names the entry its target path held when the link was read. When
/// that entry was superseded later at its own path, its data lives on under
/// the link names. Of each link group the smallest path carries the data
/// and the others link to it: which name a tar writer gives the data to
/// depends on its directory walk, and the chunk stream must not.
pub(super) fn settle_links(
    entries: Vec<(Vec<u8>, Pending)>,
    seen: &HashMap<Vec<u8>, Seen>,
) -> Vec<(Vec<u8>, Pending)> {
    let alive = |i: usize| {
        let path = &entries[i].0;
        seen.get(path).map(|d| d.latest) == Some(i)
            && !path.iter().enumerate().any(|(k, &b)| {
                b == b'/'
                    && seen
                        .get(&path[..k])
                        .and_then(|d| d.nondir)
                        .is_some_and(|n| n > i)
            })
    };
    // Data entry (tar index) -> surviving links to it.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (_, p)) in entries.iter().enumerate() {
        if let Pending::Link(LinkTo::Entry(j)) = p {
            if alive(i) {
                groups.entry(*j).or_default().push(i);
            }
        }
    }
    let alive: Vec<bool> = (0..entries.len()).map(alive).collect();
    let mut slots: Vec<Option<(Vec<u8>, Pending)>> = entries.into_iter().map(Some).collect();
    let path_of = |slots: &[Option<(Vec<u8>, Pending)>], i: usize| {
        slots[i].as_ref().expect("present").0.clone()
    };
    for (data, links) in groups {
        let owner = links
            .iter()
            .copied()
            .chain(alive[data].then_some(data))
            .min_by(|&a, &b| path_of(&slots, a).cmp(&path_of(&slots, b)))
            .expect("a group has a link");
        let owner_path = path_of(&slots, owner);
        if owner != data {
            let taken = std::mem::replace(
                &mut slots[data].as_mut().expect("present").1,
                Pending::Link(LinkTo::Path(owner_path.clone())),
            );
            slots[owner].as_mut().expect("present").1 = taken;
        }
        for l in links.into_iter().filter(|&l| l != owner) {
            slots[l].as_mut().expect("present").1 = Pending::Link(LinkTo::Path(owner_path.clone()));
        }
    }
    let mut out: Vec<(Vec<u8>, Pending)> = slots
        .into_iter()
        .zip(alive)
        .filter_map(|(s, a)| if a { s } else { None })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
