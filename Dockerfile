# syntax=docker/dockerfile:1
#
# wardwatch: one static-ish binary on a slim Debian base.
#
#   docker build -t wardwatch .
#   docker run --rm -p 8080:8080 -v wardwatch-data:/data wardwatch
#   docker run --rm -p 8080:8080 wardwatch serve --listen 0.0.0.0:8080 --data-dir /data --demo
#
# Both need a mounted --config file with TLS or insecure_http (see CMD below).
#
# Settings can also come from WARDWATCH_* environment variables
# (e.g. -e WARDWATCH_KAFKA_BROKERS=kafka:9092) or a mounted --config file.

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build

# rdkafka builds librdkafka from source (bundled) with zlib; nothing else native.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The registry and target caches survive between builds (BuildKit), so a
# source change does not recompile DataFusion. The binary is copied out of
# the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p wardwatch \
 && install -m 0755 target/release/wardwatch /usr/local/bin/wardwatch

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 wardwatch \
 && useradd --system --uid 10001 --gid wardwatch --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin wardwatch \
 && mkdir -p /data \
 && chown wardwatch:wardwatch /data

COPY --from=build /usr/local/bin/wardwatch /usr/local/bin/wardwatch

USER wardwatch:wardwatch
WORKDIR /data
EXPOSE 8080
VOLUME /data

ENTRYPOINT ["wardwatch"]
# 0.0.0.0 is not loopback, so the server refuses to start unless the mounted
# --config file (or WARDWATCH_CONFIG) either sets [http] tls_cert_file and
# tls_key_file (HTTPS; mount the PEM files too) or, behind a TLS-terminating
# proxy, [http] insecure_http = true. Authentication cannot be off on it
# either (so `--demo` needs [auth] required = true), and [http] allowed_hosts
# must list the names clients and health probes use (others get 421).
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
