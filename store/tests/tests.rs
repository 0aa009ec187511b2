//! Integration tests of the store crate through its public API (one binary).

mod frames;
