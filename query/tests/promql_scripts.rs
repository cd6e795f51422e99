#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Runs PromQL test scripts through the engine: strata's own cases in `tests/scripts/`
//! (every case must pass), and Prometheus' corpus in `../shared/promql-tests/` when it is
//! present beside the checkout (reported per file, with a floor on the passes so that a
//! regression fails the test). Run with `--nocapture` to see the report.

use std::path::{Path, PathBuf};

use strata_query::script::{run_script, ScriptReport};
use strata_query::{Engine, EngineOptions};
use strata_storage::{Db, Options};

/// Scripts that exercise experimental Prometheus features, reported apart.
const EXPERIMENTAL: &[&str] = &[
    "duration_expression",
    "extended_vectors",
    "fill-modifier",
    "info",
    "type_and_unit",
    "start_timestamps",
];

/// Passing float cases of the stable scripts, at least. Raise it as the engine grows.
const CORPUS_PASS_FLOOR: usize = 937;

fn run_file(path: &Path, engine: &Engine) -> ScriptReport {
    let text = std::fs::read_to_string(path).unwrap();
    let mut dirs = Vec::new();
    let mut new_db = || -> Result<Db, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db = Db::open(
            dir.path(),
            Options {
                wal_fsync: false,
                ..Options::default()
            },
        )
        .map_err(|e| e.to_string())?;
        dirs.push(dir);
        Ok(db)
    };
    run_script(&text, engine, &mut new_db).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn scripts_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "test"));
    files.sort();
    files
}

#[test]
fn own_scripts_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let files = scripts_in(&dir);
    assert!(!files.is_empty(), "no scripts in {}", dir.display());
    let mut total = 0;
    // strata's own cases follow a default Prometheus server.
    let engine = Engine::default();
    for f in files {
        let r = run_file(&f, &engine);
        assert!(
            r.failures.is_empty(),
            "{}:\n{}",
            f.display(),
            r.failures.join("\n")
        );
        assert_eq!(r.skipped, 0, "{}: own scripts skip nothing", f.display());
        total += r.passed;
    }
    assert!(total > 50, "only {total} cases ran");
}

#[test]
fn prometheus_corpus_report() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/promql-tests");
    let files = scripts_in(&dir);
    if files.is_empty() {
        eprintln!("{} not present: corpus not run", dir.display());
        return;
    }
    let (mut stable, mut experimental) = (ScriptReport::default(), ScriptReport::default());
    // The corpus' expectations come from Prometheus' test engine, which runs with delayed
    // name removal on.
    let engine = Engine::new(EngineOptions {
        delayed_name_removal: true,
        ..EngineOptions::default()
    });
    for f in &files {
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let r = run_file(f, &engine);
        eprintln!(
            "{name}: {} passed, {} failed, {} skipped (native histograms / start timestamps)",
            r.passed, r.failed, r.skipped
        );
        if std::env::var_os("PROMQL_FAILURES").is_some() {
            for line in &r.failures {
                eprintln!("  {line}");
            }
        }
        let sum = if EXPERIMENTAL.contains(&name) {
            &mut experimental
        } else {
            &mut stable
        };
        sum.passed += r.passed;
        sum.failed += r.failed;
        sum.skipped += r.skipped;
    }
    eprintln!(
        "experimental scripts: {} passed, {} failed, {} skipped",
        experimental.passed, experimental.failed, experimental.skipped
    );
    eprintln!(
        "stable scripts: {} passed, {} failed, {} skipped",
        stable.passed, stable.failed, stable.skipped
    );
    assert!(
        stable.passed >= CORPUS_PASS_FLOOR,
        "stable corpus passes fell to {} (floor {CORPUS_PASS_FLOOR})",
        stable.passed
    );
}
