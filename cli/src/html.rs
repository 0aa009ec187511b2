//! `puzzle stats --html`: one self-contained page. Inline CSS and inline SVG
//! drawn here, no script, no external resource; a Content-Security-Policy
//! forbids any fetch, so a page that tried one would show a console error.
//! Every chart has its numbers in a table next to it.
//!
//! Charts (each an `<svg>` with an id, its bars with a class, for tests):
//! `chart-images` (per image: `bar-shared` and `bar-unique` raw bytes,
//! `bar-own-stored` compressed bytes only it references), `chart-heatmap`
//! (`cell`, images x images), `chart-histogram` (`bar-hist`, one per bucket)
//! and, with a diff, `chart-diff` (`bar-diff`, the top files by cost).

use std::fmt::Write;

use puzzle_store::stats::{Diff, Report};

use crate::output::bytes;
use crate::stats::ratio;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn r2(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

fn pct(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{:.1}%", r * 100.0))
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:2px 8px;border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
svg text{font:12px system-ui,sans-serif;fill:#333}
.bar-shared{fill:#4e79a7}.bar-unique{fill:#f28e2b}.bar-own-stored{fill:#e15759}
.bar-hist{fill:#59a14f}.bar-diff{fill:#e15759}.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
.note{color:#666}
";

/// The whole page.
pub fn page(r: &Report, diff: Option<&Diff>, top: usize) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>puzzle stats</title><style>{STYLE}</style></head><body>\n<h1>puzzle stats: {} images</h1>\n",
        r.images.len()
    );
    totals(&mut h, r);
    images(&mut h, r);
    heatmap(&mut h, r);
    histogram(&mut h, r);
    refcounts(&mut h, r);
    if let Some(d) = diff {
        diff_section(&mut h, d, top);
    }
    h.push_str("<p class=\"note\">Figures are defined in docs/STATS.md of puzzle. Raw bytes are uncompressed chunk bytes; stored bytes are each chunk's share of its zstd frame.</p>\n</body></html>\n");
    h
}

fn row(h: &mut String, label: &str, value: String, note: String) {
    let _ = writeln!(
        h,
        "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
        esc(label),
        esc(&value),
        esc(&note)
    );
}

fn totals(h: &mut String, r: &Report) {
    let t = &r.totals;
    h.push_str("<h2>Store totals</h2>\n<table id=\"totals\">\n");
    row(
        h,
        "images",
        t.images.to_string(),
        format!("{} files", t.files),
    );
    row(
        h,
        "logical bytes",
        bytes(t.logical_bytes),
        "sum of file sizes over images".into(),
    );
    row(
        h,
        "whole-file dedup",
        bytes(t.file_dedup_bytes),
        format!(
            "{} distinct contents, {}",
            t.file_contents,
            r2(ratio(t.logical_bytes, t.file_dedup_bytes))
        ),
    );
    row(
        h,
        "after chunk dedup",
        bytes(t.chunk_bytes),
        format!(
            "{} distinct chunks, dedup {}, {} over whole-file dedup",
            t.chunks,
            r2(ratio(t.logical_bytes, t.chunk_bytes)),
            r2(ratio(t.file_dedup_bytes, t.chunk_bytes))
        ),
    );
    row(
        h,
        "stored (zstd)",
        bytes(t.stored_bytes),
        format!(
            "compression {}, overall {}",
            r2(ratio(t.chunk_bytes, t.stored_bytes)),
            r2(ratio(t.logical_bytes, t.stored_bytes))
        ),
    );
    row(
        h,
        "original layers",
        bytes(t.source_bytes),
        format!(
            "{} distinct layers as pulled, {} of stored; {} pulled image by image",
            t.source_layers,
            r2(ratio(t.source_bytes, t.stored_bytes)),
            bytes(t.source_bytes_per_image)
        ),
    );
    row(
        h,
        "packs",
        bytes(t.pack_bytes),
        format!(
            "{} packs, {} of frames, {} not referenced by these images",
            t.packs,
            bytes(t.pack_frame_bytes),
            bytes(t.pack_frame_bytes.saturating_sub(t.stored_bytes))
        ),
    );
    row(h, "metadata", bytes(t.metadata_bytes), String::new());
    h.push_str("</table>\n");
}

fn images(h: &mut String, r: &Report) {
    h.push_str("<h2>Stored vs shared, per image</h2>\n");
    h.push_str("<p><span class=\"key bar-shared\" style=\"background:#4e79a7\"></span>shared with another image (raw)\
<span class=\"key\" style=\"background:#f28e2b\"></span>only in this image (raw)\
<span class=\"key\" style=\"background:#e15759\"></span>stored bytes only this image accounts for (compressed)</p>\n");
    let label_w = 200.0;
    let bar_w = 700.0;
    let row_h = 34.0;
    let height = row_h * r.images.len() as f64 + 10.0;
    let max = r
        .images
        .iter()
        .map(|s| s.chunk_bytes)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = writeln!(
        h,
        "<svg id=\"chart-images\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"stored vs shared per image\">",
        label_w + bar_w + 120.0
    );
    for (i, s) in r.images.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let ws = s.shared_bytes as f64 / max * bar_w;
        let wu = s.unique_bytes as f64 / max * bar_w;
        let wo = s.unique_stored_bytes as f64 / max * bar_w;
        let _ = writeln!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
<rect class=\"bar-shared\" x=\"{label_w}\" y=\"{y:.1}\" width=\"{ws:.1}\" height=\"16\"><title>{}: shared {}</title></rect>\
<rect class=\"bar-unique\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{wu:.1}\" height=\"16\"><title>{}: unique {}</title></rect>\
<rect class=\"bar-own-stored\" x=\"{label_w}\" y=\"{:.1}\" width=\"{wo:.1}\" height=\"8\"><title>{}: stored alone {}</title></rect>\
<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 6.0,
            y + 13.0,
            esc(&s.name),
            esc(&s.name),
            bytes(s.shared_bytes),
            label_w + ws,
            esc(&s.name),
            bytes(s.unique_bytes),
            y + 18.0,
            esc(&s.name),
            bytes(s.unique_stored_bytes),
            label_w + ws + wu + 6.0,
            y + 13.0,
            esc(&bytes(s.chunk_bytes)),
        );
    }
    h.push_str("</svg>\n");
    h.push_str("<table id=\"images\"><tr><th>image</th><th class=\"n\">files</th><th class=\"n\">logical</th><th class=\"n\">chunks</th><th class=\"n\">chunk bytes</th><th class=\"n\">unique</th><th class=\"n\">shared</th><th class=\"n\">stored</th><th class=\"n\">stored alone</th><th class=\"n\">original layers</th><th class=\"n\">dedup</th><th class=\"n\">compression</th><th class=\"n\">shared</th></tr>\n");
    for s in &r.images {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&s.name),
            s.files,
            bytes(s.logical_bytes),
            s.chunks,
            bytes(s.chunk_bytes),
            bytes(s.unique_bytes),
            bytes(s.shared_bytes),
            bytes(s.stored_bytes),
            bytes(s.unique_stored_bytes),
            bytes(s.source_bytes),
            r2(ratio(s.logical_bytes, s.chunk_bytes)),
            r2(ratio(s.chunk_bytes, s.stored_bytes)),
            pct(ratio(s.shared_bytes, s.chunk_bytes)),
        );
    }
    h.push_str("</table>\n");
}

fn heatmap(h: &mut String, r: &Report) {
    let n = r.images.len();
    h.push_str("<h2>Sharing between images</h2>\n<p class=\"note\">Cell (row, column): raw bytes of chunks both images reference; the colour is that share of the row image's chunk bytes.</p>\n");
    let cell = if n > 12 { 24.0 } else { 56.0 };
    let label_w = 200.0;
    let top = 24.0;
    let _ = writeln!(
        h,
        "<svg id=\"chart-heatmap\" width=\"{:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"sharing heatmap\">",
        label_w + cell * n as f64 + 10.0,
        top + cell * n as f64 + 10.0
    );
    for j in 0..n {
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"16\" text-anchor=\"middle\">{}</text>",
            label_w + cell * j as f64 + cell / 2.0,
            j + 1
        );
    }
    for (i, rowv) in r.sharing.iter().enumerate() {
        let y = top + cell * i as f64;
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} [{}]</text>",
            label_w - 6.0,
            y + cell / 2.0 + 4.0,
            esc(&r.images[i].name),
            i + 1
        );
        let own = r.sharing[i][i];
        for (j, &v) in rowv.iter().enumerate() {
            let f = ratio(v, own).unwrap_or(0.0).clamp(0.0, 1.0);
            // White to dark blue.
            let c = |lo: f64, hi: f64| (lo + (hi - lo) * f).round() as u8;
            let _ = write!(
                h,
                "<rect class=\"cell\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#{:02x}{:02x}{:02x}\" stroke=\"#fff\"><title>{} / {}: {} ({:.1}%)</title></rect>",
                label_w + cell * j as f64,
                cell,
                cell,
                c(247.0, 8.0),
                c(251.0, 48.0),
                c(255.0, 107.0),
                esc(&r.images[i].name),
                esc(&r.images[j].name),
                bytes(v),
                f * 100.0
            );
            if n <= 12 {
                let _ = write!(
                    h,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" style=\"fill:{}\">{:.0}%</text>",
                    label_w + cell * j as f64 + cell / 2.0,
                    y + cell / 2.0 + 4.0,
                    if f > 0.5 { "#fff" } else { "#333" },
                    f * 100.0
                );
            }
        }
        h.push('\n');
    }
    h.push_str("</svg>\n<table id=\"sharing\"><tr><th></th>");
    for j in 0..n {
        let _ = write!(h, "<th class=\"n\">[{}]</th>", j + 1);
    }
    h.push_str("</tr>\n");
    for (i, rowv) in r.sharing.iter().enumerate() {
        let _ = write!(h, "<tr><td>[{}] {}</td>", i + 1, esc(&r.images[i].name));
        for &v in rowv {
            let _ = write!(h, "<td class=\"n\">{}</td>", bytes(v));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn histogram(h: &mut String, r: &Report) {
    h.push_str("<h2>Chunk sizes</h2>\n<p class=\"note\">Distinct chunks by raw size, in power-of-two buckets.</p>\n");
    let n = r.histogram.len();
    let bw = 48.0;
    let chart_h = 200.0;
    let left = 60.0;
    let most = r
        .histogram
        .iter()
        .map(|b| b.chunks)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let _ = writeln!(
        h,
        "<svg id=\"chart-histogram\" width=\"{:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"chunk size histogram\">",
        left + bw * n as f64 + 20.0,
        chart_h + 60.0
    );
    let _ = write!(
        h,
        "<text x=\"4\" y=\"14\">{} chunks</text><line x1=\"{left}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"#999\"/>",
        most,
        chart_h + 20.0,
        left + bw * n as f64,
        chart_h + 20.0
    );
    for (i, b) in r.histogram.iter().enumerate() {
        let bh = b.chunks as f64 / most * chart_h;
        let x = left + bw * i as f64;
        let _ = writeln!(
            h,
            "<rect class=\"bar-hist\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{} to {}: {} chunks, {}</title></rect>\
<text x=\"{:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + 4.0,
            chart_h + 20.0 - bh,
            bw - 8.0,
            bytes(b.min),
            bytes(b.max),
            b.chunks,
            bytes(b.bytes),
            x + bw / 2.0,
            chart_h + 36.0,
            esc(&short_size(b.min)),
            x + bw / 2.0,
            chart_h + 16.0 - bh,
            b.chunks
        );
    }
    h.push_str("</svg>\n<table id=\"histogram\"><tr><th class=\"n\">from</th><th class=\"n\">below</th><th class=\"n\">chunks</th><th class=\"n\">raw bytes</th></tr>\n");
    for b in &r.histogram {
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            bytes(b.min),
            bytes(b.max),
            b.chunks,
            bytes(b.bytes)
        );
    }
    h.push_str("</table>\n");
}

/// `4K`, `16K`, `1M`: axis labels.
fn short_size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

fn refcounts(h: &mut String, r: &Report) {
    h.push_str("<h2>Chunks by the number of images referencing them</h2>\n<table id=\"refcounts\"><tr><th class=\"n\">images</th><th class=\"n\">chunks</th><th class=\"n\">raw bytes</th><th class=\"n\">stored bytes</th></tr>\n");
    for c in &r.refcounts {
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            c.images,
            c.chunks,
            bytes(c.bytes),
            bytes(c.stored_bytes)
        );
    }
    h.push_str("</table>\n");
}

fn diff_section(h: &mut String, d: &Diff, top: usize) {
    let _ = writeln!(
        h,
        "<h2>Diff {} → {}</h2>\n<p>{} new chunks: {} raw, {} stored. Files: {} added, {} removed, {} modified, {} rechunked (same contents in new chunks), {} unchanged.</p>",
        esc(&d.a),
        esc(&d.b),
        d.new_chunks,
        bytes(d.new_chunk_bytes),
        bytes(d.new_stored_bytes),
        d.added,
        d.removed,
        d.modified,
        d.rechunked,
        d.unchanged
    );
    let shown: Vec<_> = d
        .files
        .iter()
        .filter(|f| f.new_bytes > 0)
        .take(top)
        .collect();
    let label_w = 420.0;
    let bar_w = 440.0;
    let row_h = 20.0;
    let max = shown.first().map_or(1, |f| f.new_bytes.max(1)) as f64;
    let _ = writeln!(
        h,
        "<svg id=\"chart-diff\" width=\"{:.0}\" height=\"{:.0}\" role=\"img\" aria-label=\"top costs of the diff\">",
        label_w + bar_w + 100.0,
        row_h * shown.len() as f64 + 10.0
    );
    for (i, f) in shown.iter().enumerate() {
        let y = row_h * i as f64 + 4.0;
        let w = f.new_bytes as f64 / max * bar_w;
        let path = format!("/{}", String::from_utf8_lossy(&f.path));
        let label: String = if path.chars().count() > 60 {
            let tail: String = path
                .chars()
                .rev()
                .take(57)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("…{tail}")
        } else {
            path.clone()
        };
        let _ = writeln!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"bar-diff\" x=\"{label_w}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"14\"><title>{} ({}): {}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 6.0,
            y + 11.0,
            esc(&label),
            esc(&path),
            f.change.as_str(),
            bytes(f.new_bytes),
            label_w + w + 6.0,
            y + 11.0,
            esc(&bytes(f.new_bytes))
        );
    }
    h.push_str("</svg>\n<table id=\"diff\"><tr><th class=\"n\">new bytes</th><th>change</th><th class=\"n\">size in A</th><th class=\"n\">size in B</th><th>contents in A</th><th>path</th></tr>\n");
    let opt = |v: Option<u64>| v.map_or_else(|| "–".into(), bytes);
    for f in d.files.iter().take(top) {
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>/{}</td></tr>",
            bytes(f.new_bytes),
            f.change.as_str(),
            opt(f.size_a),
            opt(f.size_b),
            if f.content_in_a { "yes" } else { "no" },
            esc(&String::from_utf8_lossy(&f.path))
        );
    }
    h.push_str("</table>\n");
    if d.files.len() > top {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} more files changed; `puzzle stats --json --diff` lists them all.</p>",
            d.files.len() - top
        );
    }
}
