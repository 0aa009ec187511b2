//! Integration tests of puzzle-chunker's public API, one binary.

mod common;
mod golden;
mod props;
mod stream;
