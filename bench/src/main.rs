//! The `wardwatch-bench` command line: runs the scenarios of
//! [`wardwatch_bench`] and prints a table, or one JSON line per scenario.
//!
//! ```text
//! cargo run --release -p wardwatch-bench -- all [--json] [--full]
//! ```
//!
//! Logs go to stderr at `warn` (`RUST_LOG` overrides), so stdout stays the
//! table or the JSON; the in-process server's teardown is silenced once the
//! run is over.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Parser;
use wardwatch_bench::Scenario;

/// Run benchmarks over simulated ward data, each against a baseline
/// measured in the same run.
///
/// Scenarios: engine (20 rules over in-memory Arrow batches vs the same
/// rules as DataFusion batch SQL), decode (JSON payloads to Arrow vs
/// serde_json structs), state (memory of open five-minute windows),
/// recovery (engine throughput with a checkpoint every 2 s vs without;
/// snapshot, write and restore times at that state),
/// replay (the 20 rules replayed over days of archived Parquet as
/// POST /api/replay does, vs the same rules as DataFusion batch SQL over
/// the files), query (three history queries as POST /api/query runs them
/// vs DuckDB over the same files), latency (event append to alert on
/// alert-events at 100k events/s, vs the broker's own produce-to-consume
/// latency), pipeline (a tansu broker on 127.0.0.1 through an in-process
/// server vs a bare rdkafka consumer), or all. Prints a table, or JSON
/// lines with --json. Figures from a debug build are not the targets.
#[derive(Parser, Debug)]
#[command(name = "wardwatch-bench", version)]
struct BenchArgs {
    /// Scenarios to run: engine, decode, state, recovery, replay, query, latency,
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

/// Set once a benchmark run is over, to silence the teardown's logs.
static BENCH_QUIET: AtomicBool = AtomicBool::new(false);

fn main() -> Result<()> {
    let args = BenchArgs::parse();
    // Benchmarks print a table or JSON on stdout: logs go to stderr, and
    // the in-process server's info logs are left out.
    {
        use tracing_subscriber::prelude::*;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,rdkafka=error".into());
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                !BENCH_QUIET.load(Ordering::Relaxed)
            }));
        tracing_subscriber::registry().with(layer).init();
    }
    bench(args)
}

/// Runs the scenarios in order, printing each JSON line as it completes.
fn bench(args: BenchArgs) -> Result<()> {
    let scenarios = wardwatch_bench::parse_scenarios(&args.scenarios)?;
    let size = wardwatch_bench::BenchSize {
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
                wardwatch_bench::pipeline::run_keeping_broker(&size).map(|(result, broker)| {
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
        print!("{}", wardwatch_bench::table(&results));
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
