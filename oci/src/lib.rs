//! OCI sources for puzzle and layer conversion.
//!
//! - [`source`]: opening an image from an OCI layout directory, an OCI archive
//!   or a `docker save` archive ([`source::open`]), picking the platform, and
//!   reading layers as verified, decompressed tar streams ([`source::LayerReader`]).
//! - [`layer`]: converting a layer tar into a [`puzzle_store::tree::Layer`]:
//!   metadata apart, file contents chunked in sorted-path order.
//! - [`pull`]: fetching a puzzle image from a registry, only the frames
//!   holding chunks the store lacks, and storing it as a local twin.
//! - [`push`]: sending a stored image to a registry, byte for byte.
//! - [`export`]: writing a stored image back as a plain OCI image (tar+gzip
//!   layers, one per original layer or one squashed).
//!
//! Everything read from outside is checked against its digest while it
//! streams; errors name the file, blob or tar entry involved ([`Error`]).

mod adopt;
pub mod build;
pub mod error;
pub mod export;
pub mod layer;
pub mod lazy;
pub mod pull;
pub mod push;
pub mod source;

pub use error::{Error, Result};
