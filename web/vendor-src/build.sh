#!/bin/sh
# Rebuilds ../vendor/vendor.js and ../vendor/vendor.css from the versions
# pinned in package-lock.json. Needs Node 18+ and the npm registry; the
# Rust build does not run this (it embeds the committed files).
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node build.mjs
