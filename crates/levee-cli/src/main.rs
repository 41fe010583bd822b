//! The `levee` command: parses arguments and hands over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use levee::{AccessLogSink, RunningGateway};

// mimalloc measured faster than glibc malloc on the proxy path (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    },
    /// Validate a config file: exit 0 when valid, else 1 with one FILE:LINE:COL line per problem.
    Check {
        #[arg(long, short, default_value = "levee.yaml")]
        config: PathBuf,
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
    /// API keys: `levee key new` prints a fresh random key and the digest for the config.
    Key {
        #[command(subcommand)]
        action: KeyAction,
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
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Demo { port, admin_port } => demo(port, admin_port),
        Command::Key {
            action: KeyAction::New,
        } => new_key(),
        Command::Schema => {
            let schema = levee::config::file::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
            ExitCode::SUCCESS
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

fn check(path: &Path) -> ExitCode {
    match levee::load_file(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} listener(s), {} upstream(s), {} route(s))",
                path.display(),
                config.listeners.len(),
                config.upstreams.len(),
                config.routes.len()
            );
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

fn run(path: &Path) -> ExitCode {
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
    let gateway = match RunningGateway::start(config, AccessLogSink::Stdout) {
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
    let mut signals = signals;
    let signal = signals.wait();
    tracing::info!(signal, "draining");
    signals.force_exit_on_second();
    gateway.stop();
    tracing::info!("stopped");
    ExitCode::SUCCESS
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
    println!("{}", demo.instructions());
    let mut signals = signals;
    let signal = signals.wait();
    tracing::info!(signal, "stopping demo");
    signals.force_exit_on_second();
    demo.stop();
    ExitCode::SUCCESS
}

/// SIGTERM/SIGINT handlers, installed before anything starts so an early signal still
/// leads to a clean drain rather than the default abrupt exit.
struct Signals {
    runtime: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = runtime.block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        })?;
        Ok(Signals { runtime, term, int })
    }

    /// After the first signal: a second one stops the process at once, for an operator who
    /// does not want to wait out the drain.
    fn force_exit_on_second(mut self) {
        let spawned = std::thread::Builder::new()
            .name("levee-signals".into())
            .spawn(move || {
                let signal = self.wait();
                tracing::warn!(signal, "second signal: exiting without finishing the drain");
                std::process::exit(1);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot watch for a second signal");
        }
    }

    /// Blocks until SIGTERM or SIGINT and returns its name.
    fn wait(&mut self) -> &'static str {
        let (term, int) = (&mut self.term, &mut self.int);
        self.runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
}
