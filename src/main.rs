//! `strata`: the binary. Parses the command line, opens the store, serves the API, and
//! shuts down cleanly on SIGINT or SIGTERM.

mod cli;
mod collect;
mod config;
mod forward;
mod http;
mod import;
mod rules;
mod scrape;
mod server;
mod yaml;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};
use strata_query::{Engine, EngineOptions};
use strata_storage::{Db, Options};

#[derive(Parser)]
#[command(
    name = "strata",
    args_override_self = true,
    version,
    about = "Embedded metrics pipeline and time-series database",
    long_about = "strata stores Prometheus remote-write samples durably and answers PromQL over \
                  the Prometheus HTTP API.\n\nExample:\n  strata serve --data-dir ./data --listen 127.0.0.1:9310"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: remote write in, PromQL and the Prometheus HTTP API out.
    #[command(
        after_help = "Examples:\n  strata serve\n  strata serve --data-dir /var/lib/strata --listen 0.0.0.0:9310"
    )]
    Serve(Box<ServeArgs>),
    /// Backfill a Prometheus text or OpenMetrics file (every sample with a timestamp)
    /// into blocks. Run it while `strata serve` is stopped, or import into another data
    /// directory and move its `blocks/` entries into place.
    #[command(
        after_help = "Examples:\n  strata import --data-dir ./data metrics.om\n  strata import --format prometheus dump.prom"
    )]
    Import(ImportArgs),
    /// Evaluate a PromQL expression on a running strata and print a table.
    #[command(
        after_help = "Examples:\n  strata query up\n  strata query 'rate(node_cpu_seconds_total[5m])' --time 2026-11-24T10:00:00Z\n  strata query 'node_load1' --start 2026-11-24T10:00:00Z --end 2026-11-24T11:00:00Z --step 5m\n  strata query --url http://10.0.0.5:9310 --json 'count(up)'"
    )]
    Query(QueryCmd),
    /// Check rule files or a configuration file offline, as `promtool check` does.
    #[command(
        after_help = "Examples:\n  strata check rules rules/*.yml\n  strata check config strata.yml"
    )]
    Check {
        #[command(subcommand)]
        what: CheckCmd,
    },
    /// List the series matching selectors on a running strata.
    #[command(
        after_help = "Examples:\n  strata series 'up'\n  strata series 'node_cpu_seconds_total{mode=\"idle\"}' --start 2026-11-24T10:00:00Z"
    )]
    Series(SeriesCmd),
    /// Print a bcrypt hash of a password (read from standard input) for --web.auth-file.
    #[command(after_help = "Example:\n  echo -n 's3cret' | strata hash-password")]
    HashPassword,
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum CheckCmd {
    /// Check rule files: syntax, expressions, templates.
    Rules {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check a configuration file and the rule files it names.
    Config { file: PathBuf },
}

#[derive(clap::Args)]
struct QueryCmd {
    /// The server to ask.
    #[arg(long, default_value = "http://127.0.0.1:9310")]
    url: String,
    /// Evaluation time (RFC 3339 or Unix seconds); now when absent.
    #[arg(long)]
    time: Option<String>,
    /// Start of a range query (with --end and --step).
    #[arg(long, requires_all = ["end", "step"])]
    start: Option<String>,
    /// End of a range query.
    #[arg(long, requires_all = ["start", "step"])]
    end: Option<String>,
    /// Resolution of a range query (`15s`, `5m`, or seconds).
    #[arg(long, requires_all = ["start", "end"])]
    step: Option<String>,
    /// Print the API's JSON `data` instead of a table.
    #[arg(long)]
    json: bool,
    /// The PromQL expression.
    expr: String,
}

#[derive(clap::Args)]
struct SeriesCmd {
    /// The server to ask.
    #[arg(long, default_value = "http://127.0.0.1:9310")]
    url: String,
    /// Only series with samples at or after this time.
    #[arg(long)]
    start: Option<String>,
    /// Only series with samples at or before this time.
    #[arg(long)]
    end: Option<String>,
    /// Series selectors (at least one).
    #[arg(required = true)]
    selectors: Vec<String>,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Directory of the store (created if missing).
    #[arg(long = "data-dir", default_value = "data")]
    data_dir: PathBuf,
    /// Time range of the blocks written.
    #[arg(long = "storage.block-range", default_value = "2h", value_parser = parse_interval)]
    block_range_ms: i64,
    /// `openmetrics` (timestamps in seconds), `prometheus` (milliseconds), or `auto`:
    /// OpenMetrics when the file ends with `# EOF`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "openmetrics", "prometheus"])]
    format: String,
    /// The file to import.
    file: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory of the store (created if missing).
    #[arg(long = "data-dir", default_value = "data")]
    data_dir: PathBuf,
    /// Address to listen on. Loopback by default.
    #[arg(long, default_value = "127.0.0.1:9310")]
    listen: SocketAddr,
    /// Largest decompressed remote-write body, in bytes; larger requests get 413.
    #[arg(long = "write.max-bytes", default_value_t = 32 << 20)]
    write_max_bytes: usize,
    /// Most samples one remote-write request may carry (0: no limit); more gets 400.
    #[arg(long = "write.max-samples-per-request", default_value_t = 0)]
    write_max_samples: usize,
    /// Most labels a series may have, its name included (0: no limit); more gets 400.
    #[arg(long = "write.max-labels-per-series", default_value_t = 128)]
    write_max_labels: usize,
    /// Longest label name, in bytes (0: no limit).
    #[arg(long = "write.max-label-name-length", default_value_t = 1024)]
    write_max_name_len: usize,
    /// Longest label value, in bytes (0: no limit).
    #[arg(long = "write.max-label-value-length", default_value_t = 16384)]
    write_max_value_len: usize,
    /// Most series the store holds (0: no limit). Writes that would create more are
    /// refused with --storage.series-limit-status; existing series keep ingesting.
    #[arg(long = "storage.max-series", default_value_t = 0)]
    max_series: usize,
    /// Most series one metric name may have (0: no limit); refused like --storage.max-series.
    #[arg(long = "storage.max-series-per-metric", default_value_t = 0)]
    max_series_per_metric: usize,
    /// Status for writes refused by --storage.max-series: 429 (senders retry) or 400
    /// (senders drop).
    #[arg(long = "storage.series-limit-status", default_value = "429", value_parser = parse_limit_status)]
    series_limit_status: u16,
    /// fsync the WAL before acknowledging a write. Turning it off keeps data safe from a
    /// crash of strata but not of the machine.
    #[arg(long = "wal-fsync", default_value_t = true, action = ArgAction::Set)]
    wal_fsync: bool,
    /// How often the built-in host collectors run (`15s`, `1m`); `0s` turns them off.
    #[arg(long = "collect.interval", default_value = "15s", value_parser = parse_interval)]
    collect_interval_ms: i64,
    /// Collectors to leave out, comma-separated: loadavg, meminfo, stat, netdev, diskstats,
    /// pressure, filesystem, system, cgroup, and self (strata's own metrics, stored under
    /// job "strata").
    #[arg(long = "collector.disable", value_delimiter = ',')]
    collector_disable: Vec<String>,
    /// Where the host's /proc is (`/host/proc` when strata runs in a container).
    #[arg(long = "path.procfs", default_value = "/proc")]
    path_procfs: PathBuf,
    /// Where the host's cgroup tree is mounted.
    #[arg(long = "path.cgroupfs", default_value = "/sys/fs/cgroup")]
    path_cgroupfs: PathBuf,
    /// Where the host's root filesystem is mounted (`/host` in a container); filesystem
    /// sizes and Docker's container configs are read under it.
    #[arg(long = "path.rootfs", default_value = "/")]
    path_rootfs: PathBuf,
    /// Longest a query may run; longer ones fail with a `timeout` error.
    #[arg(long = "query.timeout", default_value = "2m", value_parser = parse_interval)]
    query_timeout_ms: i64,
    /// Most samples one query may load into memory.
    #[arg(long = "query.max-samples", default_value_t = 50_000_000)]
    query_max_samples: usize,
    /// Queries evaluated at once; more wait for a free slot.
    #[arg(long = "query.max-concurrency", default_value_t = 20)]
    query_max_concurrency: usize,
    /// How far back an instant selector looks for a sample.
    #[arg(long = "query.lookback-delta", default_value = "5m", value_parser = parse_interval)]
    query_lookback_ms: i64,
    /// Time range of the blocks cut from the head (the head is cut once it spans one and
    /// a half of these).
    #[arg(long = "storage.block-range", default_value = "2h", value_parser = parse_interval)]
    block_range_ms: i64,
    /// Delete blocks older than this, relative to the newest sample (`0s` keeps all).
    #[arg(long = "retention.time", default_value = "15d", value_parser = parse_interval)]
    retention_ms: i64,
    /// Delete the oldest blocks while blocks and WAL take more than this (`512MB`, `10GB`;
    /// `0` for no limit).
    #[arg(long = "retention.size", default_value = "0", value_parser = parse_size)]
    retention_bytes: u64,
    /// Refuse samples that are out of order for their series and older than this before
    /// the newest sample (`30m`). Without it, samples of any age are accepted: they are
    /// queryable at once and reach blocks at the next cut.
    #[arg(long = "storage.ooo-window", value_parser = parse_interval)]
    ooo_window_ms: Option<i64>,
    /// Serve the TSDB admin API (`/api/v1/admin/tsdb/delete_series`, `clean_tombstones`,
    /// `snapshot`).
    #[arg(long = "enable-admin-api", alias = "web.enable-admin-api")]
    enable_admin_api: bool,
    /// Who may write, read and administer: a YAML file of bearer tokens and basic-auth
    /// users (bcrypt hashes, see `strata hash-password`) per kind of request.
    #[arg(long = "web.auth-file")]
    auth_file: Option<PathBuf>,
    /// Serve HTTPS: a YAML file in Prometheus' web configuration format with
    /// `tls_server_config: {cert_file, key_file}`; re-read on SIGHUP.
    #[arg(long = "web.config.file")]
    web_config_file: Option<PathBuf>,
    /// Most connections served at once; more wait to be accepted.
    #[arg(long = "web.max-connections", default_value_t = 512)]
    max_connections: usize,
    /// Longest a request may take to arrive, body included; idle connections are closed
    /// after it too.
    #[arg(long = "web.read-timeout", default_value = "5m", value_parser = parse_interval)]
    read_timeout_ms: i64,
    /// Configuration file (rule files, Alertmanagers, hooks, external labels).
    #[arg(long = "config.file")]
    config_file: Option<PathBuf>,
    /// The URL strata is reached at, used in alerts' generator URLs and templates
    /// (default: http://<listen address>).
    #[arg(long = "web.external-url")]
    external_url: Option<String>,
    /// Allow reloading the configuration with POST /-/reload (SIGHUP always works).
    #[arg(long = "web.enable-lifecycle")]
    enable_lifecycle: bool,
    /// How long strata may have been down for an alert's `for` state to be restored.
    #[arg(long = "rules.alert.for-outage-tolerance", default_value = "1h", value_parser = parse_interval)]
    for_outage_tolerance_ms: i64,
    /// Least time a restored alert waits before firing; alerts whose `for` is shorter
    /// are not restored.
    #[arg(long = "rules.alert.for-grace-period", default_value = "10m", value_parser = parse_interval)]
    for_grace_period_ms: i64,
    /// Least time between two notifications of the same alert to Alertmanager.
    #[arg(long = "rules.alert.resend-delay", default_value = "1m", value_parser = parse_interval)]
    resend_delay_ms: i64,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
}

/// glibc's malloc gives threads that allocate at once arenas of their own, up to eight
/// per core, and rarely returns what is freed in them: after a burst of queries on
/// several threads the freed memory stays resident. Two arenas keep the ingest threads
/// from contending while bounding that (at 75,000 series, peak RSS after ingest and a
/// round of queries went from 206 to 148 MiB of anonymous memory with one arena).
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread
        // starts.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            #[allow(clippy::print_stdout)]
            {
                println!("strata {}", env!("CARGO_PKG_VERSION"));
            }
            Ok(())
        }
        Command::Serve(args) => serve(*args),
        Command::Import(args) => import_file(args),
        Command::Query(q) => {
            let server = cli::Server::parse(&q.url)?;
            let range = match (&q.start, &q.end, &q.step) {
                (Some(s), Some(e), Some(st)) => Some((s.as_str(), e.as_str(), st.as_str())),
                _ => None,
            };
            let args = cli::QueryArgs {
                expr: &q.expr,
                time: q.time.as_deref(),
                range,
                json: q.json,
            };
            cli::query(&server, &args, &mut std::io::stdout().lock())
        }
        Command::Check { what } => check(what),
        Command::HashPassword => {
            let mut password = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
                .context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input");
            let hash = bcrypt::hash(password, 10).context("hashing")?;
            #[allow(clippy::print_stdout)]
            {
                println!("{hash}");
            }
            Ok(())
        }
        Command::Series(c) => {
            let server = cli::Server::parse(&c.url)?;
            cli::series(
                &server,
                &c.selectors,
                c.start.as_deref(),
                c.end.as_deref(),
                &mut std::io::stdout().lock(),
            )
        }
    }
}

fn import_file(args: ImportArgs) -> anyhow::Result<()> {
    let dialect = match args.format.as_str() {
        "openmetrics" => strata_ingest::text::Dialect::OpenMetrics,
        "prometheus" => strata_ingest::text::Dialect::Prometheus,
        _ => import::detect_dialect(&args.file)?,
    };
    let db = Db::open(
        &args.data_dir,
        Options {
            block_range_ms: args.block_range_ms.max(1),
            ..Options::default()
        },
    )
    .with_context(|| {
        format!(
            "opening the store in {} (stop strata serve first, or import into another directory)",
            args.data_dir.display()
        )
    })?;
    let stats = import::import(&db, &args.file, dialect)?;
    db.close().context("closing the store")?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "imported {} samples of {} series from {} into {} blocks in {}",
            stats.samples,
            stats.series,
            args.file.display(),
            stats.blocks,
            args.data_dir.display()
        );
    }
    Ok(())
}

/// `strata check rules|config`: prints what promtool prints and fails on any error.
fn check(what: CheckCmd) -> anyhow::Result<()> {
    #[allow(clippy::print_stdout)]
    let say = |s: &str| println!("{s}");
    let mut failed = false;
    let mut check_rules = |files: &[PathBuf]| {
        for f in files {
            say(&format!("Checking {}", f.display()));
            match rules::file::load_file(f) {
                Ok(groups) => {
                    let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                    say(&format!("  SUCCESS: {n} rules found\n"));
                }
                Err(errors) => {
                    failed = true;
                    say("  FAILED:");
                    for e in errors {
                        say(&e);
                    }
                    say("");
                }
            }
        }
    };
    match what {
        CheckCmd::Rules { files } => check_rules(&files),
        CheckCmd::Config { file } => {
            say(&format!("Checking {}", file.display()));
            match config::Config::load(&file) {
                Ok(cfg) => {
                    say(" SUCCESS: is a valid configuration file");
                    for w in &cfg.warnings {
                        say(&format!("  WARNING: {w}"));
                    }
                    let files = rules::file::expand_globs(&cfg.base, &cfg.rule_files)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    if !files.is_empty() {
                        say(&format!("  SUCCESS: {} rule files found\n", files.len()));
                    }
                    check_rules(&files);
                }
                Err(e) => {
                    failed = true;
                    say(&format!("  FAILED: {e}"));
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Reads the configuration and its rule files; nothing changes when any is invalid.
pub(crate) fn load_config(path: &std::path::Path) -> Result<rules::Loaded, String> {
    let cfg = config::Config::load(path)?;
    for w in &cfg.warnings {
        tracing::warn!(config = %path.display(), "{w}");
    }
    rules::load(cfg).map_err(|errors| errors.join("\n"))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let host_paths = strata_exporters::HostPaths {
        proc: args.path_procfs.clone(),
        cgroup: args.path_cgroupfs.clone(),
        rootfs: args.path_rootfs.clone(),
    };
    let known: Vec<&str> = strata_exporters::host_collectors_at(&host_paths)
        .iter()
        .map(|c| c.name())
        .chain(["self"])
        .collect();
    if let Some(bad) = args
        .collector_disable
        .iter()
        .find(|n| !known.contains(&n.as_str()))
    {
        anyhow::bail!(
            "--collector.disable: no collector is called {bad:?}; the collectors are {}",
            known.join(", ")
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log.level {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .init();

    // The configuration is checked before the store is opened, so a bad file fails fast.
    let loaded = match &args.config_file {
        Some(path) => Some(
            load_config(path)
                .map_err(|e| anyhow::anyhow!("loading the configuration failed:\n{e}"))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let db = Db::open(
        &args.data_dir,
        Options {
            wal_fsync: args.wal_fsync,
            block_range_ms: args.block_range_ms.max(1),
            retention_ms: (args.retention_ms > 0).then_some(args.retention_ms),
            retention_bytes: (args.retention_bytes > 0).then_some(args.retention_bytes),
            ooo_window_ms: args.ooo_window_ms,
            max_series: (args.max_series > 0).then_some(args.max_series),
            max_series_per_metric: (args.max_series_per_metric > 0)
                .then_some(args.max_series_per_metric),
            ..Options::default()
        },
    )
    .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let report = db.replay_report();
    tracing::info!(
        data_dir = %args.data_dir.display(),
        wal_segments = report.segments,
        series = db.stats().series,
        samples = report.samples,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store opened"
    );

    let engine = Engine::new(EngineOptions {
        lookback_delta_ms: args.query_lookback_ms.max(1),
        timeout: Duration::from_millis(args.query_timeout_ms.max(1) as u64),
        max_samples: args.query_max_samples,
        ..EngineOptions::default()
    });
    let external_url = args
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen))
        .trim_end_matches('/')
        .to_string();
    let manager = rules::Manager::new(
        db.clone(),
        engine.clone(),
        rules::Options {
            external_url,
            outage_tolerance_ms: args.for_outage_tolerance_ms,
            for_grace_period_ms: args.for_grace_period_ms,
            resend_delay_ms: args.resend_delay_ms.max(1),
            audit_log: Some(args.data_dir.join("hook-runs.jsonl")),
        },
    );
    let web_tls = match &args.web_config_file {
        Some(p) => {
            let web = server::listener::WebConfig::load(p).map_err(|e| anyhow::anyhow!(e))?;
            let cfg = web.server_config().map_err(|e| anyhow::anyhow!(e))?;
            Some((web, Arc::new(std::sync::RwLock::new(cfg))))
        }
        None => None,
    };
    let auth = match &args.auth_file {
        Some(p) => Some(Arc::new(
            server::auth::Auth::load(p).map_err(|e| anyhow::anyhow!(e))?,
        )),
        None => None,
    };
    let metadata = Arc::new(strata_ingest::metadata::MetadataStore::default());
    let scraper = scrape::ScrapeManager::new(db.clone(), Arc::clone(&metadata));
    let remote_write = forward::RemoteWrite::new(db.clone(), &args.data_dir);
    if let Some(l) = loaded {
        scraper.apply(l.config().scrape_configs.clone(), l.config().base.clone());
        remote_write.apply(&l.config().remote_write, &l.config().external_labels);
        manager.apply(l);
        tracing::info!(groups = manager.groups().len(), "rules loaded");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Parsing and evaluating a query recurse once per level of nesting: room for
        // the deepest query strata_query accepts (reserved, not committed, memory).
        .thread_stack_size(strata_query::STACK_SIZE)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr().unwrap_or(args.listen);
        tracing::info!(
            address = %addr,
            tls = web_tls.is_some(),
            "serving the HTTP API"
        );
        let listener = server::listener::Listener::new(
            listener,
            args.max_connections,
            Duration::from_millis(args.read_timeout_ms.max(1) as u64),
            web_tls.as_ref().map(|(_, state)| Arc::clone(state)),
        )
        .context("starting the listener")?;
        let query_timeout = Duration::from_millis(args.query_timeout_ms.max(1) as u64);
        let wal_sync = Arc::new(
            server::wal_sync::WalSync::start(db.clone()).context("starting the WAL sync thread")?,
        );
        let state = Arc::new(server::AppState {
            db: db.clone(),
            engine,
            max_write_bytes: args.write_max_bytes,
            started,
            query_slots: Arc::new(tokio::sync::Semaphore::new(
                args.query_max_concurrency.max(1),
            )),
            query_timeout,
            admin_api: args.enable_admin_api,
            started_at: chrono::Utc::now(),
            flags: flag_values(&args),
            metadata,
            counters: Default::default(),
            disabled_collectors: args.collector_disable.clone(),
            host_paths: host_paths.clone(),
            rules: Arc::clone(&manager),
            scrape: Arc::clone(&scraper),
            remote_write: Arc::clone(&remote_write),
            web_tls: web_tls.clone(),
            config_file: args.config_file.clone(),
            lifecycle_api: args.enable_lifecycle,
            write_limits: strata_ingest::Limits {
                max_labels_per_series: args.write_max_labels,
                max_label_name_length: args.write_max_name_len,
                max_label_value_length: args.write_max_value_len,
                max_samples_per_request: args.write_max_samples,
            },
            series_cache: strata_ingest::SeriesCache::default(),
            series_limit_status: axum::http::StatusCode::from_u16(args.series_limit_status)
                .unwrap_or(axum::http::StatusCode::TOO_MANY_REQUESTS),
            auth,
            wal_sync: Arc::clone(&wal_sync),
        });
        if args.config_file.is_some() || web_tls.is_some() {
            tokio::spawn(server::reload_on_sighup(Arc::clone(&state)));
        }
        if args.collect_interval_ms > 0 {
            tokio::spawn(collect::run(
                db.clone(),
                Arc::clone(&state.metadata),
                args.collect_interval_ms,
                host_paths.clone(),
                args.collector_disable.clone(),
                (!args.collector_disable.iter().any(|c| c == "self")).then(|| Arc::clone(&state)),
            ));
        }
        tokio::spawn(server::compact_periodically(
            db.clone(),
            Duration::from_millis((args.block_range_ms / 4).clamp(1_000, 60_000) as u64),
        ));
        // The serving loop runs as a task on the runtime's workers rather than on this
        // thread: the connection a worker accepts is then handed to the loop and served on
        // that same worker, with no wake-up of this thread and of a worker in between.
        let serving = axum::serve(
            listener,
            server::router(state)
                .into_make_service_with_connect_info::<server::listener::ConnSocket>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .into_future();
        let served = match tokio::spawn(serving).await {
            Ok(r) => r.context("serving HTTP"),
            Err(e) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        };
        wal_sync.stop();
        served
    })?;
    scraper.stop();
    manager.stop();
    remote_write.stop();
    db.close().context("flushing the WAL")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Every `serve` flag and its value as given or defaulted, for `/api/v1/status/flags`.
fn flag_values(a: &ServeArgs) -> Vec<(String, String)> {
    let d = |ms: i64| format_duration(ms);
    let mut v: Vec<(&str, String)> = vec![
        ("collect.interval", d(a.collect_interval_ms)),
        (
            "config.file",
            a.config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        ("rules.alert.for-grace-period", d(a.for_grace_period_ms)),
        (
            "rules.alert.for-outage-tolerance",
            d(a.for_outage_tolerance_ms),
        ),
        ("rules.alert.resend-delay", d(a.resend_delay_ms)),
        ("web.enable-lifecycle", a.enable_lifecycle.to_string()),
        (
            "web.config.file",
            a.web_config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        ("web.max-connections", a.max_connections.to_string()),
        ("web.read-timeout", d(a.read_timeout_ms)),
        (
            "web.external-url",
            a.external_url.clone().unwrap_or_default(),
        ),
        ("collector.disable", a.collector_disable.join(",")),
        ("data-dir", a.data_dir.display().to_string()),
        ("enable-admin-api", a.enable_admin_api.to_string()),
        ("listen", a.listen.to_string()),
        ("log.level", a.log_level.clone()),
        ("path.cgroupfs", a.path_cgroupfs.display().to_string()),
        ("path.procfs", a.path_procfs.display().to_string()),
        ("path.rootfs", a.path_rootfs.display().to_string()),
        ("query.lookback-delta", d(a.query_lookback_ms)),
        ("query.max-concurrency", a.query_max_concurrency.to_string()),
        ("query.max-samples", a.query_max_samples.to_string()),
        ("query.timeout", d(a.query_timeout_ms)),
        ("retention.size", a.retention_bytes.to_string()),
        ("retention.time", d(a.retention_ms)),
        ("storage.block-range", d(a.block_range_ms)),
        (
            "storage.ooo-window",
            a.ooo_window_ms.map(d).unwrap_or_default(),
        ),
        ("wal-fsync", a.wal_fsync.to_string()),
        ("write.max-bytes", a.write_max_bytes.to_string()),
        (
            "web.auth-file",
            a.auth_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "write.max-samples-per-request",
            a.write_max_samples.to_string(),
        ),
        (
            "write.max-labels-per-series",
            a.write_max_labels.to_string(),
        ),
        (
            "write.max-label-name-length",
            a.write_max_name_len.to_string(),
        ),
        (
            "write.max-label-value-length",
            a.write_max_value_len.to_string(),
        ),
        ("storage.max-series", a.max_series.to_string()),
        (
            "storage.max-series-per-metric",
            a.max_series_per_metric.to_string(),
        ),
        (
            "storage.series-limit-status",
            a.series_limit_status.to_string(),
        ),
    ];
    v.sort_by(|x, y| x.0.cmp(y.0));
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Milliseconds as Prometheus prints a duration (`15d`, `2h`, `1m30s`, `0s`).
fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// A size with Prometheus' units (`B`, `KB`, `MB`, `GB`, `TB`, `PB`, powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MB"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "KB" => 10,
        "MB" => 20,
        "GB" => 30,
        "TB" => 40,
        "PB" => 50,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (B, KB, MB, GB, TB, PB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_limit_status(s: &str) -> Result<u16, String> {
    match s {
        "429" => Ok(429),
        "400" => Ok(400),
        _ => Err(format!("{s:?}: the series limit answers 429 or 400")),
    }
}

fn parse_interval(s: &str) -> Result<i64, String> {
    strata_query::duration::parse_duration_ms(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 15s or 1m"))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_print_as_prometheus_does() {
        assert_eq!(super::format_duration(15 * 86_400_000), "2w1d");
        assert_eq!(super::format_duration(7_200_000), "2h");
        assert_eq!(super::format_duration(90_000), "1m30s");
        assert_eq!(super::format_duration(0), "0s");
        assert_eq!(super::format_duration(1_500), "1s500ms");
    }
}
