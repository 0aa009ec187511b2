//! The decompressed-frame cache shared by every open file of a mount (and by
//! every mount of one process): a byte-bounded LRU keyed by the frame's pack
//! and offset, so images that share a chunk share its cache entry. A frame
//! holds several consecutive chunks; each is checked against its BLAKE3 id
//! the first time it is read ([`puzzle_store::frame::Frame`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use puzzle_store::frame::Frame;
use puzzle_store::BlobDigest;

/// Where a frame is: its pack and its offset in the pack.
pub type FrameKey = (BlobDigest, u64);

/// A byte-bounded least-recently-used map from frame to its decompressed bytes.
pub struct ChunkCache {
    inner: Mutex<Lru>,
    capacity: usize,
}

struct Lru {
    /// frame -> (data, last-use tick)
    map: HashMap<FrameKey, (Arc<Frame>, u64)>,
    /// last-use tick -> frame, oldest first
    order: BTreeMap<u64, FrameKey>,
    tick: u64,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of decompressed frames,
    /// counted as the memory they hold ([`Frame::held`]); at least one frame
    /// is always kept, whatever its size.
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

    /// The cached frame, marking it most recently used.
    pub fn get(&self, id: &FrameKey) -> Option<Arc<Frame>> {
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

    /// Whether the frame is cached (without marking it used).
    pub fn contains(&self, id: &FrameKey) -> bool {
        self.lock().map.contains_key(id)
    }

    /// Adds a decompressed frame, evicting the least recently used.
    pub fn insert(&self, id: FrameKey, data: Arc<Frame>) {
        let mut g = self.lock();
        let lru = &mut *g;
        lru.tick += 1;
        let tick = lru.tick;
        let len = data.held();
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
                lru.bytes -= d.held();
            }
        }
    }

    /// Bytes of memory the cached frames hold now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Frames held now.
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

    fn chunk(n: u8, len: usize) -> (FrameKey, Arc<Frame>) {
        let d = vec![n; len];
        (
            (BlobDigest::of(&[n]), u64::from(n)),
            Arc::new(Frame::new(d)),
        )
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
