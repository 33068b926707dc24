//! `wardwatch-bench`: the benchmark suite (issue 6), a crate of its own so
//! the shipped `wardwatch` binary carries none of it (issue 11). The CLI is
//! `src/main.rs`; run it with
//! `cargo run --release -p wardwatch-bench -- all [--json] [--full]`.
//!
//! Every scenario builds deterministic input from the built-in ward
//! simulator, times wardwatch on it, and times a baseline over the very same
//! input in the same run, so the figure that matters — the ratio of our speed
//! to the baseline's — survives a noisy machine. Scenarios are plain
//! functions returning a [`BenchResult`], so the CLI, the JSON output and the
//! CI smoke test (`tests/tests/bench_smoke.rs`) all run the same code.
//!
//! The scenario functions are synchronous and build their own Tokio runtime
//! where they need one (DataFusion, the in-process server): call them from a
//! plain thread, not from inside an async runtime.
//!
//! Sizes: a small default that finishes in about a minute in a debug build,
//! `--full` for figures worth quoting, and `--patients`/`--seconds` to
//! override either (see [`BenchSize`]).

pub mod archive;
pub mod decode;
pub mod engine;
pub mod inproc;
pub mod latency;
pub mod pipeline;
pub mod query;
pub mod recovery;
pub mod replay;
pub mod rules;
pub mod state;

use std::fmt::Write as _;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::Serialize;

// The simulated ward and its Arrow batches are shared with the end-to-end
// tests; the scenarios use them through these names.
pub use wardwatch_test_support::ward::{partition_of, DecodedWard, Ward, BATCH_ROWS, PARTITIONS};

/// How much data a scenario uses. Each scenario has its own small and full
/// defaults (a ward of `patients` reporting at 1 Hz for `seconds`); the
/// overrides replace either.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BenchSize {
    /// The large size, for figures worth quoting (release builds).
    pub full: bool,
    /// Patients in the simulated ward, overriding the scenario's default.
    pub patients: Option<usize>,
    /// Simulated seconds, overriding the scenario's default.
    pub seconds: Option<u64>,
}

impl BenchSize {
    /// The small default size.
    pub fn small() -> Self {
        Self::default()
    }

    /// The `--full` size.
    pub fn full() -> Self {
        Self {
            full: true,
            ..Self::default()
        }
    }

    /// An explicit size, e.g. a tiny one for CI.
    pub fn exact(patients: usize, seconds: u64) -> Self {
        Self {
            full: false,
            patients: Some(patients),
            seconds: Some(seconds),
        }
    }

    /// The ward for this size given a scenario's (patients, seconds) defaults.
    fn resolve(&self, small: (usize, u64), full: (usize, u64)) -> Ward {
        let (p, s) = if self.full { full } else { small };
        Ward {
            patients: self.patients.unwrap_or(p).max(1),
            seconds: self.seconds.unwrap_or(s).max(1),
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub scenario: String,
    /// Events wardwatch processed in the timed part.
    pub events: u64,
    /// Wall-clock seconds of the timed part.
    pub seconds: f64,
    pub events_per_sec: f64,
    /// Cores the timed part can use (the engine is single-threaded).
    pub cores: usize,
    pub events_per_sec_per_core: f64,
    /// What we are compared with.
    pub baseline: String,
    pub baseline_events: u64,
    pub baseline_seconds: f64,
    pub baseline_events_per_sec: f64,
    /// Ours over the baseline's speed: above 1 means faster than the baseline.
    pub ratio: f64,
    /// Alerts fired in the timed run (scenarios that run rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<u64>,
    pub patients: usize,
    pub sim_seconds: u64,
    /// "debug" or "release": debug figures are not the targets.
    pub build: &'static str,
    /// Scenario-specific figures.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl BenchResult {
    /// A result from the two timings; fills in the rates and the ratio.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &str,
        ward: Ward,
        events: u64,
        seconds: f64,
        cores: usize,
        baseline: &str,
        baseline_events: u64,
        baseline_seconds: f64,
    ) -> Self {
        let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let events_per_sec = rate(events, seconds);
        let baseline_events_per_sec = rate(baseline_events, baseline_seconds);
        Self {
            scenario: scenario.to_owned(),
            events,
            seconds,
            events_per_sec,
            cores,
            events_per_sec_per_core: events_per_sec / cores.max(1) as f64,
            baseline: baseline.to_owned(),
            baseline_events,
            baseline_seconds,
            baseline_events_per_sec,
            ratio: if baseline_events_per_sec > 0.0 {
                events_per_sec / baseline_events_per_sec
            } else {
                0.0
            },
            alerts: None,
            patients: ward.patients,
            sim_seconds: ward.seconds,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            details: serde_json::Map::new(),
        }
    }

    /// Adds a scenario-specific field.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// One line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a BenchResult always serialises")
    }
}

/// The scenarios `wardwatch-bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Engine,
    Decode,
    State,
    Recovery,
    Replay,
    Query,
    /// Runs an in-process server and stops it at the end (see [`latency`]).
    Latency,
    /// Last: it leaves an idle in-process server behind (see [`pipeline`]).
    Pipeline,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 8] = [
        Scenario::Engine,
        Scenario::Decode,
        Scenario::State,
        Scenario::Recovery,
        Scenario::Replay,
        Scenario::Query,
        Scenario::Latency,
        Scenario::Pipeline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Engine => "engine",
            Scenario::Decode => "decode",
            Scenario::State => "state",
            Scenario::Recovery => "recovery",
            Scenario::Replay => "replay",
            Scenario::Query => "query",
            Scenario::Latency => "latency",
            Scenario::Pipeline => "pipeline",
        }
    }

    pub fn run(self, size: &BenchSize) -> Result<BenchResult> {
        match self {
            Scenario::Engine => engine::run(size),
            Scenario::Decode => decode::run(size),
            Scenario::State => state::run(size),
            Scenario::Recovery => recovery::run(size),
            Scenario::Replay => replay::run(size),
            Scenario::Query => query::run(size),
            Scenario::Latency => latency::run(size),
            Scenario::Pipeline => pipeline::run(size),
        }
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "engine" => Ok(Scenario::Engine),
            "decode" => Ok(Scenario::Decode),
            "state" => Ok(Scenario::State),
            "recovery" => Ok(Scenario::Recovery),
            "replay" => Ok(Scenario::Replay),
            "query" => Ok(Scenario::Query),
            "pipeline" => Ok(Scenario::Pipeline),
            "latency" => Ok(Scenario::Latency),
            other => bail!(
                "unknown scenario `{other}`: expected one of engine, decode, state, recovery, replay, query, latency, pipeline, or all"
            ),
        }
    }
}

/// Parses scenario names (`all` means every one), without repeats, in the
/// canonical order: the scenarios with an in-process server come last, and
/// the pipeline last of all because it does not stop the server it starts.
pub fn parse_scenarios<S: AsRef<str>>(names: &[S]) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for name in names {
        match name.as_ref() {
            "all" => out.extend(Scenario::ALL),
            other => out.push(other.parse()?),
        }
    }
    if out.is_empty() {
        bail!("name at least one scenario: engine, decode, state, recovery, replay, query, latency, pipeline, or all");
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A progress line on stderr, so stdout stays the table or the JSON.
pub fn progress(scenario: &str, message: impl std::fmt::Display) {
    eprintln!("[bench {scenario}] {message}");
}

/// `1234567.8` → `1.23M`: rates for people.
pub fn human(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    if unit.is_empty() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// The table for people.
pub fn table(results: &[BenchResult]) -> String {
    let header = [
        "scenario",
        "events",
        "seconds",
        "events/s",
        "baseline",
        "baseline events/s",
        "ratio",
    ];
    let rows: Vec<[String; 7]> = results
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.events.to_string(),
                format!("{:.3}", r.seconds),
                human(r.events_per_sec),
                r.baseline.clone(),
                human(r.baseline_events_per_sec),
                format!("{:.2}", r.ratio),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Names left-aligned, figures right-aligned.
            if i == 0 || i == 4 {
                let _ = write!(text, "{cell:<w$}  ");
            } else {
                let _ = write!(text, "{cell:>w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    line(&widths.map(|w| "-".repeat(w)));
    for row in &rows {
        line(row);
    }
    out
}

/// Cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_in_canonical_order_without_repeats() {
        let s = parse_scenarios(&["pipeline", "engine", "engine"]).unwrap();
        assert_eq!(s, [Scenario::Engine, Scenario::Pipeline]);
        let s =
            parse_scenarios(&["pipeline", "query", "replay", "latency", "state", "query"]).unwrap();
        assert_eq!(
            s,
            [
                Scenario::State,
                Scenario::Replay,
                Scenario::Query,
                Scenario::Latency,
                Scenario::Pipeline
            ]
        );
        assert_eq!(parse_scenarios(&["all"]).unwrap(), Scenario::ALL);
        assert_eq!(Scenario::ALL.last(), Some(&Scenario::Pipeline));
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
        }
        let err = parse_scenarios(&["engnie"]).unwrap_err().to_string();
        assert!(err.contains("unknown scenario `engnie`"), "{err}");
    }

    #[test]
    fn sizes_resolve_defaults_and_overrides() {
        let small = (10, 20);
        let full = (100, 200);
        assert_eq!(
            BenchSize::small().resolve(small, full),
            Ward {
                patients: 10,
                seconds: 20
            }
        );
        assert_eq!(
            BenchSize::full().resolve(small, full),
            Ward {
                patients: 100,
                seconds: 200
            }
        );
        let over = BenchSize {
            full: true,
            patients: Some(7),
            seconds: None,
        };
        assert_eq!(
            over.resolve(small, full),
            Ward {
                patients: 7,
                seconds: 200
            }
        );
    }

    #[test]
    fn table_has_a_header_and_a_row_per_result() {
        let ward = Ward {
            patients: 1,
            seconds: 1,
        };
        let r = BenchResult::new(
            "engine",
            ward,
            2_000_000,
            1.0,
            1,
            "datafusion",
            1_000_000,
            1.0,
        );
        assert_eq!(r.ratio, 2.0);
        let t = table(std::slice::from_ref(&r));
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.contains("2.00M"), "{t}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        for key in [
            "scenario",
            "events",
            "seconds",
            "events_per_sec",
            "baseline",
            "baseline_events_per_sec",
            "ratio",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }
}
