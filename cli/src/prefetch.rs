//! `build --prefetch FILE` and `push --prefetch FILE`: a trace recorded by
//! `mount --trace` stored with the image as its prefetch list.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use puzzle_store::image::{self, PrefetchSet};
use puzzle_store::prefetch;
use puzzle_store::Store;

/// The trace in `path`, read and checked before anything is built or sent.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let what = || format!("reading prefetch list {}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .with_context(what)?
        .take(prefetch::MAX_TRACE + 1)
        .read_to_end(&mut bytes)
        .with_context(what)?;
    prefetch::parse(&bytes)
        .with_context(|| format!("{} (write it with `puzzle mount --trace`)", what()))?;
    Ok(bytes)
}

/// Gives the image `name` the prefetch list `trace` (the caller holds the
/// store lock), warning in one line about paths the image lacks.
pub fn attach(store: &Store, name: &str, trace: &[u8]) -> Result<PrefetchSet> {
    let set = image::set_prefetch(store, name, Some(trace))
        .with_context(|| format!("storing the prefetch list of {name}"))?;
    if let Some(first) = set.missing.first() {
        let more = match set.missing.len() - 1 {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        eprintln!(
            "puzzle: warning: prefetch list: skipped {} (and any other ranges of it){more}: not a regular file in {name}",
            String::from_utf8_lossy(first),
        );
    }
    Ok(set)
}
