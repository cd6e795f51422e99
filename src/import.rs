//! `strata import`: backfills a Prometheus text or OpenMetrics file into blocks.
//!
//! ```text
//!  file ──pass 1: parse and check every line──> (any error: report it, write nothing)
//!       ──pass 2: parse again──> per-series buffers ──(every few million samples)──>
//!         Db::write_blocks (one block per block range, beside the existing ones)
//!       ──> Db::compact_blocks (overlapping blocks merge)
//! ```
//!
//! Every sample needs a timestamp (milliseconds in the Prometheus format, seconds in
//! OpenMetrics). Imported samples win over what blocks already hold at the same
//! timestamps; the head's own samples win over imported ones.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use strata_ingest::text::{parse_line, Dialect, TextLine};
use strata_storage::{Db, Labels, METRIC_NAME};

/// Samples held in memory before they are written out as blocks.
const FLUSH_SAMPLES: usize = 4_000_000;

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImportStats {
    pub(crate) samples: u64,
    pub(crate) series: u64,
    pub(crate) blocks: u64,
}

/// The dialect of `path`: OpenMetrics when its last non-blank line is `# EOF`.
pub(crate) fn detect_dialect(path: &Path) -> anyhow::Result<Dialect> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    f.seek(SeekFrom::Start(len.saturating_sub(256)))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)
        .with_context(|| format!("reading {}", path.display()))?;
    let tail = String::from_utf8_lossy(&tail);
    let last = tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Ok(if last.trim() == "# EOF" {
        Dialect::OpenMetrics
    } else {
        Dialect::Prometheus
    })
}

/// Reads `path` line by line, handing each parsed sample to `each`; stops at the first
/// bad line with an error naming it. Reports progress as it goes.
fn scan(
    path: &Path,
    dialect: Dialect,
    progress: &mut Progress,
    mut each: impl FnMut(Labels, i64, f64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut line = String::new();
    let mut read = 0u64;
    let mut lineno = 0u64;
    let mut ended = false;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .with_context(|| format!("{}: line {}: not valid UTF-8", path.display(), lineno + 1))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        lineno += 1;
        let text = line.strip_suffix('\n').unwrap_or(&line);
        if ended {
            if text.trim().is_empty() {
                continue;
            }
            bail!("{}: line {lineno}: content after # EOF", path.display());
        }
        let parsed = parse_line(text, dialect)
            .map_err(|e| anyhow::anyhow!("{}: line {lineno}: {e}", path.display()))?;
        match parsed {
            TextLine::Sample(s) => {
                let Some(t) = s.timestamp_ms else {
                    bail!(
                        "{}: line {lineno}: sample of {} has no timestamp (import needs one on every sample)",
                        path.display(),
                        s.name
                    );
                };
                let labels = Labels::from_pairs(
                    std::iter::once((METRIC_NAME, s.name))
                        .chain(s.labels.iter().map(|(n, v)| (*n, v.as_ref()))),
                );
                if s.labels.iter().any(|(n, _)| *n == METRIC_NAME) {
                    bail!(
                        "{}: line {lineno}: label __name__ given twice",
                        path.display()
                    );
                }
                each(labels, t, s.value)?;
                progress.samples += 1;
            }
            TextLine::Eof => ended = true,
            _ => {}
        }
        progress.show(read, false);
    }
    progress.show(read, true);
    Ok(())
}

/// Imports `path` into `db`: checks the whole file first, so a bad line changes nothing.
pub(crate) fn import(db: &Db, path: &Path, dialect: Dialect) -> anyhow::Result<ImportStats> {
    let total = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut check = Progress::new("checking", total);
    scan(path, dialect, &mut check, |_, _, _| Ok(()))?;

    let mut progress = Progress::new("importing", total);
    let mut buffer: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
    let mut held = 0usize;
    let mut stats = ImportStats::default();
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let flush = |buffer: &mut HashMap<Labels, Vec<(i64, f64)>>,
                 stats: &mut ImportStats|
     -> anyhow::Result<()> {
        let series: Vec<(Labels, Vec<(i64, f64)>)> = buffer.drain().collect();
        let written = db.write_blocks(series).context("writing blocks")?;
        stats.blocks += written.len() as u64;
        Ok(())
    };
    scan(path, dialect, &mut progress, |labels, t, v| {
        seen.insert(labels.stable_hash());
        buffer.entry(labels).or_default().push((t, v));
        stats.samples += 1;
        held += 1;
        if held >= FLUSH_SAMPLES {
            flush(&mut buffer, &mut stats)?;
            held = 0;
        }
        Ok(())
    })?;
    flush(&mut buffer, &mut stats)?;
    stats.series = seen.len() as u64;
    db.compact_blocks().context("merging the imported blocks")?;
    Ok(stats)
}

/// A progress line on stderr: a bar on a terminal, a line every few seconds otherwise.
struct Progress {
    what: &'static str,
    total: u64,
    samples: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        Self {
            what,
            total,
            samples: 0,
            started: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, done: u64, last: bool) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if !last && self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let share = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let width = 30usize;
        let filled = ((share * width as f64) as usize).min(width);
        let line = format!(
            "{:<9} [{}{}] {:>3.0}%  {:.1}/{:.1} MB  {} samples  {:.1} s",
            self.what,
            "#".repeat(filled),
            ".".repeat(width - filled),
            share * 100.0,
            done as f64 / 1e6,
            self.total as f64 / 1e6,
            self.samples,
            self.started.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}
