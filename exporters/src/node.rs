//! node_exporter-compatible families read from procfs.

use std::path::PathBuf;

use strata_storage::Labels;

use crate::{Collector, ExporterError, Sample};

fn read(path: PathBuf) -> Result<(PathBuf, String), ExporterError> {
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok((path, s)),
        Err(source) => Err(ExporterError::Io { path, source }),
    }
}

fn sample(name: &str, value: f64) -> Sample {
    Sample {
        labels: Labels::from_pairs([("__name__", name)]),
        value,
    }
}

/// `node_load1`, `node_load5`, `node_load15` from `/proc/loadavg`.
pub struct LoadAvg {
    proc: PathBuf,
}

impl LoadAvg {
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self { proc: proc.into() }
    }
}

impl Collector for LoadAvg {
    fn name(&self) -> &'static str {
        "loadavg"
    }

    fn collect(&self, out: &mut Vec<Sample>) -> Result<(), ExporterError> {
        let (path, text) = read(self.proc.join("loadavg"))?;
        let fields: Vec<&str> = text.split_whitespace().take(3).collect();
        let parsed: Result<Vec<f64>, _> = fields.iter().map(|f| f.parse::<f64>()).collect();
        match parsed {
            Ok(v) if v.len() == 3 => {
                out.push(sample("node_load1", v[0]));
                out.push(sample("node_load5", v[1]));
                out.push(sample("node_load15", v[2]));
                Ok(())
            }
            _ => Err(ExporterError::Parse {
                path,
                reason: format!("expected three load averages, got {:?}", text.trim()),
            }),
        }
    }
}

/// `node_memory_<Field>_bytes` for every field of `/proc/meminfo`, named as node_exporter
/// names them: `Active(anon)` becomes `node_memory_Active_anon_bytes`; fields without a
/// `kB` unit (`HugePages_Total`) keep their plain value and get no `_bytes` suffix.
pub struct MemInfo {
    proc: PathBuf,
}

impl MemInfo {
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self { proc: proc.into() }
    }
}

impl Collector for MemInfo {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn collect(&self, out: &mut Vec<Sample>) -> Result<(), ExporterError> {
        let (path, text) = read(self.proc.join("meminfo"))?;
        let start = out.len();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(key) = key.strip_suffix(':') else {
                continue;
            };
            let Ok(mut v) = value.parse::<f64>() else {
                out.truncate(start);
                return Err(ExporterError::Parse {
                    path,
                    reason: format!("field {key}: {value:?} is not a number"),
                });
            };
            let key = key.replace('(', "_").replace(')', "");
            let name = match parts.next() {
                Some("kB") => {
                    v *= 1024.0;
                    format!("node_memory_{key}_bytes")
                }
                _ => format!("node_memory_{key}"),
            };
            out.push(sample(&name, v));
        }
        if out.len() == start {
            return Err(ExporterError::Parse {
                path,
                reason: "no fields".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn value(out: &[Sample], name: &str) -> Option<f64> {
        out.iter()
            .find(|s| s.labels.metric_name() == Some(name))
            .map(|s| s.value)
    }

    #[test]
    fn loadavg() {
        let dir = proc_with(&[("loadavg", "0.52 1.25 2.00 3/412 12345\n")]);
        let mut out = Vec::new();
        LoadAvg::new(dir.path()).collect(&mut out).unwrap();
        assert_eq!(value(&out, "node_load1"), Some(0.52));
        assert_eq!(value(&out, "node_load5"), Some(1.25));
        assert_eq!(value(&out, "node_load15"), Some(2.0));
    }

    #[test]
    fn meminfo_names_and_units_as_node_exporter() {
        let dir = proc_with(&[(
            "meminfo",
            "MemTotal:       16384000 kB\nMemAvailable:    8192000 kB\nActive(anon):     1024 kB\nHugePages_Total:       4\n",
        )]);
        let mut out = Vec::new();
        MemInfo::new(dir.path()).collect(&mut out).unwrap();
        assert_eq!(
            value(&out, "node_memory_MemTotal_bytes"),
            Some(16_384_000.0 * 1024.0)
        );
        assert_eq!(
            value(&out, "node_memory_MemAvailable_bytes"),
            Some(8_192_000.0 * 1024.0)
        );
        assert_eq!(
            value(&out, "node_memory_Active_anon_bytes"),
            Some(1024.0 * 1024.0)
        );
        assert_eq!(value(&out, "node_memory_HugePages_Total"), Some(4.0));
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let dir = proc_with(&[("loadavg", "garbage\n"), ("meminfo", "MemTotal: lots kB\n")]);
        let mut out = Vec::new();
        let e = LoadAvg::new(dir.path()).collect(&mut out).unwrap_err();
        assert!(e.to_string().contains("loadavg"), "{e}");
        let e = MemInfo::new(dir.path()).collect(&mut out).unwrap_err();
        assert!(e.to_string().contains("MemTotal"), "{e}");
        assert!(out.is_empty());
        let e = LoadAvg::new(dir.path().join("missing"))
            .collect(&mut out)
            .unwrap_err();
        assert!(matches!(e, ExporterError::Io { .. }));
    }

    #[test]
    fn this_machine() {
        // The real /proc of the machine running the tests.
        let mut out = Vec::new();
        for c in crate::node_collectors("/proc") {
            c.collect(&mut out).unwrap();
        }
        assert!(value(&out, "node_memory_MemTotal_bytes").unwrap_or(0.0) > 0.0);
        assert!(value(&out, "node_load1").is_some());
    }
}
