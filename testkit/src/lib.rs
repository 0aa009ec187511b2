//! Test helpers for puzzle (a dev-dependency only).
//!
//! - [`Entry`] / [`Kind`] describe tar entries; [`layer_tar`] (PAX long
//!   names) and [`layer_tar_gnu`] (GNU long names) write them, in the given
//!   order, byte by byte through [`raw`].
//! - [`Image`] stacks layers and writes them as an OCI layout
//!   ([`Image::write_oci_layout`]), an OCI archive or a `docker save`
//!   archive, returning the digests in [`Written`].
//! - [`all_kinds_image`] is the coverage image every converter test should
//!   round-trip; [`all_kinds_layers`] gives its entries.
//! - [`bad`] builds hostile tars and damages layouts.
//! - [`compare_trees`] checks two extracted trees field by field;
//!   [`umoci_unpack`] produces the reference tree.
//! - [`pseudo_random`] and [`text_like`] are seeded inputs (incompressible
//!   and text-like) for tests and the criterion benches.
//!
//! ```
//! use puzzle_testkit::{Compression, Entry, Image};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let img = Image::new()
//!     .layer(&[Entry::dir("etc"), Entry::file("etc/motd", "hi\n").mode(0o600)], Compression::Gzip)
//!     .layer(&[Entry::whiteout("etc/motd")], Compression::None);
//! let written = img.write_oci_layout(dir.path(), "test:1").unwrap();
//! assert_eq!(written.diff_ids.len(), 2);
//! ```

pub mod bad;
mod compare;
mod data;
mod entry;
mod image;
mod kinds;
pub mod raw;
mod tools;

pub use compare::{compare_trees, show_bytes, CompareOpts, Difference, Differences, Field};
pub use data::{text_like, SplitMix};
pub use entry::{layer_tar, layer_tar_gnu, layer_tar_with, Entry, Kind, LongNames, DEFAULT_MTIME};
pub use image::{
    sha256_digest, Compression, Image, Written, CONFIG_MEDIA_TYPE, INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE, REF_NAME,
};
pub use kinds::{
    all_kinds_image, all_kinds_layers, dup_contents, long_path, long_target, pseudo_random,
    CAP_NET_BIND_SERVICE,
};
pub use tools::{tool_available, umoci_unpack};
