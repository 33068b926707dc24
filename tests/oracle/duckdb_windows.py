#!/usr/bin/env python3
"""Batch oracle for the differential test (tests/tests/differential_duckdb.rs).

Computes, with DuckDB SQL over a CSV of every accepted event, what the
streaming engine must produce for the rules of that test, using the engine's
documented semantics (sql-rules/src/engine.rs):

* lateness is decided per event in partition arrival order:
  prior_max = max(ts) over earlier arrivals of the same partition;
  TUMBLE/HOP: late iff prior_max is not null and
              first_window_end(ts) <= prior_max - L, with
              first_window_end(ts) = floor(ts / slide) * slide + slide;
  SESSION:    late iff ts < prior_max - L.
  Late events (among those passing the rule's WHERE) are left out.
* HOP(slide, size): an event belongs to the windows starting at
  floor(ts/slide)*slide - size + slide, ..., floor(ts/slide)*slide.
* SESSION(gap): per key, over on-time events passing WHERE ordered by ts, a
  new session starts when ts - previous ts >= gap; start = min ts,
  end = max ts + gap.
* readings are DECIMAL(18,1) (they carry one decimal), so sums, and the
  averages' comparisons in HAVING (written as SUM(x) <op> k * COUNT(x)), are
  exact; averages are reported as doubles.
* duplicates are aggregated as often as they arrive; per-event rules see
  every accepted event (no lateness).

Usage: duckdb_windows.py EVENTS.csv OUT.json
CSV columns: part, arrival, patient_id, ts, heart_rate_bpm, spo2_pct,
systolic_bp_mmhg (empty = null).
Output: {"<rule_id>": [{"patient_id", "window_start_ms", "window_end_ms",
"values": {...}}] (per-event rules: "event_time_ms" instead of the window
bounds), "_late": {"<rule_id>": count}}.
"""

import json
import sys
from decimal import Decimal

try:
    import duckdb
except ImportError as e:  # the Rust test turns this into a failure with a hint
    sys.stderr.write(f"cannot import duckdb ({e}): run `bash tests/run.sh` to install the test dependencies\n")
    sys.exit(3)

LATENESS_MS = 500

# (rule id, kind, params, WHERE, SELECT-list aggregates, exact HAVING)
# Readings in the CSV are DECIMAL(18,1); hr/spo2 below are column aliases.
TUMBLE_HOP_RULES = [
    (
        "tachycardia",
        dict(slide=60_000, size=60_000),
        "heart_rate_bpm > 100",
        "AVG(heart_rate_bpm)::DOUBLE AS avg_hr, COUNT(*) AS n",
        "COUNT(*) >= 5 AND SUM(heart_rate_bpm) > 110 * COUNT(heart_rate_bpm)",
    ),
    (
        "hypoxemia_lt",
        dict(slide=60_000, size=300_000),
        "TRUE",
        "AVG(spo2_pct)::DOUBLE AS avg_spo2, COUNT(*) AS n",
        "SUM(spo2_pct) < 90 * COUNT(spo2_pct) AND COUNT(*) >= 10",
    ),
    (
        "hypoxemia_le",
        dict(slide=60_000, size=300_000),
        "TRUE",
        "AVG(spo2_pct)::DOUBLE AS avg_spo2, COUNT(*) AS n",
        "SUM(spo2_pct) <= 90 * COUNT(spo2_pct) AND COUNT(*) >= 10",
    ),
    (
        "hr_stats",
        dict(slide=300_000, size=300_000),
        "TRUE",
        "MIN(heart_rate_bpm) AS min_hr, MAX(heart_rate_bpm) AS max_hr, SUM(heart_rate_bpm) AS sum_hr, "
        "COUNT(heart_rate_bpm) AS n_hr, COUNT(*) AS n",
        "TRUE",
    ),
    (
        "bradycardia",
        dict(slide=30_000, size=30_000),
        "TRUE",
        "MAX(heart_rate_bpm) AS max_hr, COUNT(*) AS n",
        "MAX(heart_rate_bpm) < 45",
    ),
]

SESSION_RULES = [
    (
        "desat_session",
        30_000,
        "spo2_pct < 92",
        "COUNT(*) AS n, MIN(spo2_pct) AS lo",
        "COUNT(*) >= 3",
    ),
]

PER_EVENT_RULES = [
    ("spo2_critical", "spo2_pct < 85", "spo2_pct"),
]


def plain(v):
    if isinstance(v, Decimal):
        return float(v)
    return v


def rows_to_json(cur, fixed):
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = {}
        values = {}
        for name, v in zip(names, row):
            if name in fixed:
                rec[name] = v
            else:
                values[name] = plain(v)
        rec["values"] = values
        out.append(rec)
    return out


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    csv_path, out_path = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    csv_literal = "'" + csv_path.replace("'", "''") + "'"
    con.execute(
        f"""
        CREATE TABLE raw AS SELECT * FROM read_csv({csv_literal}, header = true, auto_detect = false,
            nullstr = '',
            columns = {{'part': 'INTEGER', 'arrival': 'BIGINT', 'patient_id': 'VARCHAR', 'ts': 'BIGINT',
                        'seq': 'BIGINT',
                        'heart_rate_bpm': 'DECIMAL(18,1)', 'spo2_pct': 'DECIMAL(18,1)',
                        'systolic_bp_mmhg': 'DECIMAL(18,1)'}})
        """
    )
    # Duplicates: an earlier arrival in the partition from the same patient
    # (one device per patient here) with the same timestamp or the same
    # sequence number. They are dropped before anything else, and do not
    # advance event time.
    con.execute(
        """
        CREATE TABLE dedup AS
        SELECT * FROM raw
        QUALIFY ROW_NUMBER() OVER (PARTITION BY part, patient_id, ts ORDER BY arrival) = 1
            AND (seq IS NULL OR ROW_NUMBER() OVER (PARTITION BY part, patient_id, seq ORDER BY arrival) = 1)
        """
    )
    (n_raw,) = con.execute("SELECT COUNT(*) FROM raw").fetchone()
    (n_dedup,) = con.execute("SELECT COUNT(*) FROM dedup").fetchone()
    # prior_max: the partition's max event time over earlier arrivals.
    con.execute(
        """
        CREATE TABLE ev AS
        SELECT *,
               MAX(ts) OVER (PARTITION BY part ORDER BY arrival
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prior_max
        FROM dedup
        """
    )
    (dups,) = con.execute("SELECT COUNT(*) - COUNT(DISTINCT (part, arrival)) FROM ev").fetchone()
    if dups:
        sys.stderr.write(f"(part, arrival) is not unique: {dups} repeats\n")
        sys.exit(4)

    result = {}
    late = {}
    L = LATENESS_MS
    for rule_id, w, where, aggs, having in TUMBLE_HOP_RULES:
        slide, size = w["slide"], w["size"]
        n_windows = size // slide
        assert size % slide == 0
        base = f"""
            SELECT *, (prior_max IS NOT NULL AND (ts // {slide}) * {slide} + {slide} <= prior_max - {L}) AS is_late
            FROM ev WHERE {where}
        """
        (late[rule_id],) = con.execute(f"SELECT COUNT(*) FILTER (WHERE is_late) FROM ({base})").fetchone()
        cur = con.execute(
            f"""
            WITH ontime AS (SELECT * FROM ({base}) WHERE NOT is_late),
            assigned AS (
                SELECT ontime.*, (ts // {slide}) * {slide} - k.i * {slide} AS window_start_ms
                FROM ontime, range(0, {n_windows}) AS k(i)
            )
            SELECT patient_id, window_start_ms, window_start_ms + {size} AS window_end_ms, {aggs}
            FROM assigned
            GROUP BY patient_id, window_start_ms
            HAVING {having}
            ORDER BY patient_id, window_start_ms
            """
        )
        result[rule_id] = rows_to_json(cur, {"patient_id", "window_start_ms", "window_end_ms"})

    for rule_id, gap, where, aggs, having in SESSION_RULES:
        base = f"""
            SELECT *, (prior_max IS NOT NULL AND ts < prior_max - {L}) AS is_late
            FROM ev WHERE {where}
        """
        (late[rule_id],) = con.execute(f"SELECT COUNT(*) FILTER (WHERE is_late) FROM ({base})").fetchone()
        cur = con.execute(
            f"""
            WITH ontime AS (SELECT * FROM ({base}) WHERE NOT is_late),
            flagged AS (
                SELECT *,
                       CASE WHEN ts - LAG(ts) OVER w >= {gap} THEN 1 ELSE 0 END AS starts_new
                FROM ontime
                WINDOW w AS (PARTITION BY patient_id ORDER BY ts, part, arrival)
            ),
            sessions AS (
                SELECT *,
                       SUM(starts_new) OVER (PARTITION BY patient_id ORDER BY ts, part, arrival
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_no
                FROM flagged
            )
            SELECT patient_id, MIN(ts) AS window_start_ms, MAX(ts) + {gap} AS window_end_ms, {aggs}
            FROM sessions
            GROUP BY patient_id, session_no
            HAVING {having}
            ORDER BY patient_id, window_start_ms
            """
        )
        result[rule_id] = rows_to_json(cur, {"patient_id", "window_start_ms", "window_end_ms"})

    for rule_id, where, select in PER_EVENT_RULES:
        cur = con.execute(
            f"""
            SELECT patient_id, ts AS event_time_ms, {select}
            FROM ev WHERE {where}
            ORDER BY patient_id, ts
            """
        )
        result[rule_id] = rows_to_json(cur, {"patient_id", "event_time_ms"})
        late[rule_id] = 0

    result["_late"] = late
    result["_duplicates"] = n_raw - n_dedup
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
