//! Golden cut points: they are the storage format, so any change must fail here.

use crate::common::{random_bytes, reference_cuts, ShortReads};
use fastcdc::v2020;
use puzzle_chunker::{chunk_slice, ChunkId, ChunkParams, StreamChunker, FASTCDC_VERSION};

/// `chunk_slice(ChaCha8(seed 0) 4 MiB, ChunkParams::default())`, computed once.
const GOLDEN: [(usize, usize); 58] = [
    (0, 21634),
    (21634, 79726),
    (101360, 215124),
    (316484, 48978),
    (365462, 70546),
    (436008, 114520),
    (550528, 66153),
    (616681, 62845),
    (679526, 18993),
    (698519, 95782),
    (794301, 106437),
    (900738, 76843),
    (977581, 92090),
    (1069671, 126026),
    (1195697, 76763),
    (1272460, 195304),
    (1467764, 96850),
    (1564614, 91896),
    (1656510, 70963),
    (1727473, 73623),
    (1801096, 37960),
    (1839056, 82938),
    (1921994, 56114),
    (1978108, 41978),
    (2020086, 78093),
    (2098179, 17429),
    (2115608, 84049),
    (2199657, 19090),
    (2218747, 66691),
    (2285438, 24238),
    (2309676, 72801),
    (2382477, 33456),
    (2415933, 21647),
    (2437580, 43141),
    (2480721, 140085),
    (2620806, 17744),
    (2638550, 44259),
    (2682809, 48623),
    (2731432, 48869),
    (2780301, 39893),
    (2820194, 66770),
    (2886964, 36752),
    (2923716, 78717),
    (3002433, 90975),
    (3093408, 49755),
    (3143163, 26934),
    (3170097, 262144),
    (3432241, 19107),
    (3451348, 68291),
    (3519639, 81146),
    (3600785, 67915),
    (3668700, 86709),
    (3755409, 90273),
    (3845682, 18554),
    (3864236, 99526),
    (3963762, 122487),
    (4086249, 66790),
    (4153039, 41265),
];

/// BLAKE3 ids of the first four golden chunks.
const GOLDEN_IDS: [&str; 4] = [
    "550b33d13b2a29daa5ba75063b64c681e36404dcf83d5ba3793f79378451a7ff",
    "0601238a01d04c01dfc63dcc6e42dbb08b9ae32aba863a50c9bc41a22d97819a",
    "0e83bff16d53684b7a0fbabbf4859c2df8a78e6f1996fda481aef1fc72d6e09c",
    "cf272a282611fc569ccf65ba8de11d9385ac6838e65e8fa75736e4805797c4f5",
];

fn golden_input() -> Vec<u8> {
    random_bytes(0, 4 << 20)
}

#[test]
fn slice_cut_points() {
    let data = golden_input();
    let cuts: Vec<_> = chunk_slice(&data, ChunkParams::default()).collect();
    assert_eq!(cuts, GOLDEN);
    for (&(offset, len), want) in GOLDEN.iter().zip(GOLDEN_IDS) {
        assert_eq!(ChunkId::of(&data[offset..offset + len]).to_string(), want);
    }
}

#[test]
fn stream_cut_points() {
    let data = golden_input();
    // Reads of up to 100 KiB: many refills and buffer compactions over 4 MiB.
    let chunks = StreamChunker::new(ShortReads::new(&data, 7, 100_000), ChunkParams::default())
        .collect::<std::io::Result<Vec<_>>>()
        .unwrap();
    let cuts: Vec<_> = chunks
        .iter()
        .map(|c| (c.offset as usize, c.data.len()))
        .collect();
    assert_eq!(cuts, GOLDEN);
    for (chunk, want) in chunks.iter().zip(GOLDEN_IDS) {
        assert_eq!(ChunkId::of(&chunk.data).to_string(), want);
    }
    for (chunk, &(offset, len)) in chunks.iter().zip(&GOLDEN) {
        assert_eq!(chunk.data, data[offset..offset + len]);
    }
}

/// fastcdc's own adapters give the same cut points: our wrappers add nothing
/// to the format. `StreamCDC` differs from ours only in buffering.
#[test]
fn fastcdc_adapters_agree() {
    let data = golden_input();
    let (min, avg, max) = (16384, 65536, 262144);
    let fast: Vec<_> = v2020::FastCDC::new(&data, min, avg, max)
        .map(|c| (c.offset, c.length))
        .collect();
    assert_eq!(fast, GOLDEN);
    let stream: Vec<_> = v2020::StreamCDC::new(&data[..], min, avg, max)
        .map(|c| c.map(|c| (c.offset as usize, c.length)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stream, GOLDEN);
}

/// fastcdc's two-bytes-per-step scan matches a byte-at-a-time reference.
#[test]
fn reference_agrees_on_golden_input() {
    assert_eq!(
        reference_cuts(&golden_input(), ChunkParams::default()),
        GOLDEN
    );
}

#[test]
fn zeros_cut_at_max() {
    let data = vec![0u8; 1_000_001];
    let cuts: Vec<_> = chunk_slice(&data, ChunkParams::default()).collect();
    assert_eq!(
        cuts,
        [
            (0, 262144),
            (262144, 262144),
            (524288, 262144),
            (786432, 213569)
        ]
    );
}

#[test]
fn empty_and_tiny_inputs() {
    let p = ChunkParams::default();
    assert_eq!(chunk_slice(&[], p).count(), 0);
    assert_eq!(StreamChunker::new(&[][..], p).count(), 0);
    assert_eq!(chunk_slice(&[7], p).collect::<Vec<_>>(), [(0, 1)]);
    let one: Vec<_> = StreamChunker::new(&[7u8][..], p)
        .map(Result::unwrap)
        .collect();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].offset, &one[0].data[..]), (0, &[7u8][..]));
    // Exactly `min` bytes is one chunk; so is anything up to the first cut.
    let data = random_bytes(3, 16384);
    assert_eq!(chunk_slice(&data, p).collect::<Vec<_>>(), [(0, 16384)]);
}

/// `FASTCDC_VERSION` is the exact version the workspace pins and Cargo.lock resolves.
#[test]
fn fastcdc_version_matches_workspace() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let pin = format!("\nfastcdc = \"={FASTCDC_VERSION}\"\n");
    assert!(manifest.contains(&pin), "workspace must pin{pin}");
    let lock = std::fs::read_to_string(format!("{root}/Cargo.lock")).unwrap();
    let locked = format!("\nname = \"fastcdc\"\nversion = \"{FASTCDC_VERSION}\"\n");
    assert!(lock.contains(&locked), "Cargo.lock must resolve{locked}");
}
