//! `puzzle export`: a stored image back to a plain OCI image.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use puzzle_oci::export::{self, ExportOptions, KnownLayers, LayerCompression, Target};
use puzzle_store::index::ChunkIndex;
use puzzle_store::{image, Store};
use serde::Serialize;

use crate::output::{self, Envelope, Progress};
use crate::{exit, UsageError};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Image name, as given to `build --tag`.
    name: String,
    /// Destination: oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF].
    dest: String,
    /// Layer compression.
    #[arg(long, value_enum, default_value_t = Compress::Gzip)]
    compress: Compress,
    /// Compression level [default: 6 for gzip (0-9), 3 for zstd (1-19)].
    #[arg(long)]
    level: Option<i32>,
    /// Write one layer holding the flattened tree instead of one per original layer.
    #[arg(long)]
    squash: bool,
    /// Print a JSON summary line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Compress {
    Gzip,
    Zstd,
}

#[derive(Serialize)]
struct Summary<'a> {
    image: &'a str,
    target: String,
    manifest: String,
    config: String,
    layers: usize,
    squashed: bool,
    /// Uncompressed tar bytes written.
    tar_bytes: u64,
    /// Compressed layer bytes written.
    layer_bytes: u64,
    seconds: f64,
}

pub fn run(root: &Path, args: &ExportArgs, progress: &Progress) -> Result<u8> {
    let target: Target = args
        .dest
        .parse()
        .map_err(|e: puzzle_oci::Error| UsageError(e.to_string()))?;
    let compression = match args.compress {
        Compress::Gzip => LayerCompression::Gzip,
        Compress::Zstd => LayerCompression::Zstd,
    };
    if let Some(l) = args.level {
        if !compression.levels().contains(&l) {
            return Err(UsageError(format!(
                "--level {l} is out of range for {:?} ({:?})",
                args.compress,
                compression.levels()
            ))
            .into());
        }
    }
    let interrupted = crate::interrupt_flag()?;
    let store = Store::open(root)?;
    let (img, pin) = image::open_pinned(&store, &args.name)
        .with_context(|| format!("opening image {}", args.name))?;
    crate::warn_unpinned(&store, &args.name, &pin);
    let started = Instant::now();
    // Layer records live in the index, which only the writer-lock holder
    // opens. The lock is kept while exporting when a layer reads chunks
    // outside the image's own packs (the pin does not keep those from gc).
    let mut lock = None;
    let known = if args.squash {
        None
    } else {
        let loaded = if store.is_writable() {
            lock = Some(crate::lock_store(&store, Some(&interrupted), false, false)?);
            let index = crate::lifecycle::open_index(&store, progress)?;
            KnownLayers::load(&index, &img.meta.source()?)?
        } else {
            let scratch =
                tempfile::tempdir().context("making a scratch directory for the index copy")?;
            let index = ChunkIndex::open_copy(&store, scratch.path())?;
            KnownLayers::load(&index, &img.meta.source()?)?
        };
        match loaded {
            Ok(k) => {
                let own: std::collections::BTreeSet<_> =
                    img.manifest.packs().map(|p| p.digest).collect();
                if k.packs().is_subset(&own) {
                    lock = None;
                }
                Some(k)
            }
            Err(why) => {
                lock = None;
                eprintln!("puzzle: {}: {why}; exporting one squashed layer", args.name);
                None
            }
        }
    };
    let total = match &known {
        Some(k) => k.content_bytes(),
        None => puzzle_store::stats::logical_size(&img.meta)?.1,
    };
    let bar = progress.bar(&format!("exporting {}", args.name), total);
    let opts = ExportOptions {
        compression,
        level: args.level,
        squash: args.squash,
        cancel: Some(&interrupted),
    };
    let res = export::export(&store, &img, known.as_ref(), &target, &opts, &mut |n| {
        bar.set_position(n)
    });
    bar.finish_and_clear();
    drop(lock);
    let out = match res {
        Ok(out) => out,
        Err(_) if interrupted.load(std::sync::atomic::Ordering::SeqCst) => {
            eprintln!("interrupted; {target} may hold blobs no manifest names");
            return Ok(exit::INTERRUPTED);
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("exporting {} to {target}", args.name))
            )
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let summary = Summary {
        image: &args.name,
        target: target.to_string(),
        manifest: out.manifest.digest.to_string(),
        config: out.config.digest.to_string(),
        layers: out.layers.len(),
        squashed: out.squashed,
        tar_bytes: out.tar_bytes(),
        layer_bytes: out.layer_bytes(),
        seconds: secs,
    };
    if args.json {
        output::print_json(&Envelope::new("export", &summary))?;
    } else {
        eprintln!(
            "exported {} to {}: {} layer{}{}, {} of tar, {} compressed, manifest {} in {:.2}s",
            args.name,
            summary.target,
            summary.layers,
            if summary.layers == 1 { "" } else { "s" },
            if out.squashed { " (squashed)" } else { "" },
            output::bytes(summary.tar_bytes),
            output::bytes(summary.layer_bytes),
            summary.manifest,
            secs
        );
    }
    Ok(exit::OK)
}
