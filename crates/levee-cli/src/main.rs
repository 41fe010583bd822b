//! The `levee` command: parses arguments and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use levee::{AccessLogSink, RunningGateway};
use manage::{admin_command, field};

mod manage;

// mimalloc measured faster than glibc malloc on the proxy path (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for a gateway process, unless `MIMALLOC_ALLOW_THP` says
/// otherwise. mimalloc asks the kernel for huge pages for its arenas, so every thread's first
/// small allocation faults in a whole 2 MiB page: 24 of an idle gateway's 35 MiB were such
/// pages, and neither the proxy path nor a reload measured faster with them (bench/RESULTS.md,
/// "Memory"). Short-lived commands keep them: `levee check` of 10,000 routes, which
/// allocates a lot once, takes 150 ms with huge pages and 205 ms without. The flag belongs to
/// the whole process (the kernel keeps it on the address space).
fn huge_pages_off() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Refused only by kernels older than 3.15; huge pages then stay as they were.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

#[derive(Parser)]
#[command(name = "levee", version, about = "A reliability-first API and AI gateway")]
struct Cli {
    /// Log format for the gateway's own logs (the access log is always JSON).
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "levee.yaml")]
        config: PathBuf,
        /// Reload when the config file's contents change (checked every second).
        #[arg(long)]
        watch: bool,
        /// Write the process id to this file (removed again on a clean stop).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 when valid, else 1 with one FILE:LINE:COL line per problem.
    Check {
        #[arg(long, short, default_value = "levee.yaml")]
        config: PathBuf,
        /// `text`: one `FILE:LINE:COL: message` line per problem on stderr (warnings marked
        /// `warning:`); `json`: one JSON document on stdout, for tools.
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Run the gateway with two built-in demo upstreams on loopback.
    Demo {
        /// Gateway port (a free port is used if it is taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port (a free port is used if it is taken).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// The newest calls from a running gateway's call log (needs `data_dir`).
    Calls {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        consumer: Option<String>,
        #[arg(long)]
        status: Option<u16>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Routes of a running gateway over the last hour: requests, 5xx rate, p99 latency.
    Top {
        #[command(flatten)]
        admin: AdminArgs,
        /// Group by route, consumer, upstream, status or model.
        #[arg(long, default_value = "route")]
        by: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// SLOs: `levee slo status` asks a running gateway; `levee slo rules` writes Prometheus rules.
    Slo {
        #[command(subcommand)]
        action: SloAction,
    },
    /// Cluster mode: `levee cluster status` shows the fleet as a running replica sees it.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// API keys: `levee key new` prints a fresh random key and the digest for the config.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    #[command(flatten)]
    Manage(manage::Manage),
}

/// Where the admin API is and how to authenticate to it.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API base URL.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// Environment variable holding the admin token.
    #[arg(long, default_value = "LEVEE_ADMIN_TOKEN")]
    token_env: String,
}

#[derive(Subcommand)]
enum SloAction {
    /// Every SLO of a running gateway: objective, SLI, budget left, burn rates, alerts.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print Prometheus recording and alerting rules equivalent to the built-in alerts.
    Rules {
        #[arg(long, short, default_value = "levee.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Every replica of the fleet: id, version, config hash, last heartbeat, the stores it
    /// reaches, which one leads alerting; and warnings (replicas on different configs).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Print a new random API key (give it to the consumer) and its `sha256:` digest (put it
    /// in the config).
    New,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        huge_pages_off();
    }
    init_logging(cli.log_format);
    match cli.command {
        Command::Run {
            config,
            watch,
            pid_file,
        } => run(&config, watch, pid_file.as_deref()),
        Command::Check { config, format } => check(&config, format),
        Command::Demo { port, admin_port } => demo(port, admin_port),
        Command::Key {
            action: KeyAction::New,
        } => new_key(),
        Command::Calls {
            admin,
            route,
            consumer,
            status,
            limit,
            json,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(route) = &route {
                query.append_pair("route", route);
            }
            if let Some(consumer) = &consumer {
                query.append_pair("consumer", consumer);
            }
            if let Some(status) = status {
                query.append_pair("status", &status.to_string());
            }
            let url = format!(
                "{}/api/v1/calls?{}",
                admin.admin.trim_end_matches('/'),
                query.finish()
            );
            admin_command(&admin, &url, json, calls_table)
        }
        Command::Top { admin, by, json } => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("group_by", &by)
                .append_pair("bucket", "1h")
                .finish();
            let url = format!("{}/api/v1/analytics?{query}", admin.admin.trim_end_matches('/'));
            admin_command(&admin, &url, json, top_table)
        }
        Command::Slo {
            action: SloAction::Status { admin, json },
        } => {
            let url = format!("{}/api/v1/slos", admin.admin.trim_end_matches('/'));
            admin_command(&admin, &url, json, slo_table)
        }
        Command::Slo {
            action: SloAction::Rules { config },
        } => slo_rules(&config),
        Command::Cluster {
            action: ClusterAction::Status { admin, json },
        } => {
            let url = format!("{}/api/v1/cluster", admin.admin.trim_end_matches('/'));
            admin_command(&admin, &url, json, cluster_table)
        }
        Command::Manage(command) => manage::run(command),
        Command::Schema => {
            let schema = levee::config::file::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
            ExitCode::SUCCESS
        }
    }
}

/// The calls as a table, with a last column `node` in cluster mode (where calls carry the
/// replica that served them).
fn calls_table(value: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let calls = field(value, "calls").as_array().cloned().unwrap_or_default();
    let fleet = calls.iter().any(|c| c.get("node").is_some());
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            let time = field(c, "time_ms")
                .as_u64()
                .map(humantime_millis)
                .unwrap_or_default();
            let mut row = vec![
                time,
                field(c, "status").to_string(),
                text(field(c, "method")),
                text(field(c, "path")),
                text(field(c, "route")),
                text(field(c, "consumer")),
                text(field(c, "target")),
                format!("{:.1}", field(c, "latency_ms").as_f64().unwrap_or(0.0)),
            ];
            row.extend(fleet.then(|| text(field(c, "node"))));
            row
        })
        .collect();
    let mut header = vec![
        "time", "status", "method", "path", "route", "consumer", "target", "ms",
    ];
    header.extend(fleet.then_some("node"));
    levee::admin_client::table(&header, &rows)
}

fn humantime_millis(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    levee::observability::access_log::format_time(time)
}

fn top_table(value: &serde_json::Value) -> String {
    use std::collections::BTreeMap;
    // Sum the hour buckets per group; the p99 shown is the worst bucket's.
    let mut groups: BTreeMap<String, (u64, u64, f64)> = BTreeMap::new();
    for cell in field(value, "series").as_array().into_iter().flatten() {
        let group = field(cell, "group").as_str().unwrap_or("-").to_string();
        let entry = groups.entry(group).or_default();
        entry.0 += field(cell, "requests").as_u64().unwrap_or(0);
        entry.1 += field(cell, "errors").as_u64().unwrap_or(0);
        entry.2 = entry.2.max(field(cell, "p99_ms").as_f64().unwrap_or(0.0));
    }
    let mut rows: Vec<(String, (u64, u64, f64))> = groups.into_iter().collect();
    rows.sort_by_key(|(_, (requests, _, _))| std::cmp::Reverse(*requests));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(group, (requests, errors, p99))| {
            vec![
                group,
                requests.to_string(),
                format!("{:.2}%", 100.0 * errors as f64 / requests.max(1) as f64),
                format!("{p99:.1}"),
            ]
        })
        .collect();
    levee::admin_client::table(&["group", "requests", "5xx", "p99 ms"], &rows)
}

/// `levee cluster status`: one row per replica, then the warnings.
fn cluster_table(value: &serde_json::Value) -> String {
    if field(value, "cluster") != &serde_json::Value::Bool(true) {
        return "not in cluster mode (the config has no `cluster` block)\n".into();
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let yes_no = |v: &serde_json::Value| match v.as_bool() {
        Some(true) => "up",
        Some(false) => "down",
        None => "-",
    };
    let rows: Vec<Vec<String>> = field(value, "nodes")
        .as_array()
        .into_iter()
        .flatten()
        .map(|node| {
            let beat = field(node, "last_heartbeat_ms").as_u64().unwrap_or(0);
            let mut id = field(node, "id").as_str().unwrap_or("-").to_owned();
            if field(node, "self").as_bool() == Some(true) {
                id.push_str(" (this)");
            }
            vec![
                id,
                if field(node, "alive").as_bool() == Some(true) {
                    "alive"
                } else {
                    "gone"
                }
                .into(),
                field(node, "version").as_str().unwrap_or("-").to_owned(),
                field(node, "config_hash").as_str().unwrap_or("-").to_owned(),
                format!("{:.1}s ago", now_ms.saturating_sub(beat) as f64 / 1000.0),
                yes_no(field(node, "redis")).into(),
                yes_no(field(node, "postgres")).into(),
                if field(node, "alert_leader").as_bool() == Some(true) {
                    "yes"
                } else {
                    "-"
                }
                .into(),
            ]
        })
        .collect();
    let mut out = levee::admin_client::table(
        &[
            "node",
            "state",
            "version",
            "config",
            "heartbeat",
            "redis",
            "postgres",
            "leader",
        ],
        &rows,
    );
    for warning in field(value, "warnings").as_array().into_iter().flatten() {
        out.push_str(&format!("warning: {}\n", warning.as_str().unwrap_or_default()));
    }
    out
}

fn slo_table(value: &serde_json::Value) -> String {
    let percent = |v: &serde_json::Value| v.as_f64().map_or_else(|| "-".into(), |p| format!("{p:.3}%"));
    let rows: Vec<Vec<String>> = field(value, "slos")
        .as_array()
        .into_iter()
        .flatten()
        .map(|slo| {
            let burn = |window: &str| {
                field(slo, "burn_rates")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|b| field(b, "window").as_str() == Some(window))
                    .and_then(|b| field(b, "burn_rate").as_f64())
                    .map_or_else(|| "-".into(), |r| format!("{r:.2}"))
            };
            let alerts: Vec<&str> = field(slo, "alerts_firing")
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| field(a, "severity").as_str())
                .collect();
            vec![
                field(slo, "name").as_str().unwrap_or("-").to_owned(),
                percent(field(slo, "objective")),
                percent(field(slo, "sli_now")),
                field(field(slo, "error_budget"), "remaining")
                    .as_f64()
                    .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0)),
                burn("5m"),
                burn("1h"),
                burn("6h"),
                burn("3d"),
                if alerts.is_empty() {
                    "-".into()
                } else {
                    alerts.join(",")
                },
            ]
        })
        .collect();
    levee::admin_client::table(
        &[
            "slo",
            "objective",
            "sli",
            "budget left",
            "burn 5m",
            "burn 1h",
            "burn 6h",
            "burn 3d",
            "firing",
        ],
        &rows,
    )
}

/// `levee slo rules`: the config's SLOs as Prometheus rules on stdout.
fn slo_rules(path: &std::path::Path) -> ExitCode {
    let config = match levee::load_file(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match levee::slo::rules::prometheus_rules(&config.slos) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("levee: {error}");
            ExitCode::FAILURE
        }
    }
}

fn new_key() -> ExitCode {
    let mut bytes = [0u8; 32];
    // The operating system's generator: keys must be unguessable, not merely random-looking.
    if let Err(error) = getrandom::fill(&mut bytes) {
        eprintln!("levee: no secure randomness available: {error}");
        return ExitCode::FAILURE;
    }
    let key: String = std::iter::once("lvk_".to_string())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    println!("key:    {key}");
    println!("digest: {}", levee::auth::digest_of(&key));
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEVEE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// How `levee check` reports.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

fn check(path: &Path, format: CheckFormat) -> ExitCode {
    let result = levee::load_file(path);
    if format == CheckFormat::Json {
        let problem = |e: &levee::ConfigError| serde_json::json!({ "file": e.file, "line": e.line, "col": e.col, "message": e.message });
        let (valid, errors, warnings) = match &result {
            Ok(config) => (true, Vec::new(), config.warnings.iter().map(problem).collect()),
            Err(errors) => (
                false,
                errors.0.iter().map(problem).collect::<Vec<_>>(),
                Vec::new(),
            ),
        };
        let report = serde_json::json!({
            "file": path.display().to_string(),
            "valid": valid,
            "errors": errors,
            "warnings": warnings,
        });
        println!("{report}");
        return if valid {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match result {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!(
                    "{}:{}:{}: warning: {}",
                    warning.file, warning.line, warning.col, warning.message
                );
            }
            println!(
                "{}: ok ({} listener(s), {} upstream(s), {} route(s), {} warning(s))",
                path.display(),
                config.listeners.len(),
                config.upstreams.len(),
                config.routes.len(),
                config.warnings.len()
            );
            // The process ends now: freeing a config of 100,000 routes piece by piece would
            // only add a tenth of a second to the check.
            std::mem::forget(config);
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, watch: bool, pid_file: Option<&Path>) -> ExitCode {
    // Sockets from a predecessor (kill -USR2), taken before any thread exists.
    let mut inherited = match levee::restart::Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(message) => {
            eprintln!("levee: {message}");
            return ExitCode::FAILURE;
        }
    };
    let config = match levee::load_file(path) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            tracing::error!(config = %path.display(), problems = errors.0.len(), "invalid config, not starting");
            return ExitCode::FAILURE;
        }
    };
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("levee: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let workers = config.workers;
    for warning in &config.warnings {
        tracing::warn!(%warning, "config warning");
    }
    let gateway = match RunningGateway::start_with(config, AccessLogSink::Stdout, inherited.as_mut()) {
        Ok(gateway) => gateway,
        Err(error) => {
            eprintln!("levee: {error}");
            tracing::error!(%error, "startup failed");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in gateway.listeners() {
        tracing::info!(listener = %name, %addr, workers, "listening");
    }
    if let Some(addr) = gateway.admin_addr() {
        tracing::info!(%addr, "admin listening");
    }
    if let Some(pid_file) = pid_file {
        if let Err(error) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            tracing::error!(%error, file = %pid_file.display(), "cannot write the pid file");
        }
    }
    if let Some(inherited) = inherited.as_mut() {
        // The predecessor drains and exits once it hears this.
        inherited.announce_ready();
    }
    if watch {
        if let Err(error) =
            levee::reload::watch_file(gateway.state().clone(), std::time::Duration::from_secs(1))
        {
            tracing::error!(%error, "cannot watch the config file");
        }
    }
    let mut signals = signals;
    let signal = loop {
        match signals.wait() {
            Event::Reload => {
                // Errors are logged and counted by the reload itself.
                let _ = gateway.reload();
            }
            Event::Restart => match gateway.restart(RESTART_TIMEOUT) {
                Ok(()) => {
                    // A stop signal that came during the handover asked for what happens now
                    // anyway: it must not count as the second signal that skips the drain.
                    signals.discard_pending();
                    break "SIGUSR2";
                }
                Err(error) => tracing::error!(%error, "restart failed; this process keeps serving"),
            },
            Event::Stop(signal) => break signal,
        }
    };
    tracing::info!(signal, "draining");
    signals.force_exit_on_second();
    gateway.stop();
    if let Some(pid_file) = pid_file {
        // Only our own pid file: a restarted successor may have written its pid there.
        let ours =
            std::fs::read_to_string(pid_file).is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(pid_file);
        }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// What a signal asks for.
enum Event {
    /// SIGTERM or SIGINT: drain and stop.
    Stop(&'static str),
    /// SIGHUP: reload the config file.
    Reload,
    /// SIGUSR2: start a successor on the same sockets, then drain.
    Restart,
}

/// How long a successor may take to start serving before the restart is abandoned.
const RESTART_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How a shell runs this binary: `levee` when that is what `PATH` finds, else its path (after
/// `cargo run -- demo` it is `target/.../levee`, and a bare `levee` would not be found).
fn levee_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "levee".into();
    };
    let exe = exe.canonicalize().unwrap_or(exe);
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|dir| dir.join("levee").canonicalize().is_ok_and(|found| found == exe))
    });
    if on_path {
        return "levee".into();
    }
    // Relative to the working directory when it is below it (`target/release/levee`).
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| exe.clone());
    shown.display().to_string()
}

fn demo(port: u16, admin_port: u16) -> ExitCode {
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("levee: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let demo = match levee::demo::Demo::start(port, admin_port) {
        Ok(demo) => demo,
        Err(error) => {
            eprintln!("levee demo: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", demo.instructions(&levee_command()));
    let mut signals = signals;
    // The demo has no config file: SIGHUP has nothing to reload.
    let signal = loop {
        if let Event::Stop(signal) = signals.wait() {
            break signal;
        }
    };
    tracing::info!(signal, "stopping demo");
    signals.force_exit_on_second();
    demo.stop();
    ExitCode::SUCCESS
}

/// SIGTERM/SIGINT/SIGHUP handlers, installed before anything starts so an early signal still
/// leads to a clean drain rather than the default abrupt exit.
struct Signals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int, hup, usr2) = runtime.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::user_defined2())?,
            ))
        })?;
        Ok(Signals {
            runtime,
            term,
            int,
            hup,
            usr2,
        })
    }

    /// After the first signal: a second one stops the process at once, for an operator who
    /// does not want to wait out the drain.
    fn force_exit_on_second(mut self) {
        let spawned = std::thread::Builder::new()
            .name("levee-signals".into())
            .spawn(move || loop {
                if let Event::Stop(signal) = self.wait() {
                    tracing::warn!(signal, "second signal: exiting without finishing the drain");
                    std::process::exit(1);
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot watch for a second signal");
        }
    }

    /// Forgets signals that arrived while nobody waited for them.
    fn discard_pending(&mut self) {
        for _ in 0..8 {
            let (term, int, hup, usr2) = (&mut self.term, &mut self.int, &mut self.hup, &mut self.usr2);
            let pending = self.runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(1), async {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                        _ = hup.recv() => {},
                        _ = usr2.recv() => {},
                    }
                })
                .await
                .is_ok()
            });
            if !pending {
                return;
            }
        }
    }

    /// Blocks until SIGTERM, SIGINT, SIGHUP or SIGUSR2.
    fn wait(&mut self) -> Event {
        let (term, int, hup, usr2) = (&mut self.term, &mut self.int, &mut self.hup, &mut self.usr2);
        self.runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => Event::Stop("SIGTERM"),
                _ = int.recv() => Event::Stop("SIGINT"),
                _ = hup.recv() => Event::Reload,
                _ = usr2.recv() => Event::Restart,
            }
        })
    }
}
