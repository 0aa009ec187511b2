//! Criterion micro-benchmarks of the store, on inputs made from fixed seeds.
//!
//! - [`codec`]: SHA-256 blob digests, zstd compress/decompress of 64 KiB chunks.
//! - [`pack`]: writing a pack of pre-compressed frames, reading a frame back.
//! - [`meta`]: encoding and reading the metadata blob of a synthetic tree,
//!   path lookup, and the extent lookup of the FUSE read path.
//!
//! Run (short, the machine is shared; see benches/README.md):
//!
//! ```text
//! cargo bench --locked -p puzzle-store --bench store -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! A filter picks groups, e.g. `-- meta/`. To compare a change, save a
//! baseline first (`-- --save-baseline main`), then run with
//! `-- --baseline main`. Recorded figures: benches/MICRO.md.

mod codec;
mod meta;
mod pack;

criterion::criterion_main!(codec::benches, pack::benches, meta::benches);
