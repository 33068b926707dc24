//! SQL that is too deep or too long to plan is refused with a message and
//! a position, never by overflowing a stack and aborting the process. Each
//! input here aborted the server before (issue 12); every test compiles
//! from a thread with a small stack to show the caller's stack does not
//! matter.

use sql_rules::stream::vitals_schema;
use sql_rules::{CompiledRule, RuleError};

/// Compiles on a thread with 256 KiB of stack: less than a tokio worker's.
fn compile_on_small_stack(sql: String) -> Result<CompiledRule, RuleError> {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || CompiledRule::compile(&sql, &vitals_schema()))
        .expect("thread starts")
        .join()
        .expect("compiling does not panic")
}

fn refused(sql: String) -> RuleError {
    match compile_on_small_stack(sql) {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e,
    }
}

fn per_event(condition: &str) -> String {
    format!("SELECT patient_id FROM vitals WHERE {condition} > 0")
}

#[test]
fn the_2000_term_sum_from_the_issue_is_refused_with_the_depth_limit() {
    let err = refused(format!("SELECT {}", vec!["1"; 2_000].join("+")));
    assert!(
        err.message.contains("more than 200 levels deep")
            && err.message.contains("max_expression_depth"),
        "{}",
        err.message
    );
    assert!(err.position.is_known());
}

#[test]
fn a_10000_term_chain_in_a_rule_is_refused_with_the_depth_limit() {
    // 10,000 terms fit in the 64 KiB SQL limit when they are short.
    let chain = vec!["1"; 10_000].join("+");
    let err = refused(per_event(&chain));
    assert!(err.message.contains("levels deep"), "{}", err.message);
    assert_eq!(err.position.line, 1);
}

#[test]
fn a_5000_cast_chain_is_refused_with_the_depth_limit() {
    // `::` is parsed in a loop like `+`, so the parser's limit does not apply.
    let casts = format!("heart_rate_bpm{}", "::DOUBLE".repeat(5_000));
    let err = refused(per_event(&casts));
    assert!(err.message.contains("levels deep"), "{}", err.message);
}

#[test]
fn a_thousand_nested_parentheses_are_a_syntax_error() {
    let nested = format!("{}heart_rate_bpm{}", "(".repeat(1_000), ")".repeat(1_000));
    let err = refused(per_event(&nested));
    assert!(
        err.message
            .contains("more than 50 deep (the SQL parser's recursion limit)"),
        "{}",
        err.message
    );
}

#[test]
fn five_hundred_nested_cases_and_calls_are_refused() {
    let mut case = "heart_rate_bpm".to_string();
    for _ in 0..500 {
        case = format!("CASE WHEN spo2_pct < 90 THEN {case} ELSE 0 END");
    }
    let err = refused(per_event(&case));
    assert!(err.message.contains("nested too deeply"), "{}", err.message);
    let calls = format!("{}heart_rate_bpm{}", "abs(".repeat(500), ")".repeat(500));
    let err = refused(per_event(&calls));
    assert!(err.message.contains("nested too deeply"), "{}", err.message);
}

#[test]
fn sql_over_64_kib_is_refused_before_it_is_parsed() {
    let sql = format!(
        "SELECT patient_id FROM vitals WHERE patient_id IN ({})",
        vec!["'P-000001'"; 7_000].join(", ")
    );
    assert!(sql.len() > 64 * 1024);
    let err = refused(sql);
    assert!(
        err.message
            .contains("the limit is 65536 bytes (max_sql_bytes)"),
        "{}",
        err.message
    );
}

#[test]
fn a_deep_but_allowed_rule_compiles_from_a_small_stack() {
    // 150 nested additions: under the limit of 200, and far deeper than
    // 256 KiB of stack could plan.
    let chain = vec!["heart_rate_bpm"; 150].join(" + ");
    let rule = compile_on_small_stack(per_event(&chain)).expect("compiles");
    assert!(rule.window().is_none());
}

#[test]
fn a_case_nested_past_the_parser_limit_says_it_is_too_deeply_nested() {
    // The parser gives up on the 47th CASE, retries `case` as a column
    // name, and used to report "Expected: end of statement, found: ELSE".
    for depth in [47, 60, 500] {
        let mut case = "heart_rate_bpm".to_string();
        for _ in 0..depth {
            case = format!("CASE WHEN spo2_pct < 90 THEN {case} ELSE 0 END");
        }
        let err = refused(per_event(&case));
        assert!(
            err.message
                .starts_with("the expression is nested too deeply")
                && err
                    .message
                    .contains("more than 50 deep (the SQL parser's recursion limit)")
                && !err.message.contains("ELSE at Line"),
            "{depth}: {}",
            err.message
        );
        // At one of the nested CASEs, not at the start of the statement.
        assert!(err.position.column > 36, "{depth}: {:?}", err.position);
    }
    // Just under the limit it compiles.
    let mut case = "heart_rate_bpm".to_string();
    for _ in 0..40 {
        case = format!("CASE WHEN spo2_pct < 90 THEN {case} ELSE 0 END");
    }
    compile_on_small_stack(per_event(&case)).expect("40 nested CASEs compile");
}

#[test]
fn a_real_syntax_error_is_still_reported_as_one() {
    let err = refused(
        "SELECT patient_id FROM vitals WHERE CASE WHEN spo2_pct < 90 THEN 1 ELSE END > 0".into(),
    );
    assert!(err.message.starts_with("syntax error"), "{}", err.message);
}

#[test]
fn a_history_query_with_a_deeply_nested_case_is_refused_with_the_nesting_message() {
    let mut case = "1".to_string();
    for _ in 0..60 {
        case = format!("CASE WHEN x < 90 THEN {case} ELSE 0 END");
    }
    let err = sql_rules::check_query_sql(
        &format!("SELECT {case} FROM vitals"),
        &sql_rules::RuleLimits::default(),
    )
    .unwrap_err();
    assert!(err.message.contains("nested too deeply"), "{}", err.message);
}
