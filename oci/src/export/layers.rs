//! Per-layer export: each converted layer written as a tar of its own, in
//! a fixed entry order, with its hard links' metadata as the lower layers
//! left it.

use super::*;

/// How a layer's items are ordered in its tar.
pub(super) enum Item<'a> {
    Node(&'a [u8], &'a Node, &'a Meta),
    Opaque(&'a [u8]),
    Whiteout(&'a [u8]),
}

pub(super) fn meta_at(tree: &Tree, path: &[u8], target: &[u8]) -> Result<Meta> {
    // The target's parent may go through a symlink, as when the layer was
    // applied.
    let ino = tree.find(target).ok().flatten().ok_or_else(|| {
        Error::Invalid(format!(
            "layer record: hard link {} names {}, which does not exist",
            puzzle_store::error::show_path(path),
            puzzle_store::error::show_path(target)
        ))
    })?;
    Ok(tree.inodes[ino].meta.clone())
}

/// The metadata a layer's link headers carry: their targets' (for links to
/// lower layers, as the lower layers left them). Applies the layer to
/// `tree`, the image so far.
pub(super) struct LinkMetas {
    lower: Vec<Meta>,
    inner: Vec<Meta>,
}

pub(super) fn link_metas(layer: &Layer, tree: &mut Tree) -> Result<LinkMetas> {
    let mut lower = Vec::new();
    for e in &layer.entries {
        if let LayerEntry::LowerLink { path, target } = e {
            lower.push(meta_at(tree, path, target)?);
        }
    }
    tree.apply(layer)?;
    let mut inner = Vec::new();
    for e in &layer.entries {
        if let LayerEntry::HardLink { path, target } = e {
            inner.push(meta_at(tree, path, target)?);
        }
    }
    Ok(LinkMetas { lower, inner })
}

/// Writes every known layer, on as many threads as there are cores (at
/// most one per layer; the largest layers first). Each layer has its own
/// frame cache (32 MiB). The first error stops the others.
pub(super) fn write_layers(
    store: &Store,
    k: &KnownLayers,
    blobs: &Path,
    opts: &ExportOptions<'_>,
    level: i32,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<WrittenLayer>> {
    // Link headers need the tree below each layer: settled first, in order.
    let mut tree = Tree::new();
    let mut metas = Vec::with_capacity(k.layers.len());
    for layer in &k.layers {
        metas.push(link_metas(layer, &mut tree)?);
    }
    drop(tree);
    let mut order: Vec<usize> = (0..k.layers.len()).collect();
    let size = |i: usize| -> u64 { k.layers[i].files().map(|f| f.0).sum() };
    order.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(order.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<WrittenLayer>>>> =
        k.layers.iter().map(|_| Mutex::new(None)).collect();
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (order, next, done, failed, results, metas) =
                (&order, &next, &done, &failed, &results, &metas);
            s.spawn(move || {
                let mut frames = FrameReader::new(store, 32 << 20);
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = (|| {
                        let mut blob = LayerBlob::create(blobs, opts.compression, level)?;
                        let mut chunk = |id: &ChunkId| -> Result<ChunkBytes> {
                            let loc = k
                                .locs
                                .get(id)
                                .ok_or(puzzle_store::Error::ChunkNotFound(*id))?;
                            Ok(frames.chunk(id, loc)?)
                        };
                        let check = || -> Result<()> {
                            if failed.load(Ordering::Relaxed) {
                                return Err(Error::Invalid("stopped: another layer failed".into()));
                            }
                            cancelled(opts)
                        };
                        write_layer(
                            &mut blob,
                            &k.layers[i],
                            &metas[i],
                            &mut chunk,
                            &check,
                            &mut |n| {
                                done.fetch_add(n, Ordering::Relaxed);
                            },
                        )?;
                        blob.finish(blobs)
                    })();
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
                let _ = tx.send(());
            });
        }
        drop(tx);
        // Progress from this thread: the callback need not be shared.
        let mut finished = 0;
        while finished < workers {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(()) => finished += 1,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            progress(done.load(Ordering::Relaxed));
        }
    });
    // The first error in layer order, but not one caused by another's.
    let mut out = Vec::with_capacity(results.len());
    let mut stopped = None;
    for r in results {
        match r.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(l)) => out.push(l),
            Some(Err(Error::Invalid(m))) if m.starts_with("stopped: ") => stopped = Some(m),
            Some(Err(e)) => return Err(e),
            None => stopped = Some("stopped: another layer failed".into()),
        }
    }
    match stopped {
        Some(m) => Err(Error::Invalid(m)),
        None => Ok(out),
    }
}

/// Writes one converted layer as a tar: links into lower layers first
/// (their targets as the lower layers left them), then entries, opaque
/// markers and whiteouts in path order, then links within the layer.
/// `check` is called before each entry (an error stops the layer).
pub(super) fn write_layer(
    blob: &mut LayerBlob,
    layer: &Layer,
    metas: &LinkMetas,
    chunk: &mut dyn FnMut(&ChunkId) -> Result<ChunkBytes>,
    check: &dyn Fn() -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let lower = layer
        .entries
        .iter()
        .filter_map(|e| match e {
            LayerEntry::LowerLink { path, target } => Some((path, target)),
            _ => None,
        })
        .zip(&metas.lower)
        .map(|((p, t), m)| (p, t, m));
    let inner: Vec<_> = layer
        .entries
        .iter()
        .filter_map(|e| match e {
            LayerEntry::HardLink { path, target } => Some((path, target)),
            _ => None,
        })
        .zip(&metas.inner)
        .map(|((p, t), m)| (p, t, m))
        .collect();
    for (path, target, meta) in lower {
        check()?;
        blob.header(&head(path.to_vec(), HeadKind::Link(target), meta))?;
    }
    let mut items: Vec<(Vec<u8>, Item<'_>)> = Vec::with_capacity(layer.entries.len());
    for e in &layer.entries {
        if let LayerEntry::Node { path, node, meta } = e {
            items.push((order_key(path), Item::Node(path, node, meta)));
        }
    }
    for o in &layer.opaques {
        items.push((marker_key(o, None), Item::Opaque(o)));
    }
    for w in &layer.whiteouts {
        let (dir, name) = split_parent(w);
        items.push((marker_key(dir, Some(name)), Item::Whiteout(w)));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, item) in &items {
        check()?;
        match item {
            Item::Opaque(d) => blob.header(&Head::marker(join(d, b".wh..wh..opq")))?,
            Item::Whiteout(w) => {
                let (dir, name) = split_parent(w);
                let mut n = b".wh.".to_vec();
                n.extend_from_slice(name);
                blob.header(&Head::marker(join(dir, &n)))?
            }
            Item::Node(path, node, meta) => match node {
                Node::File { size, extents, .. } => {
                    blob.header(&head(path.to_vec(), HeadKind::File { size: *size }, meta))?;
                    let mut written = 0u64;
                    for x in extents {
                        let data = chunk(&x.chunk)?;
                        let start = x.offset as usize;
                        let slice = start
                            .checked_add(x.len as usize)
                            .and_then(|end| data.get(start..end))
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "layer record: an extent of {} reaches past chunk {}",
                                    puzzle_store::error::show_path(path),
                                    x.chunk
                                ))
                            })?;
                        blob.write(slice)?;
                        written += slice.len() as u64;
                        progress(slice.len() as u64);
                    }
                    if written != *size {
                        return Err(Error::Invalid(format!(
                            "layer record: {} has {written} bytes of extents for size {size}",
                            puzzle_store::error::show_path(path)
                        )));
                    }
                    blob.pad(*size)?;
                }
                Node::Dir => blob.header(&head(dir_name(path), HeadKind::Dir, meta))?,
                Node::Symlink(t) => {
                    blob.header(&head(path.to_vec(), HeadKind::Symlink(t), meta))?
                }
                Node::CharDev { major, minor } => blob.header(&head(
                    path.to_vec(),
                    HeadKind::CharDev(*major, *minor),
                    meta,
                ))?,
                Node::BlockDev { major, minor } => blob.header(&head(
                    path.to_vec(),
                    HeadKind::BlockDev(*major, *minor),
                    meta,
                ))?,
                Node::Fifo => blob.header(&head(path.to_vec(), HeadKind::Fifo, meta))?,
            },
        }
    }
    for (path, target, meta) in inner {
        check()?;
        blob.header(&head(path.to_vec(), HeadKind::Link(target), meta))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_sort_after_their_directory_before_its_children() {
        let mut keys = [
            (order_key(b"a/b"), "a/b"),
            (order_key(b"a-c"), "a-c"),
            (order_key(b"a"), "a"),
            (marker_key(b"a", Some(b"x")), "a/.wh.x"),
            (marker_key(b"a", None), "a/.wh..wh..opq"),
            (marker_key(b"", Some(b"z")), ".wh.z"),
            (order_key(b""), "./"),
            (order_key(b"a/ "), "a/ "),
        ];
        keys.sort();
        let got: Vec<&str> = keys.iter().map(|k| k.1).collect();
        assert_eq!(
            got,
            [
                "./",
                ".wh.z",
                "a",
                "a/.wh..wh..opq",
                "a/.wh.x",
                "a/ ",
                "a/b",
                "a-c"
            ]
        );
    }
}
