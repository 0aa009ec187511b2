//! Building an image into a store: the library call behind `puzzle build`.
//!
//! Per layer (skipped when its diff_id was converted before and all its
//! chunks are still stored): read the tar (decompress, verify the layer's
//! digests, spool its file contents), chunk it and store new chunks
//! (compression runs on worker threads). A tar already in chunking order is
//! chunked while it is read; any other once it is spooled, unless an earlier
//! layer had the same contents (its extents are reused). Then flatten, and
//! commit in order: packs (durable) -> index -> metadata, config, manifest
//! -> tag.
//!
//! Layers are read on a reader thread, a few ahead of the one being chunked,
//! so both cores stay busy. They are chunked and flattened in order on the
//! calling thread, so a bad entry stops the build before later layers are
//! chunked, and packs stay deterministic.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use puzzle_chunker::ChunkParams;
use puzzle_store::index::ChunkIndex;
use puzzle_store::known::{KnownFiles, StoredChunks};
use puzzle_store::meta::{SourceInfo, SourceLayer};
use puzzle_store::tree::{Extent, Layer, Tree};
use puzzle_store::writer::ChunkWriter;
use puzzle_store::{image, Store};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layer::{self, LiveSpool, SpoolMeter, Spooled};
use crate::source::{ImageSource, LayerInfo, LayerReader, LayerStats, OpenedImage};

/// How a build runs.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Compression threads.
    pub threads: usize,
    /// Set from elsewhere (a signal handler) to stop the build: it then
    /// stores nothing and returns [`Error::Cancelled`].
    pub cancel: Arc<AtomicBool>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a build is doing, for progress display. Layers are numbered from 1
/// in the image (`of` of them). Called from the reading thread and the
/// calling thread; every method defaults to nothing.
pub trait BuildProgress: Sync {
    /// The compressed bytes of the layers the build reads (the rest were
    /// converted before): its new packs come to about that much.
    fn planned(&self, _bytes_to_read: u64) {}
    /// Layer `layer` is being read: `done` of its `total` compressed bytes.
    fn reading(&self, _layer: usize, _of: usize, _done: u64, _total: u64) {}
    /// Layer `layer` is read (or its reading failed).
    fn read_done(&self, _layer: usize) {}
    /// Layer `layer` is being chunked: `done` bytes, of `total` when known
    /// (not while the layer is chunked as it is read).
    fn chunking(&self, _layer: usize, _of: usize, _done: u64, _total: Option<u64>) {}
    /// Layer `layer` is chunked.
    fn chunk_done(&self, _layer: usize) {}
    /// A one-line notice worth showing (a damaged pack found and avoided).
    fn notice(&self, _line: &str) {}
}

/// Shows nothing.
pub struct Quiet;

impl BuildProgress for Quiet {}

/// What a build did (`puzzle build --json`, type "build").
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub image: String,
    /// Where the image came from, as the caller names it (set by the
    /// caller; empty otherwise).
    pub source: String,
    pub manifest: String,
    pub metadata: String,
    pub layers: usize,
    /// Layers found already converted in the store (not read again).
    pub layers_reused: usize,
    /// Compressed layer bytes read from the source.
    pub bytes_read: u64,
    /// Uncompressed layer (tar) bytes read from the source, for the layers
    /// converted by this build (the build throughput's numerator).
    pub bytes_uncompressed: u64,
    /// Uncompressed file-content bytes chunked.
    pub bytes_chunked: u64,
    /// File-content bytes written to the temporary spool (files whose
    /// contents the store already holds are not spooled, or their space is
    /// given back once they are found stored).
    pub bytes_spooled: u64,
    /// The most spooled bytes on disk at once: the build's temporary disk
    /// besides its new packs.
    pub tmp_peak_bytes: u64,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub reused_chunks: u64,
    pub reused_chunk_bytes: u64,
    /// Compressed bytes written to packs.
    pub stored_bytes: u64,
    pub packs_written: usize,
    pub files: u64,
    /// Wall time of the build.
    pub seconds: f64,
    /// Peak resident memory of the process (set by the caller; 0 otherwise).
    pub peak_rss_bytes: u64,
}

/// Builds the image `src` describes into `store` and tags it `tag`
/// (replacing an image of that name). The caller holds the store's writer
/// lock ([`Store::lock`]) and has its index open. Nothing is stored unless
/// the whole image is: on an error or a cancel, new packs and spools are
/// deleted with their temp files.
pub fn build(
    store: &Store,
    index: &ChunkIndex,
    src: &dyn ImageSource,
    tag: &str,
    opts: &BuildOptions,
    progress: &dyn BuildProgress,
) -> Result<Summary> {
    let started = Instant::now();
    let img = src.image();
    let packs = puzzle_store::verify::check_packs(store, index)?;
    for (d, why) in &packs.damaged {
        progress.notice(&format!(
            "pack {d} is damaged ({why}): the chunks it held are stored again"
        ));
    }
    let (steps, to_read) = plan(index, img)?;
    progress.planned(to_read.iter().map(|li| li.size).sum());

    let mut b = Builder {
        store,
        index,
        img,
        params: store.config().params(),
        writer: ChunkWriter::new(store, index, opts.threads.max(1)),
        stored: StoredChunks::new(store, index),
        tree: Tree::new(),
        layers: Vec::with_capacity(img.layers.len()),
        new_records: Vec::new(),
        summary: Summary {
            image: tag.to_string(),
            layers: img.layers.len(),
            ..Summary::default()
        },
        cancel: &opts.cancel,
        progress,
    };
    b.writer.cancel_on(opts.cancel.clone());
    let meter = Arc::new(SpoolMeter::default());
    let reading = Reading::new(&to_read);
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..READERS.min(to_read.len()) {
            let (reading, to_read, meter) = (&reading, &to_read, meter.clone());
            let (cancel, index, of) = (&*opts.cancel, index, img.layers.len());
            let tmp_dir = store.tmp_dir();
            scope.spawn(move || {
                reading.run(src, to_read, &tmp_dir, index, &meter, cancel, progress, of)
            });
        }
        let chunked = steps
            .into_iter()
            .enumerate()
            .try_for_each(|(i, step)| b.step(i, step, &reading));
        reading.stop();
        chunked
    })?;
    // The last point to stop at: from here the image is committed.
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    let mut summary = b.commit(tag)?;
    summary.tmp_peak_bytes = meter.peak();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// How many layers are read at once. One: a layer's reading already keeps
/// two cores busy (decoder thread and reader thread), and the next layer to
/// chunk should be read first, not share the cores with a later one (with
/// two readers, a python3 build chunked nothing until both layers were read).
const READERS: usize = 1;

/// How many layers may wait spooled beyond the one being chunked.
const READ_AHEAD: usize = 2;

/// How one layer of the image is obtained.
enum Step {
    /// Converted before: its record from the index.
    Cached(Layer),
    /// The same diff_id as the earlier image layer at this index.
    Again(usize),
    /// Read from the source: the index into the layers to read.
    Read(usize),
}

/// What each layer needs: the first layer of each diff_id not converted
/// before is read; the others come from the index or an earlier layer.
/// Returns the steps and the layers to read.
fn plan<'i>(index: &ChunkIndex, img: &'i OpenedImage) -> Result<(Vec<Step>, Vec<&'i LayerInfo>)> {
    let mut steps: Vec<Step> = Vec::with_capacity(img.layers.len());
    let mut to_read: Vec<&LayerInfo> = Vec::new();
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, li) in img.layers.iter().enumerate() {
        if let Some(&j) = first_of.get(li.diff_id.as_str()) {
            steps.push(Step::Again(j));
            continue;
        }
        first_of.insert(&li.diff_id, i);
        match index
            .usable_layer(&li.diff_id)
            .map_err(|e| in_layer(li, e.into()))?
        {
            Some(layer) => steps.push(Step::Cached(layer)),
            None => {
                steps.push(Step::Read(to_read.len()));
                to_read.push(li);
            }
        }
    }
    Ok((steps, to_read))
}

/// `e`, saying which layer it is about.
fn in_layer(li: &LayerInfo, e: Error) -> Error {
    Error::Layer {
        number: li.index + 1,
        digest: li.digest.clone(),
        source: Box::new(e),
    }
}

/// A layer read: its spool, its reading figures, and the converted layers
/// its spool found files of ([`KnownFiles::into_layers`]).
type SpoolResult = Result<(Spooled, LayerStats, Vec<(String, Layer)>)>;

/// A one-item channel from the reader thread to the chunking one.
type Handoff<T> = (Sender<T>, Receiver<T>);

/// The reading side: layers handed from the reader thread to the chunking
/// one, each first as its live spool (as the reader starts it), then read.
struct Reading {
    /// A reader takes a token before it starts a layer; one is handed back
    /// as each layer is chunked, which bounds the layers spooled ahead.
    tokens: (Sender<()>, Receiver<()>),
    lives: Vec<Handoff<Arc<LiveSpool>>>,
    slots: Vec<Handoff<SpoolResult>>,
    next: AtomicUsize,
    stop: AtomicBool,
}

impl Reading {
    fn new(to_read: &[&LayerInfo]) -> Reading {
        let tokens = bounded::<()>(READ_AHEAD + 1);
        for _ in 0..=READ_AHEAD {
            tokens.0.send(()).expect("room for every token");
        }
        Reading {
            tokens,
            lives: to_read.iter().map(|_| bounded(1)).collect(),
            slots: to_read.iter().map(|_| bounded(1)).collect(),
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// A reader thread's work: layers in order, each once a token allows.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        src: &dyn ImageSource,
        to_read: &[&LayerInfo],
        tmp_dir: &Path,
        index: &ChunkIndex,
        meter: &Arc<SpoolMeter>,
        cancel: &AtomicBool,
        progress: &dyn BuildProgress,
        of: usize,
    ) {
        while self.tokens.1.recv().is_ok() {
            let k = self.next.fetch_add(1, Ordering::SeqCst);
            if k >= to_read.len() || self.stopped(cancel) {
                return;
            }
            let live = Arc::new(LiveSpool::metered(meter.clone()));
            let _ = self.lives[k].0.send(live.clone());
            // After the chunking side gave up ([`Reading::stop`]), a layer
            // started meanwhile is not read: nobody would chunk it.
            if self.stop.load(Ordering::SeqCst) {
                live.end(false);
                return;
            }
            let li = to_read[k];
            // A panic is reported through the slot, so the chunking thread
            // never waits for a layer that will not come.
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let stop = [&self.stop, cancel];
                let res = read_layer(src, li, tmp_dir, stop, &live, index, progress, of);
                progress.read_done(li.index + 1);
                res
            }))
            .unwrap_or_else(|_| Err(Error::Invalid("reading the layer panicked (a bug)".into())));
            // However reading ended, nothing more comes to the spool.
            live.end(false);
            let _ = self.slots[k].0.send(res);
        }
    }

    fn stopped(&self, cancel: &AtomicBool) -> bool {
        self.stop.load(Ordering::SeqCst) || cancel.load(Ordering::SeqCst)
    }

    /// The `k`th layer to read, as its live spool and then as read.
    fn live(&self, k: usize) -> Arc<LiveSpool> {
        self.lives[k]
            .1
            .recv()
            .expect("a reader sends every layer it takes")
    }

    fn read(&self, k: usize) -> SpoolResult {
        self.slots[k]
            .1
            .recv()
            .expect("a reader sends every layer it takes")
    }

    /// A layer read is chunked: another may be read ahead.
    fn chunked(&self) {
        let _ = self.tokens.0.try_send(());
    }

    /// After the chunking side is done (or failed): a reader still at work
    /// stops at its next read (the scope waits for it), also one waiting
    /// for its layer to be chunked.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, rx) in &self.lives {
            if let Ok(live) = rx.try_recv() {
                live.end(false);
            }
        }
        // A reader waiting for a token takes one and sees `stop`.
        for _ in 0..READERS {
            let _ = self.tokens.0.try_send(());
        }
    }
}

/// Reads one layer: decompress, verify its digests, spool its contents.
/// Stops early with an error once either of `stop` is set.
#[allow(clippy::too_many_arguments)]
fn read_layer(
    src: &dyn ImageSource,
    li: &LayerInfo,
    tmp_dir: &Path,
    stop: [&AtomicBool; 2],
    live: &LiveSpool,
    index: &ChunkIndex,
    progress: &dyn BuildProgress,
    of: usize,
) -> SpoolResult {
    let mut known = KnownFiles::new(index);
    let mut reader = src.open_layer(li)?;
    let spooled = {
        let mut r = Stoppable {
            inner: &mut reader,
            stop,
            shown: 0,
            report: &|done| progress.reading(li.index + 1, of, done, li.size),
        };
        layer::spool_live(&mut r, tmp_dir, &mut |_| {}, live, Some(&mut known))?
    };
    let stats = reader.finish()?;
    Ok((spooled, stats, known.into_layers()))
}

/// A layer reader that fails once either of `stop` is set and reports the
/// compressed bytes consumed so far.
struct Stoppable<'a> {
    inner: &'a mut LayerReader,
    stop: [&'a AtomicBool; 2],
    /// The position last reported (it moves a block at a time, while the
    /// tar parser reads in small pieces).
    shown: u64,
    report: &'a dyn Fn(u64),
}

impl Read for Stoppable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.iter().any(|s| s.load(Ordering::Relaxed)) {
            return Err(std::io::Error::other("build stopped"));
        }
        let n = self.inner.read(buf)?;
        let done = self.inner.compressed_read();
        if done != self.shown {
            self.shown = done;
            (self.report)(done);
        }
        Ok(n)
    }
}

/// The chunking side of a build, and what it has made so far.
struct Builder<'a> {
    store: &'a Store,
    index: &'a ChunkIndex,
    img: &'a OpenedImage,
    params: ChunkParams,
    writer: ChunkWriter<'a>,
    stored: StoredChunks<'a>,
    tree: Tree,
    /// Layer of each step, by image layer index.
    layers: Vec<Option<Layer>>,
    /// (diff_id, stream key, record, image layer index) of each layer read.
    new_records: Vec<(String, [u8; 32], Vec<u8>, usize)>,
    summary: Summary,
    cancel: &'a AtomicBool,
    progress: &'a dyn BuildProgress,
}

impl Builder<'_> {
    /// Obtains image layer `i` as `step` says and applies it to the tree.
    fn step(&mut self, i: usize, step: Step, reading: &Reading) -> Result<()> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let li = &self.img.layers[i];
        let (layer, key) = match step {
            Step::Again(j) => {
                let layer = self.layers[j].as_ref().expect("an earlier layer");
                self.tree.apply(layer).map_err(|e| in_layer(li, e.into()))?;
                self.summary.layers_reused += 1;
                self.layers.push(None);
                return Ok(());
            }
            Step::Cached(layer) => {
                self.summary.layers_reused += 1;
                (layer, None)
            }
            Step::Read(k) => {
                let (layer, key) = self.convert(li, k, reading).map_err(|e| in_layer(li, e))?;
                reading.chunked();
                (layer, Some(key))
            }
        };
        match key {
            // The index record is encoded while the layer is applied.
            Some(key) => std::thread::scope(|s| -> Result<()> {
                let record = s.spawn(|| layer.to_record());
                self.tree
                    .apply(&layer)
                    .map_err(|e| in_layer(li, e.into()))?;
                let record = record
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
                self.new_records.push((li.diff_id.clone(), key, record, i));
                Ok(())
            })?,
            None => self
                .tree
                .apply(&layer)
                .map_err(|e| in_layer(li, e.into()))?,
        }
        self.layers.push(Some(layer));
        Ok(())
    }

    /// Converts the `k`th layer to read: chunked while it is read when its
    /// tar comes in chunking order; otherwise, once it is spooled, from the
    /// layer with the same stream key or by chunking the spool. Returns the
    /// layer and its stream key.
    fn convert(
        &mut self,
        li: &LayerInfo,
        k: usize,
        reading: &Reading,
    ) -> Result<(Layer, [u8; 32])> {
        let (n, of) = (li.index + 1, self.img.layers.len());
        let progress = self.progress;
        let live = reading.live(k);
        let streamed = live.chunk(self.params, &mut self.writer, &mut |done| {
            progress.chunking(n, of, done, None)
        })?;
        progress.chunk_done(n);
        let (spooled, stats, known) = reading.read(k)?;
        let s = &mut self.summary;
        s.bytes_read += stats.compressed_bytes;
        s.bytes_uncompressed += stats.uncompressed_bytes;
        s.files += spooled.counts.files;
        s.bytes_chunked += spooled.counts.file_bytes;
        s.bytes_spooled += spooled.counts.spooled_bytes;
        let key = spooled.stream_key(self.params);
        if let Some(chunks) = streamed.filter(|c| spooled.is_stream(c)) {
            return Ok((spooled.with_stream(&chunks)?, key));
        }
        if let Some(extents) = same_stream(self.index, &key, &spooled, known)? {
            for len in chunk_lens(&extents) {
                self.writer.note_reused(len);
            }
            return Ok((spooled.reuse(extents)?, key));
        }
        let total = spooled.counts.file_bytes;
        let layer = spooled.chunk(
            self.params,
            &mut self.writer,
            &mut self.stored,
            &mut |done| progress.chunking(n, of, done, Some(total)),
        )?;
        progress.chunk_done(n);
        Ok((layer, key))
    }

    /// Commits in order: packs (durable) -> index (packs, then layer
    /// records) -> metadata, config, manifest -> tag.
    fn commit(self, tag: &str) -> Result<Summary> {
        let Builder {
            store,
            index,
            img,
            writer,
            tree,
            layers,
            new_records,
            mut summary,
            ..
        } = self;
        let ws = writer.stats();
        let written = writer.finish()?;
        if !written.packs.is_empty() {
            for p in &written.packs {
                index.add_pack(p)?;
            }
            index.flush()?;
        }
        for (diff_id, key, record, i) in &new_records {
            index.put_layer(diff_id, record)?;
            index.put_stream(key, diff_id)?;
            let layer = layers[*i].as_ref().expect("a layer read is kept");
            index.put_samples(diff_id, layer)?;
        }
        index.flush()?;
        let source_info = SourceInfo {
            manifest: img.manifest_digest.clone(),
            config: img.config_digest.clone(),
            layers: img
                .layers
                .iter()
                .map(|l| SourceLayer {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                    diff_id: l.diff_id.clone(),
                })
                .collect(),
        };
        let committed = image::commit(store, index, &tree, &source_info, &img.config_bytes, tag)?;
        summary.manifest = committed.manifest.digest.to_string();
        summary.metadata = committed.metadata.digest.to_string();
        summary.new_chunks = ws.new_chunks;
        summary.new_chunk_bytes = ws.new_bytes;
        summary.reused_chunks = ws.reused_chunks;
        summary.reused_chunk_bytes = ws.reused_bytes;
        summary.stored_bytes = written.stored_bytes;
        summary.packs_written = written.packs.len();
        Ok(summary)
    }
}

/// The extents of a layer converted before whose contents make the same
/// chunk stream (same stream key), if its record is intact, every chunk it
/// uses is still stored and its files match `spooled`'s sizes and digests.
/// `known` are layers checked that way already (taken instead of their
/// records).
fn same_stream(
    index: &ChunkIndex,
    key: &[u8; 32],
    spooled: &Spooled,
    known: Vec<(String, Layer)>,
) -> Result<Option<Vec<Vec<Extent>>>> {
    let Some(diff_id) = index.stream(key)? else {
        return Ok(None);
    };
    let earlier = match known.into_iter().find(|(d, _)| *d == diff_id) {
        Some((_, layer)) => layer,
        None => match index.usable_layer(&diff_id)? {
            Some(layer) => layer,
            None => return Ok(None),
        },
    };
    let same = earlier.files().count() == spooled.files().count()
        && earlier
            .files()
            .zip(spooled.files())
            .all(|((size, digest, _), (s, d))| size == s && *digest == d);
    Ok(same.then(|| earlier.files().map(|f| f.2.to_vec()).collect()))
}

/// Lengths of the chunks a run of extent lists uses, one per use in stream
/// order (a chunk's first extent starts at offset 0 in it).
fn chunk_lens(extents: &[Vec<Extent>]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for e in extents.iter().flatten() {
        match out.last_mut() {
            Some(len) if e.offset != 0 => *len += u64::from(e.len),
            _ => out.push(u64::from(e.len)),
        }
    }
    out
}
