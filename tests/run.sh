#!/usr/bin/env bash
# Runs every wardwatch test: unit, rule-semantics, differential (DuckDB) and
# end-to-end against a real Kafka-protocol broker (tansu) on 127.0.0.1.
# Installs what it needs on first use and caches it under ~/.cache/wardwatch.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${WARDWATCH_CACHE:-$HOME/.cache/wardwatch}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
TOOLS="$CACHE/tools"
mkdir -p "$TOOLS"

# Build tools for the bundled librdkafka (usually present already).
missing=()
for tool in cc c++ make python3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing build tools (missing: ${missing[*]})"
  apt-get update -qq && apt-get install -y -qq build-essential python3 python3-pip >/dev/null
fi

# The test broker: tansu 0.6, a Kafka-protocol broker from crates.io.
if [ ! -x "$TOOLS/bin/tansu" ]; then
  echo "installing the tansu broker (once; about 8 minutes on 2 cores)"
  CARGO_TARGET_DIR="$CACHE/tansu-target" cargo install tansu --version '^0.6' --locked \
    --features dynostore --root "$TOOLS"
fi
export WARDWATCH_TANSU="$TOOLS/bin/tansu"
"$WARDWATCH_TANSU" --version

# The independent oracle and clients for differential and archive tests.
if ! python3 -c 'import duckdb, pyarrow, confluent_kafka' 2>/dev/null; then
  echo "installing Python test packages"
  python3 -m pip install --quiet --disable-pip-version-check duckdb pyarrow confluent-kafka
fi

cargo test --workspace "$@"

# Browser tests of the web UI: Debian's Chromium driven by Playwright (the
# system browser; `playwright install` is never run) against `serve --demo`.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium (Debian package)"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if ! python3 -c 'import playwright.sync_api, cryptography' 2>/dev/null; then
  echo "installing Playwright and cryptography (Python; the latter signs the test identity provider's tokens)"
  python3 -m pip install --quiet --disable-pip-version-check playwright cryptography
fi
# `cargo test` above built the server binary for its integration tests; this
# is a no-op then, and builds it when the arguments left the server out.
cargo build -p wardwatch
WARDWATCH_BIN="$CARGO_TARGET_DIR/debug/wardwatch" python3 tests/browser/test_ui.py
