//! DuckDB as an independent reader of the Parquet archive, for end-to-end
//! tests that check what the server wrote (through `python3 -c "import
//! duckdb"`; `bash tests/run.sh` installs the package).

/// Runs `sql` in DuckDB (an independent reader of the archive) with
/// `{vitals}` replaced by a `read_parquet` over `data_dir`'s raw-event
/// files, and returns the first row as Python prints it. Fails, never skips,
/// when python3 or duckdb is missing.
pub fn duckdb_first_row(data_dir: &std::path::Path, sql: &str) -> String {
    let files = format!(
        "read_parquet('{}/vitals/**/*.parquet', hive_partitioning=true)",
        data_dir.display()
    );
    let sql = sql.replace("{vitals}", &files);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import duckdb; print(duckdb.connect().execute(\"{sql}\").fetchone())"),
        ])
        .output()
        .expect("python3 runs (bash tests/run.sh installs duckdb)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
