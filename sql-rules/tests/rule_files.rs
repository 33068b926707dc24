//! Rule semantics as files: `tests/rules/*.rules` hold rules, input events
//! and the alerts they must produce (the sqllogictest habit), so a reader
//! sees behaviour without reading Rust. This is their runner (`harness =
//! false`, like DataFusion's sqllogictest runner).
//!
//! ```text
//! cargo test -p wardwatch-sql-rules --test rule_files               # every file
//! cargo test -p wardwatch-sql-rules --test rule_files -- tumble     # names containing `tumble`
//! cargo test -p wardwatch-sql-rules --test rule_files -- --complete # rewrite expect blocks
//! ```
//!
//! `--complete` rewrites the expect blocks that fail from the alerts the
//! engine produced (see `rule_files/complete.rs`) and leaves everything else
//! byte for byte; review the result with `git diff`. libtest's flags that
//! cargo may pass are accepted: `--list`, `--exact`, `--skip <f>`,
//! `--ignored` (runs nothing: no file is ignored), `-q`/`--quiet` (only
//! failures and the summary); the others (`--nocapture`, `--test-threads`,
//! `--color`, `--format`, …) are ignored.
//!
//! Format (blank lines and `#` comments are ignored; `tests/rules/README.md`
//! says the same with examples):
//!
//! ```text
//! rule <id> [cooldown=<ms>] [lateness=<ms>] [keep_duplicates] [escalate=<col>><value>:<severity>]
//! <SQL…>
//! end
//! events [partition=<n>]          # one batch
//! <ts_ms> <patient> [hr=…] [spo2=…] [rr=…] [sbp=…] [dbp=…] [hospital=…] [seq=…]
//! repeat <n> [<field>+=<step>…]   # the next event n times, each copy stepping
//! <ts_ms> <patient> …             #   `field` (ts, seq, hr, …) by `step`
//! end
//! tick <processing_ms>            # processing time passes (idle partitions)
//! watermark <ms>                  # close every window ending at or before
//! expect                          # every alert so far, in any order
//! <rule> <patient|-> [window=<start>..<end>] [status=fired|suppressed] [col=value…]
//! repeat <n>                      # the next line stands for n alerts
//! <rule> <patient|-> …
//! end
//! late <rule> <count>
//! budgets [alerts_per_minute=<n>] [work_per_batch=<n>] [state_bytes=<n>]
//! suspended <rule> <alerts_per_minute|work_per_batch|state_bytes|none>
//! refuse <line>:<column> <message fragment>
//! <SQL…>
//! end
//! ```
//!
//! An expect line pins only the fields it names (numbers match to 1e-9
//! relative). Every file also runs a second time with each event in its own
//! batch (partition order kept), and a third time so with patients
//! forgotten as soon as their rows allow (a 1 ms span); the alerts must be
//! identical. Besides the files, `self_check/…` cases prove the runner
//! itself fails when it should.

// A test target's root takes its modules from `tests/`: point at its folder.
#[path = "rule_files/complete.rs"]
mod complete;
#[path = "rule_files/format.rs"]
mod format;
#[path = "rule_files/replay.rs"]
mod replay;
#[path = "rule_files/self_check.rs"]
mod self_check;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use replay::{difference, ExpectResult, Problem, Rendered};

/// What checking one file found.
#[derive(Debug, Default)]
pub struct Report {
    pub alerts: usize,
    /// Each failure, already worded for the person reading the output.
    pub failures: Vec<String>,
    /// The file as `--complete` would write it, when that differs.
    pub completed: Option<String>,
    /// Patients forgotten in the run that forgets after 1 ms.
    pub forgotten: u64,
}

fn describe_problems(name: &str, problems: &[Problem], mode: &str) -> Vec<String> {
    problems
        .iter()
        .map(|p| match p.line {
            Some(line) => format!("{name}:{line}: {}{mode}", p.message),
            None => format!("{name}: {}{mode}", p.message),
        })
        .collect()
}

/// `- wanted` / `+ unexpected` lines for a failed expect block.
fn describe_expect(name: &str, e: &ExpectResult, mode: &str) -> String {
    let missing: usize = e.wanted.iter().map(|w| w.count - w.matched).sum();
    let mut out = format!(
        "{name}:{}: expect{mode}: {missing} expected alert(s) missing, {} unexpected",
        e.line,
        e.unexpected.len()
    );
    for w in e.wanted.iter().filter(|w| w.matched < w.count) {
        out.push_str(&format!("\n    - {}", replay::line(&w.pattern)));
        if w.count > 1 {
            out.push_str(&format!("   ({} of {})", w.count - w.matched, w.count));
        }
    }
    for (n, text) in complete::folded(&e.unexpected) {
        out.push_str(&format!("\n    + {text}"));
        if n > 1 {
            out.push_str(&format!("   (x{n})"));
        }
    }
    out
}

fn describe_batching(name: &str, whole: &[Rendered], single: &[Rendered]) -> Option<String> {
    let (only_whole, only_single) = difference(whole, single);
    if only_whole.is_empty() && only_single.is_empty() {
        return None;
    }
    let mut out = format!(
        "{name}: alerts depend on batching (- whole batches only, + one event per batch only)"
    );
    for a in &only_whole {
        out.push_str(&format!("\n    - {}", replay::line(a)));
    }
    for a in &only_single {
        out.push_str(&format!("\n    + {}", replay::line(a)));
    }
    Some(out)
}

/// Checks the rule file `name` holding `text`; with `completing`, failed
/// expect blocks are not failures but are rewritten into
/// [`Report::completed`].
pub fn check(name: &str, text: &str, completing: bool) -> Report {
    let mut report = Report::default();
    let steps = match format::parse(text) {
        Ok(steps) => steps,
        Err(e) => {
            report
                .failures
                .push(format!("{name}:{}: {}", e.line, e.message));
            return report;
        }
    };
    let whole = replay::run(&steps, false, None);
    let single = replay::run(&steps, true, None);
    // Patients forgotten as soon as their rows allow (a 1 ms span): the
    // alerts must not change.
    let forgetting = replay::run(&steps, true, Some(1));
    report.alerts = whole.alerts.len();

    report
        .failures
        .extend(describe_problems(name, &whole.problems, ""));
    let single_mode = " (one event per batch)";
    let new_problems: Vec<Problem> = single
        .problems
        .into_iter()
        .filter(|p| {
            !whole
                .problems
                .iter()
                .any(|w| w.line == p.line && w.message == p.message)
        })
        .collect();
    report
        .failures
        .extend(describe_problems(name, &new_problems, single_mode));

    let completed = complete::complete(text, &whole.expects);
    let all_passed = whole.expects.iter().all(ExpectResult::passed);
    if all_passed && completed != text {
        report.failures.push(format!(
            "{name}: runner bug: --complete would rewrite a file whose expectations hold"
        ));
    }
    if completing {
        if completed != text {
            report.completed = Some(completed);
        }
    } else {
        for e in whole.expects.iter().filter(|e| !e.passed()) {
            report.failures.push(describe_expect(name, e, ""));
        }
    }
    for e in single.expects.iter().filter(|e| !e.passed()) {
        let failed_whole = whole
            .expects
            .iter()
            .any(|w| w.line == e.line && !w.passed());
        if !failed_whole {
            report.failures.push(describe_expect(name, e, single_mode));
        }
    }

    let mut sorted_whole = whole.alerts;
    let mut sorted_single = single.alerts;
    sorted_whole.sort();
    sorted_single.sort();
    report
        .failures
        .extend(describe_batching(name, &sorted_whole, &sorted_single));
    let mut sorted_forgetting = forgetting.alerts;
    sorted_forgetting.sort();
    report.forgotten = forgetting.forgotten;
    let (kept, forgot) = difference(&sorted_whole, &sorted_forgetting);
    if !kept.is_empty() || !forgot.is_empty() {
        let mut out = format!(
            "{name}: alerts depend on forgetting patients (- kept only, + forgetting after 1 ms only)"
        );
        for a in &kept {
            out.push_str(&format!("\n    - {}", replay::line(a)));
        }
        for a in &forgot {
            out.push_str(&format!("\n    + {}", replay::line(a)));
        }
        report.failures.push(out);
    }
    report
}

thread_local! {
    /// The last panic on this thread, for the report (the default hook
    /// would print it in the middle of the results).
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic (a bug in the engine or the runner) into a
/// failure of this case rather than the end of the run.
fn guarded<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        let what = PANIC.with(|p| p.borrow_mut().take());
        format!(
            "{name}: panicked: {}",
            what.unwrap_or_else(|| "(no message)".into())
        )
    })
}

/// What to run, from the command line.
#[derive(Debug, Default)]
struct Options {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    complete: bool,
    list: bool,
    only_ignored: bool,
    quiet: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Self {
        // libtest flags followed by a value (unless given as `--flag=value`).
        const TAKES_VALUE: &[&str] = &[
            "--test-threads",
            "--color",
            "--format",
            "--logfile",
            "--shuffle-seed",
            "-Z",
        ];
        let mut o = Options::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--complete" => o.complete = true,
                "--list" => o.list = true,
                "--exact" => o.exact = true,
                "--ignored" => o.only_ignored = true,
                "-q" | "--quiet" => o.quiet = true,
                "--skip" => o.skip.extend(args.next()),
                a if a.starts_with("--skip=") => o.skip.push(a["--skip=".len()..].into()),
                a if TAKES_VALUE.contains(&a) => {
                    args.next();
                }
                // --nocapture, --include-ignored, --test-threads=2, --bench, …
                a if a.starts_with('-') => {}
                a => o.filters.push(a.into()),
            }
        }
        o
    }

    fn selects(&self, name: &str) -> bool {
        let stem = name.strip_suffix(".rules").unwrap_or(name);
        let hit = |f: &String| {
            if self.exact {
                name == f || stem == f
            } else {
                name.contains(f.as_str())
            }
        };
        !self.only_ignored
            && (self.filters.is_empty() || self.filters.iter().any(hit))
            && !self.skip.iter().any(|s| name.contains(s.as_str()))
    }
}

fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files = vec![];
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "rules") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn main() -> ExitCode {
    let options = Options::parse(std::env::args().skip(1));
    std::panic::set_hook(Box::new(|info| {
        PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules");
    let files = match rule_files(&dir) {
        Ok(files) if files.len() >= 5 => files,
        Ok(_) => {
            eprintln!("rule files are missing from {}", dir.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let name_of = |p: &PathBuf| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into())
    };
    let total = files.len() + self_check::CASES.len();
    let files: Vec<(String, PathBuf)> = files
        .iter()
        .map(|p| (name_of(p), p.clone()))
        .filter(|(n, _)| options.selects(n))
        .collect();
    let checks: Vec<&(&str, self_check::Case)> = self_check::CASES
        .iter()
        .filter(|(n, _)| options.selects(n))
        .collect();

    if options.list {
        for (name, _) in &files {
            println!("{name}: test");
        }
        for (name, _) in &checks {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }

    let selected = files.len() + checks.len();
    println!("\nrunning {selected} rule files and runner checks");
    let mut failed: Vec<(String, Vec<String>)> = vec![];
    let mut completed = 0;
    for (name, path) in &files {
        let report = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| {
                guarded(name, || check(name, &text, options.complete)).map(|r| (text, r))
            });
        let (failures, note) = match report {
            Err(e) => (vec![e], String::new()),
            Ok((_, mut r)) => {
                let mut note = format!(" ({} alerts)", r.alerts);
                if r.forgotten > 0 {
                    note = format!(" ({} alerts; {} patients forgotten)", r.alerts, r.forgotten);
                }
                if let Some(text) = r.completed.take() {
                    match std::fs::write(path, text) {
                        Ok(()) => {
                            completed += 1;
                            note.push_str(", expect blocks rewritten");
                        }
                        Err(e) => r
                            .failures
                            .push(format!("{}: cannot write: {e}", path.display())),
                    }
                }
                (r.failures, note)
            }
        };
        if failures.is_empty() {
            if !options.quiet {
                println!("rule file {name} ... ok{note}");
            }
        } else {
            println!("rule file {name} ... FAILED");
            for f in &failures {
                println!("  {}", f.replace('\n', "\n  "));
            }
            failed.push((name.clone(), failures));
        }
    }
    for (name, case) in checks {
        match guarded(name, case).and_then(|r| r.map_err(|e| format!("{name}: {e}"))) {
            Ok(()) => {
                if !options.quiet {
                    println!("runner check {name} ... ok");
                }
            }
            Err(e) => {
                println!(
                    "runner check {name} ... FAILED\n  {}",
                    e.replace('\n', "\n  ")
                );
                failed.push((name.to_string(), vec![e]));
            }
        }
    }

    if !failed.is_empty() {
        println!("\nfailures:");
        for (name, _) in &failed {
            println!("    {name}");
        }
    }
    if completed > 0 {
        println!(
            "\n{completed} file(s) rewritten by --complete: review them with `git diff {}`",
            dir.display()
        );
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; {} filtered out\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected - failed.len(),
        failed.len(),
        total - selected
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
