//! Immutable blocks: a time range of the store persisted as a directory, read through a
//! memory map. The byte format is specified in `docs/format/block.md`.
//!
//! ```text
//!  blocks/<min>-<max>/
//!      meta.json   time range, counts, format version
//!      chunks      magic, then [len u32][count u16][encoding u8][crc32c u32][data]...
//!      index       magic, symbols, series (labels + chunk refs), crc32c of all before it
//! ```
//!
//! A block is written to a temporary directory, every file fsynced, then renamed into
//! place, so a reader never sees a half-written block. Opening verifies every checksum;
//! a block that fails is reported and moved aside by the caller.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::chunk::{XorChunk, XorIter};
use crate::dense;
use crate::head::ClosedChunk;
use crate::head_chunks::{HeadIter, SegmentFile};
use crate::labels::{Label, Labels};
use crate::matcher::Matcher;
use crate::postings::Postings;
use crate::varint::{put_uvarint, put_varint, Cursor};
use crate::wal::sync_dir;
use crate::Error;

const CHUNKS_MAGIC: &[u8; 8] = b"STRCHK03";
/// Chunks files with a checksum in every record header, still read.
const CHUNKS_MAGIC_V2: &[u8; 8] = b"STRCHK02";
const INDEX_MAGIC: &[u8; 8] = b"STRIDX02";
/// An index whose body (everything after the magic) is one compressed section.
const INDEX_MAGIC_PACKED: &[u8; 8] = b"STRIDX03";
/// A packed index whose chunk times and offsets are relative and which leaves the
/// postings to be built when the block is opened (the current layout).
const INDEX_MAGIC_RELATIVE: &[u8; 8] = b"STRIDX04";
const TOMBSTONES_MAGIC: &[u8; 8] = b"STRTMB01";
/// The largest unpacked index accepted (a claim past it is corruption).
const MAX_INDEX_BYTES: u64 = 1 << 34;
/// A record header in a `STRCHK02` file: len u32, count u16, encoding u8, crc u32.
const CHUNK_HEADER_V2: usize = 11;
/// Most samples in a dense chunk: a series' whole range in a block of up to a day at 15 s.
const DENSE_MAX_SAMPLES: usize = 8192;
/// Samples per XOR chunk, used for data the dense encoding does not suit.
const XOR_SAMPLES: usize = 120;
pub(crate) const FORMAT_VERSION: u32 = 2;

/// How a chunk in a block is encoded (the byte after its count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Xor = 1,
    /// Values of one series; the timestamps are in a [`Encoding::Times`] record.
    Dense = 2,
    /// Timestamps shared by the dense chunks of every series scraped together.
    Times = 3,
}

impl Encoding {
    fn from_byte(b: u8) -> Option<Encoding> {
        match b {
            1 => Some(Encoding::Xor),
            2 => Some(Encoding::Dense),
            3 => Some(Encoding::Times),
            _ => None,
        }
    }
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    /// First millisecond covered (inclusive).
    pub min_time: i64,
    /// End of the range covered (exclusive).
    pub max_time: i64,
    pub num_series: u64,
    pub num_chunks: u64,
    pub num_samples: u64,
    pub version: u32,
    /// Unique and increasing in the order blocks are written: where blocks overlap, the
    /// higher sequence's sample wins at a timestamp both hold.
    pub seq: u64,
    /// The sequences of the blocks merged into this one (empty for a cut from the head).
    #[serde(default)]
    pub sources: Vec<u64>,
}

/// `meta.json` on disk: the fields and a CRC32C of their compact JSON encoding.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetaFile {
    #[serde(flatten)]
    meta: BlockMeta,
    crc32c: u32,
}

fn meta_crc(meta: &BlockMeta) -> Result<u32, Error> {
    serde_json::to_vec(meta)
        .map(|b| crc32c::crc32c(&b))
        .map_err(|e| Error::Corrupt(format!("encoding meta.json: {e}")))
}

/// A chunk as a query reads it: from the head's memory or file, or from a block's
/// memory map.
#[derive(Clone, Debug)]
pub(crate) enum ChunkView {
    Head(Arc<ClosedChunk>),
    /// A chunk in a head chunk file: XOR, or decimal when `count` has the
    /// [`crate::decimal::DECIMAL`] bit.
    HeadFile {
        file: Arc<SegmentFile>,
        start: u32,
        len: u16,
        count: u16,
        min_t: i64,
        max_t: i64,
    },
    Mapped {
        file: Arc<Mmap>,
        chunk: ChunkMeta,
    },
    /// A head series' out-of-order samples, time-ordered.
    Samples(Arc<[(i64, f64)]>),
}

/// The samples of a [`ChunkView`]: XOR and decimal chunks decode as they go, dense ones
/// at once.
pub(crate) enum ChunkIter<'a> {
    Encoded(HeadIter<'a>),
    Decoded(std::vec::IntoIter<(i64, f64)>),
    Slice(std::iter::Copied<std::slice::Iter<'a, (i64, f64)>>),
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        match self {
            ChunkIter::Encoded(it) => it.next(),
            ChunkIter::Decoded(it) => it.next(),
            ChunkIter::Slice(it) => it.next(),
        }
    }
}

impl ChunkView {
    /// `f` over the samples of a [`ChunkView::HeadFile`], decoded straight from the
    /// file's read window; not called for other views.
    pub(crate) fn with_head_file<R>(&self, f: impl FnOnce(HeadIter<'_>) -> R) -> Option<R> {
        let ChunkView::HeadFile {
            file,
            start,
            len,
            count,
            ..
        } = self
        else {
            return None;
        };
        Some(file.with_bytes(*start, *len, |bytes| f(HeadIter::new(bytes, *count))))
    }

    /// The first and last timestamp.
    pub(crate) fn time_range(&self) -> (i64, i64) {
        match self {
            ChunkView::Head(c) => (c.min_t, c.max_t),
            ChunkView::HeadFile { min_t, max_t, .. } => (*min_t, *max_t),
            ChunkView::Mapped { chunk, .. } => (chunk.min_t, chunk.max_t),
            ChunkView::Samples(s) => (
                s.first().map_or(i64::MAX, |s| s.0),
                s.last().map_or(i64::MIN, |s| s.0),
            ),
        }
    }

    /// Decodes a dense block chunk straight onto the end of `out`; `false` (nothing
    /// appended) for any other chunk. A damaged chunk appends nothing, as its iterator
    /// yields nothing.
    pub(crate) fn append_dense(&self, out: &mut Vec<(i64, f64)>) -> bool {
        let ChunkView::Mapped { file, chunk: c } = self else {
            return false;
        };
        if c.encoding != Encoding::Dense {
            return false;
        }
        let from = out.len();
        let data = file.get(c.start..c.start + c.len).unwrap_or(&[]);
        let decoded =
            decoded_times(file, c, out).and_then(|()| dense::decode_values(data, &mut out[from..]));
        if let Err(e) = decoded {
            tracing::error!("chunk at {}: {e}", c.start);
            out.truncate(from);
        }
        true
    }

    pub(crate) fn iter(&self) -> ChunkIter<'_> {
        match self {
            ChunkView::Head(c) => ChunkIter::Encoded(c.iter()),
            ChunkView::HeadFile { .. } => ChunkIter::Decoded(
                self.with_head_file(|it| it.collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter(),
            ),
            ChunkView::Samples(s) => ChunkIter::Slice(s.iter().copied()),
            ChunkView::Mapped { file, chunk: c } => {
                let data = file.get(c.start..c.start + c.len).unwrap_or(&[]);
                if c.encoding == Encoding::Xor {
                    return ChunkIter::Encoded(XorIter::new(data, c.count).into());
                }
                let mut out = Vec::with_capacity(usize::from(c.count));
                let decoded = decoded_times(file, c, &mut out)
                    .and_then(|()| dense::decode_values(data, &mut out));
                if let Err(e) = decoded {
                    // Checksums were verified at open: only a bug or a disk going bad
                    // gets here. The chunk reads as empty rather than as wrong numbers.
                    tracing::error!("chunk at {}: {e}", c.start);
                    out.clear();
                }
                ChunkIter::Decoded(out.into_iter())
            }
        }
    }
}

/// `samples` as XOR chunks, one for each `samples.chunks(XOR_SAMPLES)`.
fn xor_chunks(samples: &[(i64, f64)]) -> Vec<Box<[u8]>> {
    samples
        .chunks(XOR_SAMPLES)
        .map(|small| {
            let mut c = XorChunk::new();
            for &(t, v) in small {
                c.append(t, v);
            }
            c.into_encoded().0
        })
        .collect()
}

/// Whether a chunk whose first and last samples are at `first` and `last` holds a
/// sample in `[lo, hi]`: known from those two, unless the chunk reaches past both ends,
/// when `samples` are decoded.
pub(crate) fn holds_sample_in<I: Iterator<Item = (i64, f64)>>(
    first: i64,
    last: i64,
    lo: i64,
    hi: i64,
    samples: impl FnOnce() -> I,
) -> bool {
    if last < lo || first > hi {
        return false;
    }
    first >= lo || last <= hi || samples().any(|(t, _)| t >= lo && t <= hi)
}

/// Time sections decoded lately on this thread. The series of one scrape share a time
/// section, and a query reads them one after the other (or, sorted by labels, a few
/// hosts apart): each is decoded once instead of once per series.
type TimesCache = crate::ring::Ring<CachedTimes, TIMES_CACHED>;

/// A map (weakly held: a deleted block's map still goes; while the weak reference lives
/// its address is not reused), a time section's offset in it and count, its timestamps.
type CachedTimes = (std::sync::Weak<Mmap>, usize, u16, std::rc::Rc<[i64]>);

const TIMES_CACHED: usize = 64;

/// Appends the timestamps of dense chunk `c` of `file` to `out` (values 0).
fn decoded_times(file: &Arc<Mmap>, c: &ChunkMeta, out: &mut Vec<(i64, f64)>) -> Result<(), Error> {
    thread_local! {
        static CACHE: std::cell::RefCell<TimesCache> =
            const { std::cell::RefCell::new(TimesCache::new()) };
    }
    let ptr = Arc::as_ptr(file);
    let hit = CACHE.with_borrow(|cache| {
        cache
            .iter()
            .find(|(map, start, count, _)| {
                *start == c.times_start
                    && *count == c.count
                    && std::sync::Weak::as_ptr(map) == ptr
                    && map.strong_count() > 0
            })
            .map(|e| std::rc::Rc::clone(&e.3))
    });
    if let Some(times) = hit {
        out.extend(times.iter().map(|&t| (t, 0.0)));
        return Ok(());
    }
    let section = file
        .get(c.times_start..c.times_start + c.times_len)
        .unwrap_or(&[]);
    let from = out.len();
    dense::decode_times(section, usize::from(c.count), out)?;
    let times: std::rc::Rc<[i64]> = out[from..].iter().map(|s| s.0).collect();
    CACHE.with_borrow_mut(|cache| {
        cache.insert((Arc::downgrade(file), c.times_start, c.count, times));
    });
    Ok(())
}

/// Where one chunk of a series lies in the chunks file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkMeta {
    min_t: i64,
    max_t: i64,
    /// Offset of the chunk's data (after its header), past the time reference for
    /// dense chunks.
    start: usize,
    len: usize,
    count: u16,
    encoding: Encoding,
    /// The data of the times record of a dense chunk.
    times_start: usize,
    times_len: usize,
}

struct BlockSeries {
    labels: Labels,
    chunks: Vec<ChunkMeta>,
}

/// How many series ahead [`Block::select_labels`] loads a series' chunk list into the
/// cache: the lists lie apart on the heap, and loads started together overlap.
const CHUNK_LISTS_AHEAD: usize = 8;

/// Deleted time ranges (inclusive) by series index in a block.
pub(crate) type Tombstones = std::collections::BTreeMap<u32, Vec<(i64, i64)>>;

/// An open block.
pub(crate) struct Block {
    pub(crate) meta: BlockMeta,
    pub(crate) dir: PathBuf,
    pub(crate) tombstones: Tombstones,
    chunks: Arc<Mmap>,
    series: Vec<BlockSeries>,
    postings: Postings,
    pub(crate) bytes: u64,
    /// Whether the series are in label order, as the format has them: a selection's
    /// list then needs no sorting, and can be split by labels.
    pub(crate) sorted: bool,
}

/// The directory name of a block.
pub(crate) fn block_name(meta: &BlockMeta) -> String {
    format!(
        "{:016}-{:016}-{:08}",
        meta.min_time, meta.max_time, meta.seq
    )
}

/// What identifies a block being written: its range, sequence and merge sources.
#[derive(Debug, Clone)]
pub(crate) struct NewBlock {
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    pub(crate) seq: u64,
    pub(crate) sources: Vec<u64>,
}

/// Writes a block of `series` (labels sorted, samples in time order within the new
/// block's range) into `blocks_dir`. Returns its directory.
pub(crate) fn write_block(
    blocks_dir: &Path,
    series: &[(Labels, Vec<(i64, f64)>)],
    new: NewBlock,
) -> Result<PathBuf, Error> {
    let labels: Vec<&Labels> = series.iter().map(|(l, _)| l).collect();
    write_block_with(
        blocks_dir,
        &labels,
        |i| Cow::Borrowed(&series[i].1[..]),
        new,
    )
}

/// [`write_block`] with each series' samples fetched when its turn comes (`samples(i)` for
/// `labels[i]`, labels sorted), so that only one series' samples are in memory at a time.
/// Series without samples are left out.
pub(crate) fn write_block_with<'a>(
    blocks_dir: &Path,
    labels: &[&Labels],
    samples_of: impl FnMut(usize) -> Cow<'a, [(i64, f64)]>,
    new: NewBlock,
) -> Result<PathBuf, Error> {
    write_block_laid_out(blocks_dir, labels, samples_of, new, IndexLayout::Relative)
}

/// [`write_block_with`] with the index in `layout`.
fn write_block_laid_out<'a>(
    blocks_dir: &Path,
    labels: &[&Labels],
    mut samples_of: impl FnMut(usize) -> Cow<'a, [(i64, f64)]>,
    new: NewBlock,
    layout: IndexLayout,
) -> Result<PathBuf, Error> {
    fs::create_dir_all(blocks_dir).map_err(|e| Error::io(blocks_dir, e))?;
    let NewBlock {
        min_time,
        max_time,
        seq,
        sources,
    } = new;
    // The directory is named by range and sequence only, so the chunks file can be
    // written (streamed, not held in memory) before the index is known.
    let name = block_name(&BlockMeta {
        min_time,
        max_time,
        num_series: 0,
        num_chunks: 0,
        num_samples: 0,
        version: FORMAT_VERSION,
        seq,
        sources: Vec::new(),
    });
    let tmp = blocks_dir.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // Chunks file, remembering where each series' chunks went.
    let mut chunks_file = ChunksOut::create(tmp.join("chunks"))?;
    // Every series' chunk references, one after another; `ends[i]`: where the i-th
    // written series' end.
    let mut refs: Vec<(i64, i64, u64)> = Vec::new();
    let mut ends: Vec<usize> = Vec::with_capacity(labels.len());
    // The series written (with samples), by position in `labels`.
    let mut kept: Vec<&Labels> = Vec::with_capacity(labels.len());
    let mut num_samples = 0u64;
    let mut data = Vec::new();
    // The number of each time section written, by content: series scraped together share
    // one.
    let mut times_at: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    let mut remembered = RememberedTimes::default();
    for (i, &series_labels) in labels.iter().enumerate() {
        let samples = samples_of(i);
        if samples.is_empty() {
            continue;
        }
        // Even parts of at most DENSE_MAX_SAMPLES, so no part is a poorly packed stub.
        let parts = samples.len().div_ceil(DENSE_MAX_SAMPLES).max(1);
        let per_part = samples.len().div_ceil(parts).max(1);
        for part in samples.chunks(per_part) {
            let times = remembered.encode(part)?;
            // Time sections are referred to by their number in the file: the one this
            // section has, or will have once written.
            let known = times_at.get(&times).copied();
            let at = known.unwrap_or(times_at.len() as u64);
            let dense_data = |values: &[u8], data: &mut Vec<u8>| {
                data.clear();
                put_uvarint(data, at);
                data.extend_from_slice(values);
            };
            let dense = match dense::encode_values(part)? {
                Some(values) => {
                    dense_data(&values, &mut data);
                    true
                }
                None => {
                    // Values that are not decimals: their bit patterns with the time
                    // section, or XOR chunks, whichever is smaller on disk.
                    dense_data(&dense::encode_float_values(part)?, &mut data);
                    let n = part.len() as u16;
                    let dense_len = data.len()
                        + record_header_len(data.len(), Encoding::Dense, n)
                        + if known.is_some() {
                            0
                        } else {
                            times.len() + record_header_len(times.len(), Encoding::Times, n)
                        };
                    let xors = xor_chunks(part);
                    let xor_len: usize = part
                        .chunks(XOR_SAMPLES)
                        .zip(&xors)
                        .map(|(small, x)| {
                            x.len() + record_header_len(x.len(), Encoding::Xor, small.len() as u16)
                        })
                        .sum();
                    if dense_len >= xor_len {
                        for (small, xor) in part.chunks(XOR_SAMPLES).zip(xors) {
                            refs.push(chunks_file.put(small, Encoding::Xor, &xor)?);
                        }
                    }
                    dense_len < xor_len
                }
            };
            if dense {
                if known.is_none() {
                    chunks_file.put(part, Encoding::Times, &times)?;
                    times_at.insert(times, at);
                }
                refs.push(chunks_file.put(part, Encoding::Dense, &data)?);
            }
            num_samples += part.len() as u64;
        }
        ends.push(refs.len());
        kept.push(series_labels);
    }
    let series = kept;

    let body = index_body(&series, &ends, &refs, min_time, layout)?;
    // The body compressed as one section (symbols and chunk times repeat): the length
    // it unpacks to, then the section.
    let mut index: Vec<u8> = match layout {
        IndexLayout::Absolute => INDEX_MAGIC_PACKED,
        IndexLayout::Relative => INDEX_MAGIC_RELATIVE,
    }
    .to_vec();
    put_uvarint(&mut index, body.len() as u64);
    index.extend_from_slice(&dense::pack_index(body)?);
    let crc = crc32c::crc32c(&index);
    index.extend_from_slice(&crc.to_le_bytes());

    let meta = BlockMeta {
        min_time,
        max_time,
        num_series: series.len() as u64,
        num_chunks: refs.len() as u64,
        num_samples,
        version: FORMAT_VERSION,
        seq,
        sources,
    };
    let crc32c = meta_crc(&meta)?;
    let meta_json = serde_json::to_vec_pretty(&MetaFile { meta, crc32c })
        .map_err(|e| Error::Corrupt(format!("encoding meta.json: {e}")))?;
    chunks_file.finish()?;
    for (file, bytes) in [("index", &index), ("meta.json", &meta_json)] {
        let path = tmp.join(file);
        let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&path, e))?;
        f.sync_all().map_err(|e| Error::io(&path, e))?;
    }
    sync_dir(&tmp)?;
    crate::fault::point("block-written");
    let dir = blocks_dir.join(&name);
    fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    sync_dir(blocks_dir)?;
    crate::fault::point("block-renamed");
    Ok(dir)
}

/// A block's chunks file while it is written: buffered, with the offset of the next
/// record and the checksum of everything so far.
struct ChunksOut {
    file: std::io::BufWriter<File>,
    path: PathBuf,
    offset: u64,
    crc: u32,
}

impl ChunksOut {
    fn create(path: PathBuf) -> Result<Self, Error> {
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = Self {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            path,
            offset: 0,
            crc: 0,
        };
        out.write(CHUNKS_MAGIC)?;
        Ok(out)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.offset += bytes.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        Ok(())
    }

    /// Appends one chunk record for `samples` (at most `u16::MAX`, not empty) and
    /// returns its time range and offset.
    fn put(
        &mut self,
        samples: &[(i64, f64)],
        encoding: Encoding,
        data: &[u8],
    ) -> Result<(i64, i64, u64), Error> {
        let offset = self.offset;
        let mut header = Vec::with_capacity(MAX_CHUNK_HEADER);
        put_record_header(&mut header, data.len(), encoding, samples.len() as u16);
        self.write(&header)?;
        self.write(data)?;
        let min_t = samples.first().map_or(0, |s| s.0);
        let max_t = samples.last().map_or(0, |s| s.0);
        Ok((min_t, max_t, offset))
    }

    /// Writes the checksum of the whole file after the records, then flushes and syncs.
    fn finish(mut self) -> Result<(), Error> {
        let crc = self.crc;
        self.write(&crc.to_le_bytes())?;
        let path = self.path;
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&path, e))
    }
}

/// The longest record header: a `uvarint` length, the encoding, a `uvarint` count.
const MAX_CHUNK_HEADER: usize = 10 + 1 + 3;

/// How an index body lays out chunk references and postings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexLayout {
    /// `STRIDX02`/`03`: absolute chunk times and offsets, then the postings.
    // Written only by tests, which check that blocks written before still read.
    #[cfg_attr(not(test), allow(dead_code))]
    Absolute,
    /// `STRIDX04`: a base time, chunk times from it and offsets from the previous
    /// chunk's; no postings (they follow from the series' labels).
    Relative,
}

/// The body of an index (everything after its magic): symbols, series with their chunk
/// references (`refs[ends[i-1]..ends[i]]` for the i-th series) and, in the absolute
/// layout, postings.
fn index_body(
    series: &[&Labels],
    ends: &[usize],
    refs: &[(i64, i64, u64)],
    base: i64,
    layout: IndexLayout,
) -> Result<Vec<u8>, Error> {
    // Deduplicated as they are gathered: a block repeats a few thousand strings over
    // hundreds of thousands of labels.
    let mut symbols: Vec<&str> = series
        .iter()
        .flat_map(|l| l.iter().flat_map(|l| [&*l.name, &*l.value]))
        .collect::<std::collections::HashSet<&str>>()
        .into_iter()
        .collect();
    symbols.sort_unstable();
    let mut body: Vec<u8> = Vec::new();
    put_uvarint(&mut body, symbols.len() as u64);
    for s in &symbols {
        put_uvarint(&mut body, s.len() as u64);
        body.extend_from_slice(s.as_bytes());
    }
    let sym = |s: &str| symbols.binary_search(&s).unwrap_or(0) as u64;
    put_uvarint(&mut body, series.len() as u64);
    if layout == IndexLayout::Relative {
        put_varint(&mut body, base);
    }
    let (mut from, mut previous_offset) = (0, 0u64);
    for (labels, &end) in series.iter().zip(ends) {
        let chunks = &refs[from..end];
        from = end;
        put_uvarint(&mut body, labels.len() as u64);
        for l in labels.iter() {
            put_uvarint(&mut body, sym(&l.name));
            put_uvarint(&mut body, sym(&l.value));
        }
        put_uvarint(&mut body, chunks.len() as u64);
        for &(min_t, max_t, offset) in chunks {
            match layout {
                IndexLayout::Absolute => {
                    put_varint(&mut body, min_t);
                    put_varint(&mut body, max_t - min_t);
                    put_uvarint(&mut body, offset);
                }
                IndexLayout::Relative => {
                    // Most chunks of a block start near its start and follow one another
                    // in the file: small numbers that repeat, which compress.
                    put_varint(&mut body, min_t.wrapping_sub(base));
                    put_varint(&mut body, max_t - min_t);
                    put_varint(&mut body, offset.wrapping_sub(previous_offset) as i64);
                    previous_offset = offset;
                }
            }
        }
    }
    if layout == IndexLayout::Relative {
        return Ok(body);
    }
    // Postings: for every label pair, the bitmap of the series (by position) carrying it.
    let mut postings: std::collections::BTreeMap<(u64, u64), roaring::RoaringBitmap> =
        std::collections::BTreeMap::new();
    for (i, labels) in series.iter().enumerate() {
        for l in labels.iter() {
            postings
                .entry((sym(&l.name), sym(&l.value)))
                .or_default()
                .insert(i as u32);
        }
    }
    put_uvarint(&mut body, postings.len() as u64);
    let mut bitmap = Vec::new();
    for ((name, value), p) in &postings {
        put_uvarint(&mut body, *name);
        put_uvarint(&mut body, *value);
        bitmap.clear();
        p.serialize_into(&mut bitmap)
            .map_err(|e| Error::Corrupt(format!("encoding postings: {e}")))?;
        put_uvarint(&mut body, bitmap.len() as u64);
        body.extend_from_slice(&bitmap);
    }
    Ok(body)
}

/// Appends a record header: the data's length, the encoding, and the number of samples,
/// except for dense values, whose count is their time section's.
fn put_record_header(out: &mut Vec<u8>, len: usize, encoding: Encoding, count: u16) {
    put_uvarint(out, len as u64);
    out.push(encoding as u8);
    if encoding != Encoding::Dense {
        put_uvarint(out, u64::from(count));
    }
}

/// The length of the header [`put_record_header`] writes.
fn record_header_len(len: usize, encoding: Encoding, count: u16) -> usize {
    let mut header = Vec::with_capacity(MAX_CHUNK_HEADER);
    put_record_header(&mut header, len, encoding, count);
    header.len()
}

/// One record of a chunks file: where its data lies, and its header's fields.
struct Record {
    encoding: Encoding,
    /// Samples in the record; 0 for dense values in a `STRCHK03` file, whose count is
    /// their time section's.
    count: u16,
    start: usize,
    len: usize,
}

/// Reads the record header at `at` of a `STRCHK03` file (bounds checked, not the data).
fn record_v3(map: &[u8], at: usize) -> Result<Record, String> {
    let header = map
        .get(at..map.len().min(at.saturating_add(MAX_CHUNK_HEADER)))
        .ok_or("out of the file")?;
    let mut r = Cursor::new(header);
    let len = r.uvarint().ok_or("torn header")?;
    let byte = *r.bytes(1).and_then(|b| b.first()).ok_or("torn header")?;
    let encoding = Encoding::from_byte(byte).ok_or(format!("unknown encoding {byte}"))?;
    let count = if encoding == Encoding::Dense {
        0
    } else {
        u16::try_from(r.uvarint().ok_or("torn header")?).map_err(|_| "bad count")?
    };
    let start = at + (header.len() - r.rest().len());
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| start.checked_add(len).is_some_and(|end| end <= map.len()))
        .ok_or("torn")?;
    Ok(Record {
        encoding,
        count,
        start,
        len,
    })
}

/// The records of a `STRCHK03` file, listed once its checksum is verified.
struct ChunksLayout {
    /// Where every record starts, in order.
    starts: Vec<usize>,
    /// Data start, length and count of each time section, by number.
    times: Vec<(usize, usize, u16)>,
}

impl ChunksLayout {
    /// Walks the records of `map` in order, checking the file's checksum as it goes
    /// and giving the pages read back to the page cache every [`RELEASE_EVERY`] bytes.
    fn scan(map: &Mmap) -> Result<ChunksLayout, String> {
        let end = map
            .len()
            .checked_sub(4)
            .filter(|&end| end >= CHUNKS_MAGIC.len())
            .ok_or("too short")?;
        let (mut starts, mut times) = (Vec::new(), Vec::new());
        let mut crc = crc32c::crc32c(&map[..CHUNKS_MAGIC.len()]);
        let (mut at, mut checked) = (CHUNKS_MAGIC.len(), 0usize);
        while at < end {
            let r = record_v3(&map[..end], at).map_err(|why| format!("record at {at}: {why}"))?;
            crc = crc32c::crc32c_append(crc, &map[at..r.start + r.len]);
            starts.push(at);
            if r.encoding == Encoding::Times {
                times.push((r.start, r.len, r.count));
            }
            checked += r.start + r.len - at;
            if checked >= RELEASE_EVERY {
                release_pages(map);
                checked = 0;
            }
            at = r.start + r.len;
        }
        release_pages(map);
        let want = u32::from_le_bytes([map[end], map[end + 1], map[end + 2], map[end + 3]]);
        if crc != want {
            return Err("checksum mismatch".into());
        }
        Ok(ChunksLayout { starts, times })
    }

    /// The record starting at `at`, which must be one.
    fn record(&self, map: &[u8], at: usize) -> Result<Record, String> {
        if self.starts.binary_search(&at).is_err() {
            return Err("not the start of a record".into());
        }
        record_v3(map, at)
    }

    /// Data start, length and count of time section number `n`.
    fn times(&self, n: u64) -> Result<(usize, usize, u16), String> {
        usize::try_from(n)
            .ok()
            .and_then(|n| self.times.get(n).copied())
            .ok_or_else(|| format!("no time section {n}"))
    }
}

/// Reads and checks the record at `at` of a `STRCHK02` file.
fn record_v2(map: &[u8], at: usize) -> Result<Record, String> {
    let header = map
        .get(at..at.saturating_add(CHUNK_HEADER_V2))
        .ok_or("out of the file")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let count = u16::from_le_bytes([header[4], header[5]]);
    let encoding =
        Encoding::from_byte(header[6]).ok_or(format!("unknown encoding {}", header[6]))?;
    let crc = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
    let start = at + CHUNK_HEADER_V2;
    let data = map.get(start..start + len).ok_or("torn")?;
    if crc32c::crc32c(data) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(Record {
        encoding,
        count,
        start,
        len,
    })
}

/// Data start, length and count of the times record at `at` of a `STRCHK02` file,
/// checked (once per record) to be one, intact, of `count` timestamps.
fn times_record(
    map: &[u8],
    at: usize,
    count: u16,
    verified: &mut std::collections::HashMap<usize, (usize, usize, u16)>,
) -> Result<(usize, usize, u16), String> {
    let (start, len, n) = match verified.get(&at) {
        Some(&known) => known,
        None => {
            let r = record_v2(map, at).map_err(|why| format!("times record at {at}: {why}"))?;
            if r.encoding != Encoding::Times {
                return Err(format!("record at {at} is not a times record"));
            }
            verified.insert(at, (r.start, r.len, r.count));
            (r.start, r.len, r.count)
        }
    };
    if n != count {
        return Err(format!(
            "times record at {at} has {n} timestamps, not {count}"
        ));
    }
    Ok((start, len, n))
}

/// Reads a block's `tombstones` file, if it has one.
fn read_tombstones(dir: &Path, num_series: usize) -> Result<Tombstones, Error> {
    let path = dir.join("tombstones");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tombstones::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |why: &str| Error::Corrupt(format!("{}: {why}", path.display()));
    if bytes.len() < TOMBSTONES_MAGIC.len() + 4
        || &bytes[..TOMBSTONES_MAGIC.len()] != TOMBSTONES_MAGIC
    {
        return Err(bad("bad magic"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Cursor::new(&body[TOMBSTONES_MAGIC.len()..]);
    let n = r.uvarint().ok_or_else(|| bad("malformed"))?;
    let mut out = Tombstones::new();
    for _ in 0..n {
        let series = r.uvarint().ok_or_else(|| bad("malformed"))?;
        let mint = r.varint().ok_or_else(|| bad("malformed"))?;
        let maxt = r.varint().ok_or_else(|| bad("malformed"))?;
        let series = u32::try_from(series)
            .ok()
            .filter(|&s| (s as usize) < num_series)
            .ok_or_else(|| bad("names a series the block does not have"))?;
        out.entry(series).or_default().push((mint, maxt));
    }
    if !r.done() {
        return Err(bad("malformed"));
    }
    Ok(out)
}

/// Replaces a block's `tombstones` file (written aside, fsynced, renamed).
pub(crate) fn write_tombstones(dir: &Path, tombstones: &Tombstones) -> Result<(), Error> {
    let mut bytes = TOMBSTONES_MAGIC.to_vec();
    let n: usize = tombstones.values().map(Vec::len).sum();
    put_uvarint(&mut bytes, n as u64);
    for (&series, ranges) in tombstones {
        for &(mint, maxt) in ranges {
            put_uvarint(&mut bytes, u64::from(series));
            put_varint(&mut bytes, mint);
            put_varint(&mut bytes, maxt);
        }
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("tombstones.tmp");
    let path = dir.join("tombstones");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// Time sections encoded for a block being written, by their timestamps: the series
/// scraped together share a few of them, and hashing and comparing timestamps costs less
/// than encoding and compressing them again. At most [`TIMES_REMEMBERED`], so a block of
/// series scraped apart keeps no more copies than that.
#[derive(Default)]
struct RememberedTimes {
    by_hash: std::collections::HashMap<u64, Vec<usize>>,
    sections: Vec<(Vec<i64>, Vec<u8>)>,
}

const TIMES_REMEMBERED: usize = 256;

impl RememberedTimes {
    /// The time section of `part`, as [`dense::encode_times`] writes it.
    fn encode(&mut self, part: &[(i64, f64)]) -> Result<Vec<u8>, Error> {
        let mut h = crate::labels::Hash64::new();
        h.write_u64(part.len() as u64);
        for &(t, _) in part {
            h.write_u64(t as u64);
        }
        let hash = h.finish();
        let same =
            |raw: &[i64]| raw.len() == part.len() && raw.iter().zip(part).all(|(a, b)| *a == b.0);
        if let Some(&k) = self
            .by_hash
            .get(&hash)
            .and_then(|ks| ks.iter().find(|&&k| same(&self.sections[k].0)))
        {
            return Ok(self.sections[k].1.clone());
        }
        let times = dense::encode_times(part)?;
        if self.sections.len() < TIMES_REMEMBERED {
            self.by_hash
                .entry(hash)
                .or_default()
                .push(self.sections.len());
            self.sections
                .push((part.iter().map(|s| s.0).collect(), times.clone()));
        }
        Ok(times)
    }
}

impl Block {
    /// Opens a block, verifying `meta.json`, the index checksum and every chunk checksum.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> Result<Block, Error> {
        Self::open_interned(dir, |_| {}, |_| None)
    }

    /// Opens a block; `intern` may replace its symbols with equal strings shared with
    /// others (the head's), so that label comparisons between them see one pointer, and
    /// `share` may return an equal label set to hold instead of a series' own (the head's
    /// handle of that series: sets compare by address then, and are stored once).
    pub(crate) fn open_interned(
        dir: &Path,
        intern: impl FnOnce(&mut [Arc<str>]),
        share: impl Fn(&Labels) -> Option<Labels>,
    ) -> Result<Block, Error> {
        let corrupt = |file: &str, why: String| {
            Error::Corrupt(format!("{}: {why}", dir.join(file).display()))
        };
        let meta_path = dir.join("meta.json");
        let file: MetaFile =
            serde_json::from_slice(&fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?)
                .map_err(|e| corrupt("meta.json", e.to_string()))?;
        if meta_crc(&file.meta)? != file.crc32c {
            return Err(corrupt("meta.json", "checksum mismatch".into()));
        }
        let meta = file.meta;
        if meta.version != FORMAT_VERSION {
            return Err(corrupt(
                "meta.json",
                format!("unknown version {}", meta.version),
            ));
        }
        let index_path = dir.join("index");
        let index = fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let magic = index.get(..INDEX_MAGIC.len());
        let relative = magic == Some(INDEX_MAGIC_RELATIVE);
        if index.len() < INDEX_MAGIC.len() + 4
            || (magic != Some(INDEX_MAGIC) && magic != Some(INDEX_MAGIC_PACKED) && !relative)
        {
            return Err(corrupt("index", "bad magic".into()));
        }
        let (body, crc) = index.split_at(index.len() - 4);
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != want {
            return Err(corrupt("index", "checksum mismatch".into()));
        }
        // A packed index: the same body as an unpacked one once decompressed.
        let unpacked;
        let body = if magic == Some(INDEX_MAGIC_PACKED) || relative {
            let mut r = Cursor::new(&body[INDEX_MAGIC.len()..]);
            let len = r
                .uvarint()
                .ok_or_else(|| corrupt("index", "malformed".into()))?;
            let len = usize::try_from(len)
                .ok()
                .filter(|_| len <= MAX_INDEX_BYTES)
                .ok_or_else(|| corrupt("index", format!("claims {len} bytes")))?;
            let raw = dense::unpack_section(r.rest(), len)?;
            if raw.len() != len {
                return Err(corrupt("index", "malformed".into()));
            }
            let mut b = Vec::with_capacity(INDEX_MAGIC.len() + raw.len());
            b.extend_from_slice(INDEX_MAGIC);
            b.extend_from_slice(&raw);
            unpacked = b;
            &unpacked[..]
        } else {
            body
        };
        let chunks_path = dir.join("chunks");
        let file = File::open(&chunks_path).map_err(|e| Error::io(&chunks_path, e))?;
        // SAFETY: block files are never modified after they are renamed into place; the
        // map is read-only and lives as long as the block (removal unlinks the file but
        // keeps the mapping valid).
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&chunks_path, e))?;
        // The current format is checked whole here, and its records listed; a `STRCHK02`
        // file is checked record by record as the index refers to them.
        let layout = match map.get(..CHUNKS_MAGIC.len()) {
            Some(m) if m == CHUNKS_MAGIC => {
                Some(ChunksLayout::scan(&map).map_err(|why| corrupt("chunks", why))?)
            }
            Some(m) if m == CHUNKS_MAGIC_V2 => None,
            _ => return Err(corrupt("chunks", "bad magic".into())),
        };

        let mut r = Cursor::new(body);
        r.bytes(INDEX_MAGIC.len())
            .ok_or_else(|| corrupt("index", "malformed".into()))?;
        let bad = || corrupt("index", "malformed".into());
        let nsym = r.uvarint().ok_or_else(bad)? as usize;
        let mut symbols: Vec<Arc<str>> = Vec::with_capacity(nsym.min(body.len()));
        for _ in 0..nsym {
            let n = r.uvarint().ok_or_else(bad)? as usize;
            let b = r.bytes(n).ok_or_else(bad)?;
            symbols.push(Arc::from(std::str::from_utf8(b).map_err(|_| bad())?));
        }
        intern(&mut symbols);
        let sym = |i: u64| symbols.get(i as usize).cloned();
        let nseries = r.uvarint().ok_or_else(bad)? as usize;
        let base = if relative {
            r.varint().ok_or_else(bad)?
        } else {
            0
        };
        let mut previous_offset = 0u64;
        // Relative layout: the series (by position) of each label pair, by symbol.
        let mut pairs: std::collections::HashMap<(u64, u64), Vec<u32>> =
            std::collections::HashMap::new();
        let mut series = Vec::with_capacity(nseries.min(body.len()));
        let mut postings = Postings::default();
        let mut verified_times: std::collections::HashMap<usize, (usize, usize, u16)> =
            std::collections::HashMap::new();
        let mut checked = 0usize;
        for _ in 0..nseries {
            let nl = r.uvarint().ok_or_else(bad)? as usize;
            let mut ls = Vec::with_capacity(nl.min(64));
            for _ in 0..nl {
                let (n, v) = (r.uvarint().ok_or_else(bad)?, r.uvarint().ok_or_else(bad)?);
                let name = sym(n).ok_or_else(bad)?;
                let value = sym(v).ok_or_else(bad)?;
                ls.push(Label { name, value });
                if relative {
                    pairs.entry((n, v)).or_default().push(series.len() as u32);
                }
            }
            let labels = Labels::from_vec(ls);
            let labels = share(&labels).unwrap_or(labels);
            let nc = r.uvarint().ok_or_else(bad)? as usize;
            let mut chunks = Vec::with_capacity(nc.min(body.len()));
            for _ in 0..nc {
                let (min_t, max_t, offset) = if relative {
                    let min_t = base.wrapping_add(r.varint().ok_or_else(bad)?);
                    let max_t = min_t.wrapping_add(r.varint().ok_or_else(bad)?);
                    previous_offset =
                        previous_offset.wrapping_add(r.varint().ok_or_else(bad)? as u64);
                    (min_t, max_t, previous_offset)
                } else {
                    let min_t = r.varint().ok_or_else(bad)?;
                    let max_t = min_t.wrapping_add(r.varint().ok_or_else(bad)?);
                    (min_t, max_t, r.uvarint().ok_or_else(bad)?)
                };
                let offset = usize::try_from(offset).map_err(|_| bad())?;
                let Record {
                    encoding,
                    count,
                    start,
                    len,
                } = match &layout {
                    Some(layout) => layout.record(&map, offset),
                    None => record_v2(&map, offset),
                }
                .map_err(|why| corrupt("chunks", format!("chunk at {offset}: {why}")))?;
                let data = map.get(start..start + len).unwrap_or(&[]);
                // The pages checked so far go back as the check moves on: a large block
                // is never resident as a whole.
                checked += len;
                if checked >= RELEASE_EVERY {
                    release_pages(&map);
                    checked = 0;
                }
                let mut chunk = ChunkMeta {
                    min_t,
                    max_t,
                    start,
                    len,
                    count,
                    encoding,
                    times_start: 0,
                    times_len: 0,
                };
                match encoding {
                    Encoding::Xor => {}
                    Encoding::Dense => {
                        let mut c = Cursor::new(data);
                        let at = c.uvarint().ok_or_else(|| {
                            corrupt("chunks", format!("chunk at {offset}: no time reference"))
                        })?;
                        let (tstart, tlen, tcount) = match &layout {
                            Some(layout) => layout.times(at),
                            None => times_record(&map, at as usize, count, &mut verified_times),
                        }
                        .map_err(|why| corrupt("chunks", format!("chunk at {offset}: {why}")))?;
                        chunk.count = tcount;
                        chunk.start = start + (len - c.rest().len());
                        chunk.len = start + len - chunk.start;
                        chunk.times_start = tstart;
                        chunk.times_len = tlen;
                    }
                    Encoding::Times => {
                        return Err(corrupt(
                            "chunks",
                            format!("chunk at {offset} is a times record"),
                        ))
                    }
                }
                chunks.push(chunk);
            }
            series.push(BlockSeries { labels, chunks });
        }
        for ((n, v), positions) in pairs {
            let (Some(name), Some(value)) = (sym(n), sym(v)) else {
                return Err(bad());
            };
            // Positions come in series order: ascending, each once per pair unless a
            // series repeats a label, which `from_sorted_iter` refuses.
            let bitmap = roaring::RoaringBitmap::from_sorted_iter(positions)
                .map_err(|_| corrupt("index", format!("a series repeats {name}={value}")))?;
            postings.insert_bitmap(name, value, bitmap);
        }
        let npairs = if relative {
            0
        } else {
            r.uvarint().ok_or_else(bad)? as usize
        };
        for _ in 0..npairs {
            let name = sym(r.uvarint().ok_or_else(bad)?).ok_or_else(bad)?;
            let value = sym(r.uvarint().ok_or_else(bad)?).ok_or_else(bad)?;
            let n = r.uvarint().ok_or_else(bad)? as usize;
            let bytes = r.bytes(n).ok_or_else(bad)?;
            let bitmap = roaring::RoaringBitmap::deserialize_from(bytes)
                .map_err(|e| corrupt("index", format!("postings of {name}={value}: {e}")))?;
            if bitmap.max().is_some_and(|m| m as usize >= series.len()) {
                return Err(corrupt(
                    "index",
                    format!("postings of {name}={value} name a series the block does not have"),
                ));
            }
            postings.insert_bitmap(name, value, bitmap);
        }
        postings.set_all(series.len() as u32);
        if !r.done() {
            return Err(bad());
        }
        let tombstones = read_tombstones(dir, series.len())?;
        // Checking the chunks mapped them in: give the pages back so that an open block
        // costs memory only while it is read.
        release_pages(&map);
        let bytes = [meta_path, index_path, chunks_path, dir.join("tombstones")]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let sorted = series.windows(2).all(|w| w[0].labels < w[1].labels);
        Ok(Block {
            meta,
            dir: dir.to_owned(),
            tombstones,
            chunks: Arc::new(map),
            series,
            postings,
            bytes,
            sorted,
        })
    }

    /// Gives back the pages of the chunks file read so far (see [`release_pages`]); for
    /// reads that go through a whole block, such as a merge.
    pub(crate) fn release_pages(&self) {
        release_pages(&self.chunks);
    }

    /// The series matching `matchers` with chunks overlapping `[mint, maxt]`, and those
    /// chunks.
    #[cfg(test)]
    pub(crate) fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Vec<(Labels, Vec<ChunkView>)> {
        self.select_positions(&self.matching_in(matchers, mint, maxt), mint, maxt)
    }

    /// Whether the block holds time in `[mint, maxt]` (its own range is `[min_time,
    /// max_time)`).
    pub(crate) fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        maxt >= self.meta.min_time && mint < self.meta.max_time
    }

    /// The positions of the series matching `matchers`, ascending (in label order when
    /// [`Block::sorted`]); none when the block lies outside `[mint, maxt]`. With
    /// [`Block::select_positions`], a block's part of a selection.
    pub(crate) fn matching_in(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<u32> {
        if !self.overlaps(mint, maxt) {
            return Vec::new();
        }
        self.matching(matchers)
    }

    /// The series at `positions` with chunks overlapping `[mint, maxt]`, and those
    /// chunks.
    pub(crate) fn select_positions(
        &self,
        positions: &[u32],
        mint: i64,
        maxt: i64,
    ) -> Vec<(Labels, Vec<ChunkView>)> {
        let mut out = Vec::with_capacity(positions.len());
        for &r in positions {
            let Some(s) = self.series.get(r as usize) else {
                continue;
            };
            let chunks = self.views(r, mint, maxt);
            if !chunks.is_empty() {
                out.push((s.labels.clone(), chunks));
            }
        }
        out
    }

    /// How many series the block holds; [`Block::series_labels`] and [`Block::views`]
    /// take their positions.
    pub(crate) fn series_count(&self) -> usize {
        self.series.len()
    }

    pub(crate) fn series_labels(&self, r: usize) -> Option<&Labels> {
        self.series.get(r).map(|s| &s.labels)
    }

    /// The chunks of series `r` overlapping `[mint, maxt]`, its deleted samples left out.
    pub(crate) fn views(&self, r: u32, mint: i64, maxt: i64) -> Vec<ChunkView> {
        let mut out = Vec::new();
        self.views_into(r, mint, maxt, &mut out);
        out
    }

    /// Appends [`Block::views`] to `out`.
    pub(crate) fn views_into(&self, r: u32, mint: i64, maxt: i64, out: &mut Vec<ChunkView>) {
        let Some(s) = self.series.get(r as usize) else {
            return;
        };
        let from = out.len();
        out.extend(
            s.chunks
                .iter()
                .filter(|c| c.max_t >= mint && c.min_t <= maxt)
                .map(|&chunk| ChunkView::Mapped {
                    file: Arc::clone(&self.chunks),
                    chunk,
                }),
        );
        let Some(deleted) = self.tombstones.get(&r) else {
            return;
        };
        let kept: Vec<(i64, f64)> = out[from..]
            .iter()
            .flat_map(|c| c.iter())
            .filter(|&(t, _)| !deleted.iter().any(|&(a, z)| t >= a && t <= z))
            .collect();
        out.truncate(from);
        if !kept.is_empty() {
            out.push(ChunkView::Samples(kept.into()));
        }
    }

    /// The position of the series with exactly these labels, if the block has it.
    pub(crate) fn position_of(&self, labels: &Labels) -> Option<u32> {
        let found = if self.sorted {
            self.series.binary_search_by(|s| s.labels.cmp(labels)).ok()
        } else {
            self.series.iter().position(|s| s.labels == *labels)
        };
        found.map(|r| r as u32)
    }

    /// The labels of the series matching `matchers` with a sample in `[mint, maxt]`.
    pub(crate) fn select_labels(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<&Labels> {
        if !self.overlaps(mint, maxt) {
            return Vec::new();
        }
        let inside = |t: i64| t >= mint && t <= maxt;
        // A block inside the range: each series in it has a sample in range.
        let whole = mint <= self.meta.min_time && maxt >= self.meta.max_time - 1;
        let view = |chunk| ChunkView::Mapped {
            file: Arc::clone(&self.chunks),
            chunk,
        };
        let positions: Vec<u32> = self.postings.select(matchers).iter().collect();
        let mut out = Vec::with_capacity(positions.len());
        for (i, &r) in positions.iter().enumerate() {
            if !whole {
                // The chunk lists are read a few series ahead of their turn.
                if let Some(ahead) = positions.get(i + CHUNK_LISTS_AHEAD) {
                    if let Some(s) = self.series.get(*ahead as usize) {
                        crate::prefetch(s.chunks.as_ptr());
                    }
                }
            }
            let Some(s) = self.series.get(r as usize) else {
                continue;
            };
            let found = match self.tombstones.get(&r) {
                None if whole => !s.chunks.is_empty(),
                // Only a chunk that straddles an end of the range is decoded.
                None => s.chunks.iter().any(|&chunk| {
                    let mut v = None;
                    holds_sample_in(chunk.min_t, chunk.max_t, mint, maxt, || {
                        v.insert(view(chunk)).iter()
                    })
                }),
                // Deletions apply: every sample is looked at.
                Some(d) => s.chunks.iter().any(|&chunk| {
                    view(chunk)
                        .iter()
                        .any(|(t, _)| inside(t) && !d.iter().any(|&(a, z)| t >= a && t <= z))
                }),
            };
            if found {
                out.push(&s.labels);
            }
        }
        out
    }

    /// How many series match `matchers`, when the block overlaps `[mint, maxt]`.
    pub(crate) fn count_in(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> u64 {
        if !self.overlaps(mint, maxt) {
            return 0;
        }
        self.postings.select(matchers).len()
    }

    /// Indexes of the series matching `matchers`.
    pub(crate) fn matching(&self, matchers: &[Matcher]) -> Vec<u32> {
        self.postings.select(matchers).iter().collect()
    }

    pub(crate) fn label_names(&self) -> Vec<String> {
        self.postings.names()
    }

    pub(crate) fn label_values(&self, name: &str) -> Vec<String> {
        self.postings.values(name)
    }
}

/// How many bytes of a block's chunks a long read goes through between giving their
/// pages back.
pub(crate) const RELEASE_EVERY: usize = 4 << 20;

/// Drops the pages of a read-only file map from this process (they stay in the page
/// cache): a block's chunks, or a cut's head chunk files. Nobody writes the mapped bytes,
/// so the next access reads the same bytes back.
pub(crate) fn release_pages(map: &Mmap) {
    // SAFETY: see above; the map is shared and read-only, so DONTNEED loses nothing.
    #[allow(unsafe_code)]
    let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembered time sections are the very bytes encoding gives, for repeated and
    /// distinct timestamps alike, past the limit too.
    #[test]
    fn remembered_time_sections_are_what_encoding_gives() -> Result<(), Error> {
        let mut remembered = RememberedTimes::default();
        for round in 0..3 {
            for k in 0..400i64 {
                let part: Vec<(i64, f64)> = (0..(100 + k % 3))
                    .map(|j| (1_700_000_000_000 + k + j * 15_000 + (j * k) % 7, j as f64))
                    .collect();
                assert_eq!(
                    remembered.encode(&part)?,
                    dense::encode_times(&part)?,
                    "round {round}, part {k}"
                );
            }
        }
        assert_eq!(remembered.sections.len(), TIMES_REMEMBERED);
        Ok(())
    }

    fn nb(min_time: i64, max_time: i64) -> NewBlock {
        NewBlock {
            min_time,
            max_time,
            seq: 1,
            sources: Vec::new(),
        }
    }

    #[test]
    fn write_open_select() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let a = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let b = Labels::from_pairs([("__name__", "up"), ("job", "b")]);
        let sa: Vec<(i64, f64)> = (0..300).map(|i| (i * 1000, i as f64)).collect();
        let sb = vec![(5, f64::NAN), (6, crate::stale_nan())];
        let dir = write_block(
            tmp.path(),
            &[(a.clone(), sa.clone()), (b.clone(), sb)],
            nb(0, 300_000),
        )?;
        let block = Block::open(&dir)?;
        assert_eq!(block.meta.num_samples, 302);
        assert_eq!(block.meta.num_chunks, 2);
        let got = block.select(&[Matcher::equal("job", "a")], 0, i64::MAX);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, a);
        let samples: Vec<(i64, f64)> = got[0].1.iter().flat_map(|c| c.iter()).collect();
        assert_eq!(samples, sa);
        let got = block.select(&[Matcher::equal("job", "b")], 0, 10);
        let bits: Vec<u64> = got[0]
            .1
            .iter()
            .flat_map(|c| c.iter())
            .map(|s| s.1.to_bits())
            .collect();
        assert_eq!(bits[1], crate::STALE_NAN_BITS);
        assert!(bits[0] != crate::STALE_NAN_BITS && f64::from_bits(bits[0]).is_nan());
        assert_eq!(block.label_values("job"), vec!["a", "b"]);
        Ok(())
    }

    #[test]
    fn unpacked_indexes_of_earlier_blocks_still_open() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let series: Vec<(Labels, Vec<(i64, f64)>)> = (0..200)
            .map(|n| {
                let l = Labels::from_pairs([("__name__", "m".to_string()), ("n", n.to_string())]);
                (l, (0..100).map(|i| (i * 15_000, (i * n) as f64)).collect())
            })
            .collect();
        let labels: Vec<&Labels> = series.iter().map(|(l, _)| l).collect();
        let current = write_block(tmp.path(), &series, nb(0, 1_500_000))?;
        let path = current.join("index");
        let relative = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        assert_eq!(&relative[..8], INDEX_MAGIC_RELATIVE);
        // The same block as it was written before the relative layout: magic 03.
        let dir = write_block_laid_out(
            &tmp.path().join("before"),
            &labels,
            |i| Cow::Borrowed(&series[i].1[..]),
            nb(0, 1_500_000),
            IndexLayout::Absolute,
        )?;
        let path = dir.join("index");
        let packed = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        assert_eq!(&packed[..8], INDEX_MAGIC_PACKED);
        assert!(
            relative.len() < packed.len(),
            "{} >= {}",
            relative.len(),
            packed.len()
        );
        // The same index as blocks were written before: magic 02, the body as is.
        let mut r = Cursor::new(&packed[8..packed.len() - 4]);
        let len = r.uvarint().unwrap_or(0) as usize;
        let body = dense::unpack_section(r.rest(), len)?;
        let mut old = INDEX_MAGIC.to_vec();
        old.extend_from_slice(&body);
        let crc = crc32c::crc32c(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        assert!(
            packed.len() < old.len(),
            "{} >= {}",
            packed.len(),
            old.len()
        );
        let read = |block: &Block| -> Vec<(Labels, Vec<(i64, f64)>)> {
            block
                .select(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
                .into_iter()
                .map(|(l, c)| (l, c.iter().flat_map(|c| c.iter()).collect()))
                .collect()
        };
        let want = read(&Block::open(&current)?);
        assert_eq!(want.len(), series.len());
        for (l, samples) in &series {
            let got = want.iter().find(|(g, _)| g == l).map(|(_, s)| s);
            assert_eq!(got, Some(samples), "{l}");
        }
        assert!(
            read(&Block::open(&dir)?) == want,
            "the packed index of absolute times reads differently"
        );
        // Postings built at open answer as the stored ones do.
        let (built, stored) = (Block::open(&current)?, Block::open(&dir)?);
        assert_eq!(built.label_names(), stored.label_names());
        assert_eq!(built.label_values("n"), stored.label_values("n"));
        assert_eq!(built.label_values("n").len(), series.len());
        for m in [
            vec![Matcher::equal("n", "7")],
            vec![Matcher::regex("n", "1.*")?],
            vec![
                Matcher::equal("__name__", "m"),
                Matcher::not_equal("n", "3"),
            ],
        ] {
            let found = built.matching(&m);
            assert!(!found.is_empty());
            assert_eq!(found, stored.matching(&m));
        }
        fs::write(&path, &old).map_err(|e| Error::io(&path, e))?;
        assert!(
            read(&Block::open(&dir)?) == want,
            "the unpacked index reads differently"
        );
        Ok(())
    }

    /// (encoding, offset of the data) of every record of a chunks file.
    fn records(bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut at = CHUNKS_MAGIC.len();
        let mut out = Vec::new();
        let body = &bytes[..bytes.len() - 4];
        while at < body.len() {
            let r = record_v3(body, at).unwrap_or_else(|why| panic!("{why}"));
            out.push((r.encoding as u8, r.start));
            at = r.start + r.len;
        }
        out
    }

    /// Every sample `block` holds for the series with exactly `labels`.
    fn read_back(block: &Block, labels: &Labels) -> Vec<(i64, f64)> {
        let m: Vec<Matcher> = labels
            .iter()
            .map(|l| Matcher::equal(&*l.name, &*l.value))
            .collect();
        let got = block.select(&m, i64::MIN, i64::MAX);
        got[0].1.iter().flat_map(|c| c.iter()).collect()
    }

    /// A histogram's `_sum` at `times`: full-precision durations added up, no decimals.
    fn sum_of_durations(times: &[i64]) -> Vec<(i64, f64)> {
        let mut sum = 0.0;
        times
            .iter()
            .map(|&t| {
                sum += (t % 7_919) as f64 * std::f64::consts::PI / 1e3;
                (t, sum)
            })
            .collect()
    }

    /// The series of the chunks-file fixture of an earlier format version:
    /// decimals sharing a time section, a sum of durations, and a series too short for
    /// anything but an XOR chunk.
    pub(super) fn fixture_series() -> Vec<(Labels, Vec<(i64, f64)>)> {
        let times: Vec<i64> = (0..480).map(|i| i * 15_000 + (i * 7) % 5).collect();
        let mut series: Vec<(Labels, Vec<(i64, f64)>)> = (0..3)
            .map(|n| {
                let l = Labels::from_pairs([("__name__", "m".to_string()), ("n", n.to_string())]);
                let s = times
                    .iter()
                    .map(|&t| (t, ((t / 1000) * (n + 1) + t % 7) as f64 / 100.0))
                    .collect();
                (l, s)
            })
            .collect();
        series.push((
            Labels::from_pairs([("__name__", "m_sum")]),
            sum_of_durations(&times),
        ));
        series.push((
            Labels::from_pairs([("__name__", "tiny")]),
            vec![
                (1_234, 0.1 + 0.2),
                (98_765, f64::from_bits(crate::STALE_NAN_BITS)),
            ],
        ));
        series
    }

    #[test]
    fn series_scraped_together_share_their_timestamps() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let times: Vec<i64> = (0..480).map(|i| i * 15_000 + (i * 7) % 5).collect();
        let mut series: Vec<(Labels, Vec<(i64, f64)>)> = (0..10)
            .map(|n| {
                let l = Labels::from_pairs([("__name__", "m".to_string()), ("n", n.to_string())]);
                let s = times
                    .iter()
                    .map(|&t| (t, (t / 1000 * n) as f64 / 100.0))
                    .collect();
                (l, s)
            })
            .collect();
        series.push((
            Labels::from_pairs([("__name__", "other")]),
            times.iter().map(|&t| (t + 1, 1.0)).collect(),
        ));
        // Values that are no decimals (a histogram's sum of durations) keep their bit
        // patterns in a dense chunk, with the shared timestamps.
        series.push((
            Labels::from_pairs([("__name__", "m_sum")]),
            sum_of_durations(&times),
        ));
        let dir = write_block(tmp.path(), &series, nb(0, 7_200_000))?;
        let path = dir.join("chunks");
        let mut bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let recs = records(&bytes);
        let kinds: Vec<u8> = recs.iter().map(|r| r.0).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|&&k| k == Encoding::Times as u8)
                .count(),
            2
        );
        assert_eq!(
            kinds
                .iter()
                .filter(|&&k| k == Encoding::Dense as u8)
                .count(),
            12
        );
        let block = Block::open(&dir)?;
        for (labels, samples) in &series {
            assert_eq!(&read_back(&block, labels), samples);
        }
        // A flipped byte in the shared time section is caught at open.
        drop(block);
        let at = recs[0].1 + 2;
        bytes[at] ^= 0x10;
        fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
        match Block::open(&dir) {
            Err(e) => assert!(e.to_string().contains("chunks"), "{e}"),
            Ok(_) => panic!("a flipped byte in a times record went unnoticed"),
        }
        Ok(())
    }

    #[test]
    fn chunks_files_of_the_earlier_format_still_read() -> Result<(), Error> {
        // Written by the `STRCHK02` writer from `fixture_series()`: a checksum in every
        // record header, times referred to by offset.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/block-chunks-v2");
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp
            .path()
            .join("0000000000000000-0000000007200000-00000001");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for file in ["chunks", "index", "meta.json"] {
            fs::copy(fixture.join(file), dir.join(file)).map_err(|e| Error::io(&dir, e))?;
        }
        let path = dir.join("chunks");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        assert_eq!(&bytes[..8], CHUNKS_MAGIC_V2);
        let bits = |s: &[(i64, f64)]| -> Vec<(i64, u64)> {
            s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
        };
        let series = fixture_series();
        let block = Block::open(&dir)?;
        for (labels, samples) in &series {
            assert_eq!(bits(&read_back(&block, labels)), bits(samples), "{labels}");
        }
        drop(block);
        // Its per-record checksums still guard it.
        let mut flipped = bytes.clone();
        flipped[bytes.len() - 3] ^= 0x04;
        fs::write(&path, &flipped).map_err(|e| Error::io(&path, e))?;
        assert!(Block::open(&dir).is_err(), "a flipped byte went unnoticed");
        // The same series written now take fewer bytes.
        let now = write_block(&tmp.path().join("now"), &series, nb(0, 7_200_000))?;
        let len = fs::metadata(now.join("chunks"))
            .map_err(|e| Error::io(&now, e))?
            .len();
        assert!(
            len < bytes.len() as u64,
            "{len} bytes now, {} before",
            bytes.len()
        );
        Ok(())
    }

    #[test]
    fn any_damage_to_a_chunks_file_is_an_error() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = write_block(tmp.path(), &fixture_series(), nb(0, 7_200_000))?;
        let path = dir.join("chunks");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        // Every byte flipped in turn, and the file cut at every length: an error at
        // open, never a panic nor a block that opens.
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x21;
            fs::write(&path, &b).map_err(|e| Error::io(&path, e))?;
            assert!(Block::open(&dir).is_err(), "flip at {at} went unnoticed");
        }
        for cut in (0..bytes.len()).step_by(7) {
            fs::write(&path, &bytes[..cut]).map_err(|e| Error::io(&path, e))?;
            assert!(Block::open(&dir).is_err(), "cut at {cut} went unnoticed");
        }
        fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
        Block::open(&dir)?;
        Ok(())
    }

    #[test]
    fn flipped_bytes_are_detected_with_the_file_named() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let a = Labels::from_pairs([("__name__", "up")]);
        let samples: Vec<(i64, f64)> = (0..10).map(|i| (i, i as f64)).collect();
        for file in ["chunks", "index", "meta.json"] {
            let dir = write_block(
                &tmp.path().join(file),
                &[(a.clone(), samples.clone())],
                nb(0, 10),
            )?;
            let path = dir.join(file);
            let mut bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
            // In meta.json, turn a digit of a number into another digit: still valid JSON.
            let at = match file {
                "meta.json" => bytes.iter().position(|b| b.is_ascii_digit()).unwrap_or(0),
                _ => bytes.len() - 6,
            };
            bytes[at] = if file == "meta.json" {
                b'0' + (bytes[at] - b'0' + 1) % 10
            } else {
                bytes[at] ^ 0x41
            };
            fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
            match Block::open(&dir) {
                Err(e) => assert!(e.to_string().contains(file), "{file}: {e}"),
                Ok(_) => panic!("a flipped byte in {file} went unnoticed"),
            }
        }
        Ok(())
    }
}
