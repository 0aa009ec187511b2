//! The decompressed-chunk cache shared by every open file of a mount (and by
//! every mount of one process): a byte-bounded LRU keyed by chunk id, so
//! images that share a chunk share its cache entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use puzzle_chunker::ChunkId;

/// A byte-bounded least-recently-used map from chunk id to its verified bytes.
pub struct ChunkCache {
    inner: Mutex<Lru>,
    capacity: usize,
}

struct Lru {
    /// id -> (data, last-use tick)
    map: HashMap<ChunkId, (Arc<Vec<u8>>, u64)>,
    /// last-use tick -> id, oldest first
    order: BTreeMap<u64, ChunkId>,
    tick: u64,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunk data (at least one
    /// chunk is always kept, whatever its size).
    pub fn new(capacity: usize) -> Self {
        ChunkCache {
            inner: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic while holding the lock cannot leave the map inconsistent
        // in a way that matters more than losing the cache: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached bytes of `id`, marking them most recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut g = self.lock();
        let lru = &mut *g;
        lru.tick += 1;
        let tick = lru.tick;
        let (data, last) = lru.map.get_mut(id)?;
        lru.order.remove(last);
        *last = tick;
        lru.order.insert(tick, *id);
        Some(data.clone())
    }

    /// Whether `id` is cached (without marking it used).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.lock().map.contains_key(id)
    }

    /// Adds verified bytes for `id`, evicting the least recently used.
    pub fn insert(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut g = self.lock();
        let lru = &mut *g;
        lru.tick += 1;
        let tick = lru.tick;
        let len = data.len();
        if let Some((_, last)) = lru.map.insert(id, (data, tick)) {
            lru.order.remove(&last);
        } else {
            lru.bytes += len;
        }
        lru.order.insert(tick, id);
        while lru.bytes > self.capacity && lru.map.len() > 1 {
            let Some((_, old)) = lru.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = lru.map.remove(&old) {
                lru.bytes -= d.len();
            }
        }
    }

    /// Bytes of chunk data held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Chunks held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> (ChunkId, Arc<Vec<u8>>) {
        let d = vec![n; len];
        (ChunkId::of(&d), Arc::new(d))
    }

    #[test]
    fn evicts_least_recently_used_within_the_byte_bound() {
        let c = ChunkCache::new(300);
        let (a, da) = chunk(1, 100);
        let (b, db) = chunk(2, 100);
        let (x, dx) = chunk(3, 100);
        let (y, dy) = chunk(4, 100);
        c.insert(a, da);
        c.insert(b, db);
        c.insert(x, dx);
        assert_eq!(c.bytes(), 300);
        assert!(c.get(&a).is_some()); // a is now the most recent
        c.insert(y, dy);
        assert_eq!(c.bytes(), 300);
        assert!(c.get(&b).is_none(), "b was least recently used");
        assert!(c.get(&a).is_some() && c.get(&x).is_some() && c.get(&y).is_some());
    }

    #[test]
    fn reinsert_does_not_double_count_and_one_big_chunk_stays() {
        let c = ChunkCache::new(50);
        let (a, da) = chunk(1, 100);
        c.insert(a, da.clone());
        c.insert(a, da);
        assert_eq!((c.len(), c.bytes()), (1, 100));
        let (b, db) = chunk(2, 10);
        c.insert(b, db);
        assert_eq!(c.len(), 1);
        assert!(c.get(&b).is_some());
    }
}
