//! Checks of the runner itself, run beside the files: a runner that never
//! fails proves nothing, so each case feeds it an in-memory file that is
//! wrong on purpose and checks it is reported, or checks `--complete` and
//! `repeat` on a file whose output is known.

use crate::check;
use crate::format::{parse, Step};

pub type Case = fn() -> Result<(), String>;

pub const CASES: &[(&str, Case)] = &[
    (
        "self_check/a_wrong_value_is_a_failure",
        a_wrong_value_is_a_failure,
    ),
    (
        "self_check/missing_and_unexpected_alerts_are_failures",
        missing_and_unexpected_alerts_are_failures,
    ),
    (
        "self_check/wrong_late_counts_and_refusals_are_failures",
        wrong_late_counts_and_refusals_are_failures,
    ),
    (
        "self_check/malformed_files_are_failures",
        malformed_files_are_failures,
    ),
    (
        "self_check/repeat_copies_and_steps_events",
        repeat_copies_and_steps_events,
    ),
    (
        "self_check/repeat_counts_expected_alerts",
        repeat_counts_expected_alerts,
    ),
    (
        "self_check/complete_rewrites_only_what_failed",
        complete_rewrites_only_what_failed,
    ),
    (
        "self_check/complete_leaves_a_correct_file_alone",
        complete_leaves_a_correct_file_alone,
    ),
];

const HOT: &str = "\
rule hot cooldown=60000
SELECT patient_id, heart_rate_bpm FROM vitals WHERE heart_rate_bpm > 120
end
";

/// `check` must report a failure containing each of `fragments`.
fn fails_with(text: &str, fragments: &[&str]) -> Result<(), String> {
    let report = check("inline.rules", text, false);
    if report.failures.is_empty() {
        return Err(format!("no failure reported for\n{text}"));
    }
    let all = report.failures.join("\n");
    for f in fragments {
        if !all.contains(f) {
            return Err(format!("the report lacks `{f}`:\n{all}"));
        }
    }
    Ok(())
}

fn passes(text: &str) -> Result<(), String> {
    let report = check("inline.rules", text, false);
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "unexpected failure:\n{}\nfor\n{text}",
            report.failures.join("\n")
        ))
    }
}

fn a_wrong_value_is_a_failure() -> Result<(), String> {
    let right = format!("{HOT}events\n0 A hr=130\nend\nexpect\nhot A heart_rate_bpm=130\nend\n");
    passes(&right)?;
    let wrong = right.replace("heart_rate_bpm=130", "heart_rate_bpm=131");
    fails_with(
        &wrong,
        &[
            "inline.rules:7: expect: 1 expected alert(s) missing, 1 unexpected",
            "- hot A heart_rate_bpm=131",
            "+ hot A status=fired severity=high heart_rate_bpm=130",
        ],
    )
}

fn missing_and_unexpected_alerts_are_failures() -> Result<(), String> {
    let events = format!("{HOT}events\n0 A hr=130\nend\n");
    fails_with(
        &format!("{events}expect\nend\n"),
        &["0 expected alert(s) missing, 1 unexpected", "+ hot A"],
    )?;
    fails_with(
        &format!("{events}expect\nhot A\nhot B\nend\n"),
        &["1 expected alert(s) missing, 0 unexpected", "- hot B"],
    )?;
    // Each expect block checks every alert so far.
    fails_with(
        &format!("{events}expect\nhot A\nend\nevents\n1000 A hr=125\nend\nexpect\nhot A\nend\n"),
        &["inline.rules:13: expect", "+ hot A status=suppressed"],
    )
}

fn wrong_late_counts_and_refusals_are_failures() -> Result<(), String> {
    fails_with(
        &format!("{HOT}events\n0 A hr=130\nend\nlate hot 1\nexpect\nhot A\nend\n"),
        &["inline.rules:7: hot counted 0 late events, expected 1"],
    )?;
    fails_with(
        "refuse 1:1 unknown\nSELECT patient_id FROM vitals WHERE heart_rate_bpm > 1\nend\n",
        &["inline.rules:1: expected a refusal, the rule compiled"],
    )
}

fn malformed_files_are_failures() -> Result<(), String> {
    fails_with(
        "events\nrepeat 0\n0 A hr=1\nend\n",
        &["inline.rules:2: expected `repeat <count>`"],
    )?;
    fails_with(
        "events\n0 A hr=1\nrepeat 3\nend\n",
        &["inline.rules:3: `repeat` with no event after it"],
    )?;
    fails_with(
        "expect\nrepeat 2 ts+=1\nhot A\nend\n",
        &["inline.rules:2: in `expect`, `repeat` takes only a count"],
    )?;
    fails_with("repeat 2\n", &["inline.rules:1: `repeat` applies"])?;
    fails_with("events\n0 A pulse=1\nend\n", &["unknown field `pulse`"])?;
    fails_with("expect\nhot A\n", &["`expect` block without `end`"])?;
    fails_with(
        "rule r\nSELECT nope FROM vitals\nend\n",
        &["inline.rules:1: rule r does not compile"],
    )
}

fn repeat_copies_and_steps_events() -> Result<(), String> {
    let steps =
        parse("events\nrepeat 3 ts+=300 seq+=1 hr+=0.5\n100 A hr=125 seq=7\nrepeat 2\n5 B\nend\n")
            .map_err(|e| format!("{}: {}", e.line, e.message))?;
    let [Step::Events { events, .. }] = steps.as_slice() else {
        return Err(format!("expected one events step, got {steps:?}"));
    };
    let got: Vec<(i64, &str, Option<u32>, Option<f64>)> = events
        .iter()
        .map(|e| (e.ts, e.patient.as_str(), e.seq, e.hr))
        .collect();
    let want = vec![
        (100, "A", Some(7), Some(125.0)),
        (400, "A", Some(8), Some(125.5)),
        (700, "A", Some(9), Some(126.0)),
        (5, "B", None, None),
        (5, "B", None, None),
    ];
    if got != want {
        return Err(format!("events {got:?}, expected {want:?}"));
    }
    fails_with(
        "events\nrepeat 2 seq+=1\n0 A hr=1\nend\n",
        &["inline.rules:2: `seq+=` needs the event to have seq="],
    )
}

fn repeat_counts_expected_alerts() -> Result<(), String> {
    let file = |n: usize| {
        format!("{HOT}events\nrepeat 3 ts+=1000\n0 A hr=130\nend\nexpect\nhot A status=fired\nrepeat {n}\nhot A status=suppressed\nend\n")
    };
    passes(&file(2))?;
    fails_with(&file(3), &["- hot A status=suppressed   (1 of 3)"])?;
    fails_with(&file(1), &["+ hot A status=suppressed"])
}

fn complete_rewrites_only_what_failed() -> Result<(), String> {
    let wrong = format!(
        "# a comment that stays\n{HOT}\nevents\nrepeat 3 ts+=1000\n0 A hr=130\n3000 B hr=140\nend\n\n\
         expect\n# kept\nhot A status=fired\nrepeat 5\nhot A status=suppressed\nhot C\nend\n\
         # trailing comment\n"
    );
    let right = format!(
        "# a comment that stays\n{HOT}\nevents\nrepeat 3 ts+=1000\n0 A hr=130\n3000 B hr=140\nend\n\n\
         expect\n# kept\nhot A status=fired\nrepeat 2\nhot A status=suppressed\n\
         hot B status=fired severity=high heart_rate_bpm=140.0 hospital=H01\nend\n\
         # trailing comment\n"
    );
    let report = check("inline.rules", &wrong, true);
    if !report.failures.is_empty() {
        return Err(format!("failures: {:?}", report.failures));
    }
    match report.completed {
        Some(text) if text == right => passes(&text),
        Some(text) => Err(format!("completed to\n{text}\nexpected\n{right}")),
        None => Err("--complete left a failing file alone".into()),
    }
}

fn complete_leaves_a_correct_file_alone() -> Result<(), String> {
    // Also checked for every file on each run (see `check`); this one has
    // loose patterns, `repeat`, comments and no final newline.
    let text = format!(
        "{HOT}events\nrepeat 4 ts+=1000 seq+=1\n0 A hr=130 seq=1\nend\nexpect\n  # indented\n\
         hot A\nrepeat 3\nhot A status=suppressed\nend\nwatermark 99999"
    );
    passes(&text)?;
    match check("inline.rules", &text, true).completed {
        None => Ok(()),
        Some(c) => Err(format!("--complete rewrote a correct file to\n{c}")),
    }
}
