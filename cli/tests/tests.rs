//! Integration tests: the real `puzzle` binary on real OCI images.
//!
//! Tools (umoci) and the small corpus are required when PUZZLE_REQUIRE_TOOLS
//! is set (CI sets it); otherwise tests that need them say so and return.

mod util;

mod bad_input;
mod basics;
mod concurrent;
mod container;
mod corpus;
mod crash;
mod demo;
mod diskfull;
mod docs;
mod errors;
mod export;
mod heal;
mod lazy;
mod lifecycle;
mod mount;
mod prefetch;
mod progress;
mod regfault;
mod registry;
mod registry_auth;
mod registry_pull;
mod registry_push;
mod registry_tls;
mod regkit;
mod report;
mod stats;
mod store_safety;
mod symlinks;
mod synthetic;
