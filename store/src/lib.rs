//! puzzle's content-addressed chunk store.
//!
//! - [`layout::Store`]: the store root, an OCI image layout (`index.json`,
//!   `blobs/sha256/`) plus `puzzle.json`, `index/` and `tmp/`.
//! - [`lock`]: the writer lock, pins, and the space reserve for a full disk.
//! - [`create`]: which directories a store may be created in; restoring a
//!   lost `puzzle.json` from the manifests.
//! - [`pack`]: packs of independent zstd frames with a trailing index of chunks.
//! - [`frame`]: grouping consecutive chunks into frames; reading chunks out of
//!   a decompressed [`frame::Frame`].
//! - [`index::ChunkIndex`]: the sled cache of chunk locations and converted layers.
//! - [`known`]: files the store already holds, found by their contents while
//!   a layer is read (so their bytes are not spooled).
//! - [`tree`]: converted layers ([`tree::Layer`]) and flattening into a [`tree::Tree`].
//! - [`meta`]: the image metadata blob, written from a tree and read in place.
//! - [`writer::ChunkWriter`]: stores new chunks, compressing on worker threads.
//! - [`image`]: committing an image (metadata, manifest, tag) and opening one.
//! - [`extract`]: writing an image's tree to a directory.
//! - [`stats`]: the dedup report (sharing, costs, diffs) from metadata alone.
//! - [`mmap`]: the single memory-mapping wrapper; [`image::open_mapped`] uses
//!   it so a mount reads the metadata blob in place.
//! - [`remotes`]: which repositories of which registries hold a blob (hints
//!   for `push` to mount blobs across repositories).
//! - [`verify`]: checking digests and cross-references; rebuilding the index.
//! - [`prefetch`]: workload traces (`mount --trace`) and the prefetch lists
//!   images carry; the frames a lazy mount fetches first.
//! - [`gc`]: deleting what no image needs, keeping one copy of a chunk
//!   stored twice, and repacking sparse packs.
//!
//! The byte formats are specified in `docs/FORMAT.md`.

pub mod blobs;
pub mod create;
pub mod digest;
pub mod error;
pub mod extract;
pub mod frame;
pub mod gc;
pub mod image;
pub mod index;
pub mod known;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod meta;
pub mod mmap;
pub mod pack;
pub mod prefetch;
pub mod remotes;
pub mod stats;
pub mod tree;
pub mod verify;
pub mod writer;

pub use digest::BlobDigest;
pub use error::{Error, Result};
pub use layout::{Store, StoreConfig};
