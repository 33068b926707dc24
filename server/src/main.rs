//! The `wardwatch` command line.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use wardwatch::bench::Scenario;
use wardwatch::config::Config;

/// SQL streaming rules for clinical alerting: bedside vitals from Kafka,
/// alert rules in SQL with TUMBLE and HOP windows, alerts to Kafka and people.
#[derive(Parser, Debug)]
#[command(name = "wardwatch", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: Kafka source (if configured), rules, alerts, REST API and UI.
    ///
    /// Settings come from defaults, then --config FILE (TOML), then WARDWATCH_*
    /// environment variables, then flags. Without --kafka-brokers the server runs
    /// embedded: events arrive over POST /api/ingest (or from --demo).
    Serve(ServeArgs),
    /// Run benchmarks over simulated ward data, each against a baseline
    /// measured in the same run.
    ///
    /// Scenarios: engine (20 rules over in-memory Arrow batches vs the same
    /// rules as DataFusion batch SQL), decode (JSON payloads to Arrow vs
    /// serde_json structs), state (memory of open five-minute windows),
    /// replay (the 20 rules replayed over days of archived Parquet as
    /// POST /api/replay does, vs the same rules as DataFusion batch SQL over
    /// the files), query (three history queries as POST /api/query runs them
    /// vs DuckDB over the same files), latency (event append to alert on
    /// alert-events at 100k events/s, vs the broker's own produce-to-consume
    /// latency), pipeline (a tansu broker on 127.0.0.1 through an in-process
    /// server vs a bare rdkafka consumer), or all. Prints a table, or JSON
    /// lines with --json. Figures from a debug build are not the targets.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Scenarios to run: engine, decode, state, replay, query, latency,
    /// pipeline, or all.
    #[arg(required = true, value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// One JSON object per scenario per line on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// The large size (for release builds; the default finishes in about a
    /// minute in a debug build).
    #[arg(long)]
    full: bool,
    /// Patients in the simulated ward (overrides the size's default; for
    /// latency, the offered load in events/s).
    #[arg(long)]
    patients: Option<usize>,
    /// Simulated seconds at 1 Hz per patient (overrides the size's default;
    /// for latency, the seconds of load).
    #[arg(long)]
    seconds: Option<u64>,
}

/// Runs the scenarios in order, printing each JSON line as it completes.
fn bench(args: BenchArgs) -> Result<()> {
    let scenarios = wardwatch::bench::parse_scenarios(&args.scenarios)?;
    let size = wardwatch::bench::BenchSize {
        full: args.full,
        patients: args.patients,
        seconds: args.seconds,
    };
    let mut results = Vec::new();
    // The pipeline's broker lives until we exit: the in-process server it
    // fed cannot be stopped and would log its loss (the pipeline runs last).
    let mut _broker = None;
    for scenario in scenarios {
        let result = match scenario {
            Scenario::Pipeline => {
                wardwatch::bench::pipeline::run_keeping_broker(&size).map(|(result, broker)| {
                    _broker = Some(broker);
                    result
                })
            }
            other => other.run(&size),
        }
        .with_context(|| format!("benchmark `{}` failed", scenario.name()))?;
        if args.json {
            println!("{}", result.to_json_line());
        }
        results.push(result);
    }
    if !args.json {
        print!("{}", wardwatch::bench::table(&results));
        if cfg!(debug_assertions) {
            println!(
                "(debug build: these figures are not the targets; use a release build for those)"
            );
        }
    }
    // Stopping the broker makes the idle in-process consumer complain; the
    // run is over, so nothing said from here on matters.
    BENCH_QUIET.store(true, Ordering::Relaxed);
    drop(_broker);
    Ok(())
}

/// Set once a benchmark run is over, to silence the teardown's logs.
static BENCH_QUIET: AtomicBool = AtomicBool::new(false);

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "WARDWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the HTTP API, UI and /metrics [default: 127.0.0.1:8080].
    #[arg(long, env = "WARDWATCH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Directory (or object store URL) for rules, alerts and the archive [default: ./data].
    #[arg(long, env = "WARDWATCH_DATA_DIR")]
    data_dir: Option<String>,
    /// Kafka bootstrap servers, host:port[,host:port…]. Omit to run without Kafka.
    #[arg(long, env = "WARDWATCH_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Consumer group id [default: wardwatch].
    #[arg(long, env = "WARDWATCH_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// Topic of incoming VitalEvents [default: vitals].
    #[arg(long, env = "WARDWATCH_VITALS_TOPIC")]
    vitals_topic: Option<String>,
    /// Topic alerts are written to [default: alert-events].
    #[arg(long, env = "WARDWATCH_ALERTS_TOPIC")]
    alerts_topic: Option<String>,
    /// Dead-letter topic for events that cannot be processed [default: vitals-dlq].
    #[arg(long, env = "WARDWATCH_DLQ_TOPIC")]
    dlq_topic: Option<String>,
    /// librdkafka fetch.wait.max.ms for the consumer [default: 10].
    #[arg(long, env = "WARDWATCH_FETCH_WAIT_MAX_MS")]
    fetch_wait_max_ms: Option<u32>,
    /// Default allowed lateness of event time, in ms [default: 500].
    #[arg(long, env = "WARDWATCH_ALLOWED_LATENESS_MS")]
    allowed_lateness_ms: Option<i64>,
    /// Start a simulated ward (hundreds of patients at 1 Hz) and example rules.
    #[arg(long)]
    demo: bool,
    /// Patients in the simulated ward [default: 300].
    #[arg(long)]
    demo_patients: Option<usize>,
}

impl ServeArgs {
    fn into_config(self) -> Result<(Config, bool)> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.kafka_brokers.filter(|b| !b.trim().is_empty()) {
            config.kafka.brokers = Some(v);
        }
        if let Some(v) = self.kafka_group {
            config.kafka.group_id = v;
        }
        if let Some(v) = self.vitals_topic {
            config.kafka.vitals_topic = v;
        }
        if let Some(v) = self.alerts_topic {
            config.kafka.alerts_topic = v;
        }
        if let Some(v) = self.dlq_topic {
            config.kafka.dlq_topic = v;
        }
        if let Some(v) = self.fetch_wait_max_ms {
            config.kafka.fetch_wait_max_ms = v;
        }
        if let Some(v) = self.allowed_lateness_ms {
            config.pipeline.allowed_lateness_ms = v;
        }
        if let Some(v) = self.demo_patients {
            config.demo.patients = v;
        }
        Ok((config, self.demo))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = |default: &str| {
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into())
    };
    match cli.command {
        Command::Serve(_) => tracing_subscriber::fmt()
            .with_env_filter(filter("info,rdkafka=warn,datafusion=warn"))
            .init(),
        // Benchmarks print a table or JSON on stdout: logs go to stderr, and
        // the in-process server's info logs are left out.
        Command::Bench(_) => {
            use tracing_subscriber::prelude::*;
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter("warn,rdkafka=error"))
                .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                    !BENCH_QUIET.load(Ordering::Relaxed)
                }));
            tracing_subscriber::registry().with(layer).init();
        }
    }
    match cli.command {
        Command::Serve(args) => {
            let (config, demo) = args.into_config()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(wardwatch::server::run(config, demo))
        }
        Command::Bench(args) => bench(args),
    }
}
