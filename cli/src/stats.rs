//! `puzzle stats`: the dedup report as a table, JSON Lines (docs/STATS.md)
//! or a self-contained HTML page. The figures come from
//! `puzzle_store::stats`; this module only renders them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use puzzle_store::image::{self, Image};
use puzzle_store::stats::{self, Diff, Input, Report};
use puzzle_store::Store;
use serde::Serialize;

use crate::exit;
use crate::output::{bytes, Envelope};

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Images to report on [default: every image in the store].
    names: Vec<String>,
    /// Print the report as JSON Lines on stdout (a `stats` line, then a `diff` line with --diff).
    #[arg(long)]
    json: bool,
    /// Also write the report as a self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Also list the files that differ from image A to image B, by the new chunk bytes each costs.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    diff: Option<Vec<String>>,
    /// Rows of the diff in the table and on the HTML page (the JSON lists every file).
    #[arg(long, default_value_t = 20, value_name = "N")]
    top: usize,
}

/// The report's view of an opened image.
fn input<'a>(name: &'a str, img: &'a Image) -> Input<'a, Vec<u8>> {
    let md = img.manifest.metadata().expect("checked by read_manifest");
    Input {
        name,
        meta: &img.meta,
        meta_digest: md.digest,
        meta_stored: md.size,
    }
}

pub fn run(root: &Path, args: &StatsArgs) -> Result<u8> {
    let store = Store::open(root)?;
    let names: Vec<String> = if args.names.is_empty() {
        store.images()?.into_iter().map(|r| r.name).collect()
    } else {
        let mut n = args.names.clone();
        let mut seen = std::collections::HashSet::new();
        n.retain(|x| seen.insert(x.clone()));
        n
    };
    let (_opened, report) = load(&store, &names)?;

    let diff = match &args.diff {
        Some(ab) => {
            let [a, b] = &ab[..] else {
                bail!("--diff takes two image names")
            };
            let find = |n: &str| -> Result<Image> {
                image::open(&store, n).with_context(|| format!("opening image {n}"))
            };
            let (ia, ib) = (find(a)?, find(b)?);
            let d = stats::diff(input(a, &ia), input(b, &ib))
                .with_context(|| format!("comparing {a} and {b}"))?;
            Some(d)
        }
        None => None,
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer(&mut out, &Envelope::new("stats", StatsJson::from(&report)))?;
        writeln!(out)?;
        if let Some(d) = &diff {
            serde_json::to_writer(&mut out, &Envelope::new("diff", DiffJson::from(d)))?;
            writeln!(out)?;
        }
    } else {
        table(&mut out, &report)?;
        if let Some(d) = &diff {
            writeln!(out)?;
            diff_table(&mut out, d, args.top)?;
        }
    }
    out.flush()?;
    if let Some(path) = &args.html {
        let page = crate::html::page(&report, diff.as_ref(), args.top);
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(exit::OK)
}

/// Opens the images `names` and computes the report over them: "other
/// images" are the other images of `names`. Reads only metadata blobs and
/// pack trailers. The report's images are in the order of `names`.
pub fn load(store: &Store, names: &[String]) -> Result<(Vec<Image>, Report)> {
    let mut opened: Vec<Image> = Vec::with_capacity(names.len());
    for n in names {
        opened.push(image::open(store, n).with_context(|| format!("opening image {n}"))?);
    }
    let mut packs = HashMap::new();
    for img in &opened {
        for p in img.meta.packs()? {
            if let std::collections::hash_map::Entry::Vacant(e) = packs.entry(p) {
                e.insert(stats::pack_size(store, &p)?);
            }
        }
    }
    let inputs: Vec<Input<'_, Vec<u8>>> = opened.iter().map(|i| input(&i.name, i)).collect();
    let report = stats::compute(&inputs, &packs).context("computing the report")?;
    Ok((opened, report))
}

/// `a / b`, or `None` when `b` is 0.
pub fn ratio(a: u64, b: u64) -> Option<f64> {
    (b != 0).then(|| a as f64 / b as f64)
}

fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

#[derive(Serialize)]
pub struct ImageJson {
    pub name: String,
    pub files: u64,
    pub logical_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
    pub stored_bytes: u64,
    pub unique_stored_bytes: u64,
    pub source_layers: u64,
    pub source_bytes: u64,
    pub metadata_bytes: u64,
    pub packs: u64,
    pub dedup_ratio: Option<f64>,
    pub compression_ratio: Option<f64>,
    pub overall_ratio: Option<f64>,
    pub shared_fraction: Option<f64>,
    pub source_ratio: Option<f64>,
    pub unique_stored_vs_source: Option<f64>,
}

#[derive(Serialize)]
pub struct TotalsJson {
    pub images: u64,
    pub files: u64,
    pub logical_bytes: u64,
    pub file_contents: u64,
    pub file_dedup_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub stored_bytes: u64,
    pub source_layers: u64,
    pub source_bytes: u64,
    pub source_bytes_per_image: u64,
    pub metadata_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub pack_frame_bytes: u64,
    pub unreferenced_frame_bytes: u64,
    pub dedup_ratio: Option<f64>,
    pub compression_ratio: Option<f64>,
    pub overall_ratio: Option<f64>,
    pub file_dedup_ratio: Option<f64>,
    pub chunking_gain: Option<f64>,
    pub source_ratio: Option<f64>,
}

#[derive(Serialize)]
pub struct BucketJson {
    pub min: u64,
    pub max: u64,
    pub chunks: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct RefCountJson {
    pub images: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Serialize)]
pub struct SharingJson {
    pub images: Vec<String>,
    pub bytes: Vec<Vec<u64>>,
}

/// The `stats` line.
#[derive(Serialize)]
pub struct StatsJson {
    pub images: Vec<ImageJson>,
    pub totals: TotalsJson,
    pub histogram: Vec<BucketJson>,
    pub refcounts: Vec<RefCountJson>,
    pub sharing: SharingJson,
}

impl From<&Report> for StatsJson {
    fn from(r: &Report) -> Self {
        let t = &r.totals;
        StatsJson {
            images: r
                .images
                .iter()
                .map(|s| ImageJson {
                    name: s.name.clone(),
                    files: s.files,
                    logical_bytes: s.logical_bytes,
                    chunks: s.chunks,
                    chunk_bytes: s.chunk_bytes,
                    unique_bytes: s.unique_bytes,
                    shared_bytes: s.shared_bytes,
                    stored_bytes: s.stored_bytes,
                    unique_stored_bytes: s.unique_stored_bytes,
                    source_layers: s.source_layers,
                    source_bytes: s.source_bytes,
                    metadata_bytes: s.metadata_bytes,
                    packs: s.packs,
                    dedup_ratio: ratio(s.logical_bytes, s.chunk_bytes),
                    compression_ratio: ratio(s.chunk_bytes, s.stored_bytes),
                    overall_ratio: ratio(s.logical_bytes, s.stored_bytes),
                    shared_fraction: ratio(s.shared_bytes, s.chunk_bytes),
                    source_ratio: ratio(s.source_bytes, s.stored_bytes),
                    unique_stored_vs_source: ratio(s.unique_stored_bytes, s.source_bytes),
                })
                .collect(),
            totals: TotalsJson {
                images: t.images,
                files: t.files,
                logical_bytes: t.logical_bytes,
                file_contents: t.file_contents,
                file_dedup_bytes: t.file_dedup_bytes,
                chunks: t.chunks,
                chunk_bytes: t.chunk_bytes,
                stored_bytes: t.stored_bytes,
                source_layers: t.source_layers,
                source_bytes: t.source_bytes,
                source_bytes_per_image: t.source_bytes_per_image,
                metadata_bytes: t.metadata_bytes,
                packs: t.packs,
                pack_bytes: t.pack_bytes,
                pack_frame_bytes: t.pack_frame_bytes,
                unreferenced_frame_bytes: t.pack_frame_bytes.saturating_sub(t.stored_bytes),
                dedup_ratio: ratio(t.logical_bytes, t.chunk_bytes),
                compression_ratio: ratio(t.chunk_bytes, t.stored_bytes),
                overall_ratio: ratio(t.logical_bytes, t.stored_bytes),
                file_dedup_ratio: ratio(t.logical_bytes, t.file_dedup_bytes),
                chunking_gain: ratio(t.file_dedup_bytes, t.chunk_bytes),
                source_ratio: ratio(t.source_bytes, t.stored_bytes),
            },
            histogram: r
                .histogram
                .iter()
                .map(|b| BucketJson {
                    min: b.min,
                    max: b.max,
                    chunks: b.chunks,
                    bytes: b.bytes,
                })
                .collect(),
            refcounts: r
                .refcounts
                .iter()
                .map(|c| RefCountJson {
                    images: c.images,
                    chunks: c.chunks,
                    bytes: c.bytes,
                    stored_bytes: c.stored_bytes,
                })
                .collect(),
            sharing: SharingJson {
                images: r.images.iter().map(|s| s.name.clone()).collect(),
                bytes: r.sharing.clone(),
            },
        }
    }
}

/// A path: `{"text": ...}` when it is UTF-8, else `{"bytes": base64}`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum PathJson {
    Text { text: String },
    Bytes { bytes: String },
}

impl PathJson {
    pub fn new(p: &[u8]) -> Self {
        match std::str::from_utf8(p) {
            Ok(s) => PathJson::Text { text: s.to_owned() },
            Err(_) => PathJson::Bytes { bytes: base64(p) },
        }
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Serialize)]
pub struct FileChangeJson {
    pub path: PathJson,
    pub change: &'static str,
    pub size_a: Option<u64>,
    pub size_b: Option<u64>,
    pub new_bytes: u64,
    pub content_in_a: bool,
}

/// The `diff` line.
#[derive(Serialize)]
pub struct DiffJson {
    pub a: String,
    pub b: String,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub new_stored_bytes: u64,
    pub dropped_chunks: u64,
    pub dropped_chunk_bytes: u64,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub rechunked: u64,
    pub unchanged: u64,
    pub files: Vec<FileChangeJson>,
}

impl From<&Diff> for DiffJson {
    fn from(d: &Diff) -> Self {
        DiffJson {
            a: d.a.clone(),
            b: d.b.clone(),
            new_chunks: d.new_chunks,
            new_chunk_bytes: d.new_chunk_bytes,
            new_stored_bytes: d.new_stored_bytes,
            dropped_chunks: d.dropped_chunks,
            dropped_chunk_bytes: d.dropped_chunk_bytes,
            added: d.added,
            removed: d.removed,
            modified: d.modified,
            rechunked: d.rechunked,
            unchanged: d.unchanged,
            files: d
                .files
                .iter()
                .map(|f| FileChangeJson {
                    path: PathJson::new(&f.path),
                    change: f.change.as_str(),
                    size_a: f.size_a,
                    size_b: f.size_b,
                    new_bytes: f.new_bytes,
                    content_in_a: f.content_in_a,
                })
                .collect(),
        }
    }
}

fn table(out: &mut dyn Write, r: &Report) -> Result<()> {
    let w = r
        .images
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .clamp(5, 40);
    writeln!(
        out,
        "{:<w$} {:>7} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6}",
        "IMAGE",
        "FILES",
        "LOGICAL",
        "CHUNKS",
        "UNIQUE",
        "SHARED",
        "STORED",
        "OWN-STORED",
        "SOURCE",
        "DEDUP",
        "COMPR"
    )?;
    for s in &r.images {
        writeln!(
            out,
            "{:<w$} {:>7} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6}",
            s.name,
            s.files,
            bytes(s.logical_bytes),
            s.chunks,
            bytes(s.unique_bytes),
            bytes(s.shared_bytes),
            bytes(s.stored_bytes),
            bytes(s.unique_stored_bytes),
            bytes(s.source_bytes),
            show_ratio(ratio(s.logical_bytes, s.chunk_bytes)),
            show_ratio(ratio(s.chunk_bytes, s.stored_bytes)),
        )?;
    }
    let t = &r.totals;
    writeln!(out)?;
    writeln!(out, "{} images, {} files", t.images, t.files)?;
    writeln!(out, "  logical            {:>10}", bytes(t.logical_bytes))?;
    writeln!(
        out,
        "  whole-file dedup   {:>10}  {} distinct contents, {}",
        bytes(t.file_dedup_bytes),
        t.file_contents,
        show_ratio(ratio(t.logical_bytes, t.file_dedup_bytes))
    )?;
    writeln!(
        out,
        "  chunk dedup        {:>10}  {} distinct chunks, {} ({} over whole-file dedup)",
        bytes(t.chunk_bytes),
        t.chunks,
        show_ratio(ratio(t.logical_bytes, t.chunk_bytes)),
        show_ratio(ratio(t.file_dedup_bytes, t.chunk_bytes))
    )?;
    writeln!(
        out,
        "  stored (zstd)      {:>10}  compression {}, overall {}",
        bytes(t.stored_bytes),
        show_ratio(ratio(t.chunk_bytes, t.stored_bytes)),
        show_ratio(ratio(t.logical_bytes, t.stored_bytes))
    )?;
    writeln!(
        out,
        "  original layers    {:>10}  {} distinct layers as pulled, {} vs stored ({} pulled image by image)",
        bytes(t.source_bytes),
        t.source_layers,
        show_ratio(ratio(t.source_bytes, t.stored_bytes)),
        bytes(t.source_bytes_per_image)
    )?;
    writeln!(
        out,
        "  packs              {:>10}  {} packs, {} of frames ({} not referenced by these images); metadata {}",
        bytes(t.pack_bytes),
        t.packs,
        bytes(t.pack_frame_bytes),
        bytes(t.pack_frame_bytes.saturating_sub(t.stored_bytes)),
        bytes(t.metadata_bytes)
    )?;
    if !r.histogram.is_empty() {
        writeln!(out)?;
        writeln!(out, "chunk sizes (raw)")?;
        let most = r
            .histogram
            .iter()
            .map(|b| b.chunks)
            .max()
            .unwrap_or(1)
            .max(1);
        for b in &r.histogram {
            writeln!(
                out,
                "  {:>9} - {:<9} {:>8} chunks {:>10}  {}",
                bytes(b.min),
                bytes(b.max),
                b.chunks,
                bytes(b.bytes),
                "#".repeat((b.chunks * 40).div_ceil(most) as usize)
            )?;
        }
    }
    if !r.refcounts.is_empty() {
        writeln!(out)?;
        writeln!(out, "chunks by the number of images referencing them")?;
        for c in r.refcounts.iter().filter(|c| c.chunks > 0) {
            writeln!(
                out,
                "  {:>4} image(s) {:>8} chunks {:>10} raw {:>10} stored",
                c.images,
                c.chunks,
                bytes(c.bytes),
                bytes(c.stored_bytes)
            )?;
        }
    }
    if r.images.len() > 1 {
        writeln!(out)?;
        writeln!(
            out,
            "sharing: bytes of chunks both images reference (column numbers are rows)"
        )?;
        write!(out, "{:>3} {:<w$}", "", "")?;
        for j in 0..r.images.len() {
            write!(out, " {:>10}", format!("[{}]", j + 1))?;
        }
        writeln!(out)?;
        for (i, row) in r.sharing.iter().enumerate() {
            write!(
                out,
                "{:>3} {:<w$}",
                format!("[{}]", i + 1),
                r.images[i].name
            )?;
            for v in row {
                write!(out, " {:>10}", bytes(*v))?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

fn diff_table(out: &mut dyn Write, d: &Diff, top: usize) -> Result<()> {
    writeln!(
        out,
        "{} -> {}: {} new chunks, {} raw, {} stored; {} added, {} removed, {} modified, {} rechunked, {} unchanged files",
        d.a,
        d.b,
        d.new_chunks,
        bytes(d.new_chunk_bytes),
        bytes(d.new_stored_bytes),
        d.added,
        d.removed,
        d.modified,
        d.rechunked,
        d.unchanged
    )?;
    writeln!(
        out,
        "{:>10} {:<9} {:>10} {:>10}  PATH",
        "NEW", "CHANGE", "SIZE-A", "SIZE-B"
    )?;
    let opt = |v: Option<u64>| v.map_or_else(|| "-".into(), bytes);
    for f in d.files.iter().take(top) {
        writeln!(
            out,
            "{:>10} {:<9} {:>10} {:>10}  /{}",
            bytes(f.new_bytes),
            f.change.as_str(),
            opt(f.size_a),
            opt(f.size_b),
            String::from_utf8_lossy(&f.path)
        )?;
    }
    if d.files.len() > top {
        writeln!(
            out,
            "... and {} more (--top N shows more; --json lists every file)",
            d.files.len() - top
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }
}
