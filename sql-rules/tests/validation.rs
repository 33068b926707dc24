//! Validation over sample readings: a rule whose SQL plans but fails when
//! it evaluates (a cast of a text that is no number, an integer division
//! by a reading that can be zero) is refused at submit time, with a
//! message saying what failed and, where the SQL shows it, where; rules
//! that run are not refused (issue 12, "rules that cannot fail silently").

use sql_rules::stream::vitals_schema;
use sql_rules::{CompiledRule, RuleError, SqlPosition};

fn compile(sql: &str) -> Result<CompiledRule, RuleError> {
    CompiledRule::compile(sql, &vitals_schema())
}

fn refused(sql: &str) -> RuleError {
    match compile(sql) {
        Ok(_) => panic!("expected a refusal of {sql}"),
        Err(e) => e,
    }
}

#[test]
fn comparing_a_reading_with_text_is_refused_at_the_text() {
    let err = refused("SELECT patient_id FROM vitals\nWHERE spo2_pct < 'abc'");
    assert!(
        err.message.starts_with("the rule fails when it runs")
            && err
                .message
                .contains("Cannot cast string 'abc' to value of Float64 type")
            && err.message.contains("e.g. `spo2_pct < 90`"),
        "{}",
        err.message
    );
    assert_eq!(err.position, SqlPosition::new(2, 18));
}

#[test]
fn an_integer_division_by_a_difference_that_is_zero_is_refused_at_the_division() {
    let err = refused(
        "SELECT patient_id FROM vitals\nWHERE CAST(heart_rate_bpm AS BIGINT) / (CAST(heart_rate_bpm AS BIGINT) - CAST(heart_rate_bpm AS BIGINT)) > 1",
    );
    assert!(
        err.message.contains("Divide by zero") && err.message.contains("NULLIF"),
        "{}",
        err.message
    );
    // At the `/`.
    assert_eq!(err.position, SqlPosition::new(2, 38));
}

#[test]
fn a_division_by_a_reading_that_can_be_zero_is_refused() {
    // Sequence numbers start at 0, readings can be 0 (asystole).
    for sql in [
        "SELECT patient_id FROM vitals WHERE 1000 / sequence_number > 1",
        "SELECT patient_id FROM vitals WHERE 60 % CAST(heart_rate_bpm AS INT) = 0",
    ] {
        let err = refused(sql);
        assert!(
            err.message.contains("Divide by zero"),
            "{sql}: {}",
            err.message
        );
        assert_eq!(err.position.line, 1, "{sql}");
        assert!(err.position.column > 30, "{sql}: {:?}", err.position);
    }
}

#[test]
fn a_having_that_divides_by_zero_when_the_window_closes_is_refused() {
    let err = refused(
        "SELECT patient_id, COUNT(*) AS n FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
         HAVING COUNT(*) / (COUNT(*) - COUNT(*)) > 1",
    );
    assert!(err.message.contains("Divide by zero"), "{}", err.message);
    assert_eq!(err.position.line, 3);
}

#[test]
fn casting_a_text_column_every_event_carries_is_refused() {
    let err = refused("SELECT patient_id FROM vitals WHERE CAST(source_device AS INT) > 1");
    assert!(
        err.message.contains("Cannot cast string 'BEDSIDE'"),
        "{}",
        err.message
    );
}

#[test]
fn casting_an_id_is_left_to_the_real_ids() {
    // The sample's ids are made up ('H-SAMPLE'); real hospital ids may be
    // numbers, so a cast of one is not refused for failing on the sample.
    compile("SELECT patient_id FROM vitals WHERE CAST(hospital_id AS INT) = 101")
        .expect("an id cast is accepted");
    compile("SELECT patient_id FROM vitals WHERE CAST(patient_id AS BIGINT) BETWEEN 3000 AND 3999")
        .expect("an id cast is accepted");
}

#[test]
fn float_division_by_zero_is_infinity_not_an_error_and_the_rule_is_accepted() {
    // Readings are DOUBLE: x / 0 is ±inf or NaN, and the comparison decides.
    compile("SELECT patient_id FROM vitals WHERE heart_rate_bpm / (heart_rate_bpm - heart_rate_bpm) > 1")
        .expect("float division does not fail");
}

#[test]
fn a_rule_failing_only_on_a_value_the_sample_lacks_is_left_to_run_time() {
    // server/tests/rule_health.rs shows this rule `failing` at run time.
    compile(
        "SELECT patient_id FROM vitals WHERE CAST(heart_rate_bpm AS BIGINT) / (CAST(spo2_pct AS BIGINT) - 97) > 100",
    )
    .expect("97 is not in the sample");
}

/// The README's examples and rules of every shape, NULLs and zeros
/// included in what they meet: none is refused.
#[test]
fn rules_that_run_are_accepted() {
    let news2 = "MAX(CASE WHEN respiration_rate <= 8 OR respiration_rate >= 25 THEN 3 \
        WHEN respiration_rate >= 21 THEN 2 WHEN respiration_rate <= 11 THEN 1 ELSE 0 END) \
        + MAX(CASE WHEN spo2_pct <= 91 THEN 3 WHEN spo2_pct <= 93 THEN 2 WHEN spo2_pct <= 95 THEN 1 ELSE 0 END)";
    let rules = [
        "SELECT patient_id, AVG(heart_rate_bpm) AS avg_hr, COUNT(*) AS n,
                TUMBLE_END(event_time, INTERVAL '60' SECOND) AS window_end
         FROM vitals WHERE heart_rate_bpm > 100
         GROUP BY TUMBLE(event_time, INTERVAL '60' SECOND), patient_id
         HAVING COUNT(*) >= 5 AND AVG(heart_rate_bpm) > 110",
        "SELECT patient_id, spo2_pct FROM vitals WHERE spo2_pct < 85",
        "SELECT patient_id, AVG(spo2_pct) AS avg_spo2 FROM vitals
         GROUP BY HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE), patient_id
         HAVING AVG(spo2_pct) < 90",
        "SELECT patient_id, COUNT(*) AS n FROM vitals WHERE spo2_pct < 92
         GROUP BY SESSION(event_time, INTERVAL '30' SECOND), patient_id HAVING COUNT(*) >= 3",
        "SELECT patient_id, AVG(heart_rate_bpm) / AVG(systolic_bp_mmhg) AS shock_index FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '2' MINUTE), patient_id
         HAVING AVG(heart_rate_bpm) / AVG(systolic_bp_mmhg) > 1.0",
        "SELECT hospital_id, COUNT(*) - COUNT(heart_rate_bpm) AS missing_hr FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), hospital_id
         HAVING COUNT(*) - COUNT(heart_rate_bpm) >= 1",
        "SELECT patient_id, STDDEV(heart_rate_bpm) AS sd, MEDIAN(spo2_pct) AS med,
                COUNT(DISTINCT source_device) AS devices,
                FIRST_VALUE(heart_rate_bpm ORDER BY event_time) AS first_hr,
                COUNT(*) FILTER (WHERE spo2_pct < 90) AS low
         FROM vitals GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
         HAVING COUNT(*) > 0",
        "SELECT patient_id, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE vitals, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
         GROUP BY window_start, window_end, patient_id",
        "SELECT patient_id, MAX(heart_rate_bpm) AS hr FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE), patient_id
         HAVING MAX(heart_rate_bpm) > 130 EMIT EARLY",
        // Guarded divisions and casts of numbers.
        "SELECT patient_id FROM vitals
         WHERE CAST(heart_rate_bpm AS BIGINT) / NULLIF(CAST(respiration_rate AS BIGINT), 0) > 8",
        "SELECT patient_id FROM vitals WHERE CAST(sequence_number AS DOUBLE) / 2 > 1 OR spo2_pct < CAST('90' AS DOUBLE)",
    ];
    for sql in rules {
        compile(sql).unwrap_or_else(|e| panic!("refused {sql}: {e}"));
    }
    let news2 = format!(
        "SELECT patient_id, {news2} AS news2 FROM vitals
         GROUP BY TUMBLE(event_time, INTERVAL '5' MINUTE), patient_id HAVING {news2} >= 5"
    );
    compile(&news2).unwrap_or_else(|e| panic!("refused NEWS2: {e}"));
}
