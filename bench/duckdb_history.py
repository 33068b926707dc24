#!/usr/bin/env python3
"""DuckDB baseline of `wardwatch-bench query` (bench/src/query.rs).

Runs history queries over a wardwatch Parquet archive with DuckDB and times
them inside Python: the connection and the views are set up first (not
timed); each query then runs REPS times, each run timed from `execute` to the
whole result fetched (as an Arrow table when pyarrow is importable, else as
Python tuples). The result of the last run is written out so the caller can
check that both engines return the same rows.

Usage: duckdb_history.py SPEC.json OUT.json

SPEC: {"vitals": DIR, "alerts": DIR, "reps": N,
       "queries": [{"name": ..., "sql": ...}, ...]}
  DIR is a table's directory (`<data dir>/vitals`); its files are read as
  `DIR/**/*.parquet` with the hive partition columns `date` and `hour` as
  strings, in views named `vitals` and `alerts`.
OUT:  {"duckdb_version": ..., "fetch": "arrow" | "python", "threads": N,
       "queries": [{"name": ..., "seconds": [...], "columns": [...],
                    "rows": [[...], ...]}]}

Exit status 3 (with a message on stderr) when duckdb cannot be imported.
"""

import json
import sys
import time

try:
    import duckdb
except ImportError as e:
    sys.stderr.write(f"cannot import duckdb ({e}); `bash tests/run.sh` installs it\n")
    sys.exit(3)

try:
    import pyarrow  # noqa: F401  (only to know whether Arrow results are available)

    ARROW = True
except ImportError:
    ARROW = False


def quote(s):
    return "'" + s.replace("'", "''") + "'"


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    con = duckdb.connect()
    for table in ("vitals", "alerts"):
        glob = spec[table].rstrip("/") + "/**/*.parquet"
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet({quote(glob)}, "
            "hive_partitioning = true, hive_types_autocast = false)"
        )
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    out = {
        "duckdb_version": duckdb.__version__,
        "fetch": "arrow" if ARROW else "python",
        "threads": threads,
        "queries": [],
    }
    for q in spec["queries"]:
        seconds = []
        result = None
        for _ in range(int(spec["reps"])):
            started = time.perf_counter()
            cur = con.execute(q["sql"])
            result = cur.to_arrow_table() if ARROW else cur.fetchall()
            seconds.append(time.perf_counter() - started)
        if ARROW:
            columns = result.column_names
            rows = [list(r.values()) for r in result.to_pylist()]
        else:
            columns = [d[0] for d in cur.description]
            rows = [list(r) for r in result]
        out["queries"].append(
            {"name": q["name"], "seconds": seconds, "columns": columns, "rows": rows}
        )
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
