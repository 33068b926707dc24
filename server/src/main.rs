//! The `wardwatch` command line: `wardwatch serve`, and `wardwatch api-key
//! create` for the first admin key. The benchmarks are a
//! separate binary, `wardwatch-bench` (the `bench/` crate), so nothing of
//! them ships in this one.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use wardwatch::config::Config;

/// SQL streaming rules for clinical alerting: bedside vitals from Kafka,
/// alert rules in SQL with TUMBLE and HOP windows, alerts to Kafka and people.
#[derive(Parser, Debug)]
#[command(name = "wardwatch", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: Kafka source (if configured), rules, alerts, REST API and UI.
    ///
    /// Settings come from defaults, then --config FILE (TOML), then WARDWATCH_*
    /// environment variables, then flags. Without --kafka-brokers the server runs
    /// embedded: events arrive over POST /api/ingest (or from --demo).
    Serve(Box<ServeArgs>),
    /// API keys for services. Make the first admin key here; after that,
    /// admins manage keys over REST (`/api/keys`).
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Print the REST API's OpenAPI document (the same as GET
    /// /api/openapi.json), e.g. to generate client types from it
    /// (`web/types-src/generate.sh`).
    Openapi,
}

#[derive(Subcommand, Debug)]
enum ApiKeyCommand {
    /// Make a key in the data directory and print it (once: only its hash
    /// is stored). A running server accepts it within seconds.
    Create(CreateKeyArgs),
}

#[derive(Args, Debug)]
struct CreateKeyArgs {
    /// TOML configuration file (for its data_dir).
    #[arg(long, short, env = "WARDWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Directory (or object store URL) the server uses [default: ./data].
    #[arg(long, env = "WARDWATCH_DATA_DIR")]
    data_dir: Option<String>,
    /// What the key is for, e.g. `icu-gateway`.
    #[arg(long)]
    name: String,
    /// viewer, author, auditor, admin or ingest (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// Limit the key to a hospital (repeat for several) [default: all].
    #[arg(long = "hospital")]
    hospitals: Vec<String>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "WARDWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the HTTP API, UI and /metrics [default: 127.0.0.1:8080].
    #[arg(long, env = "WARDWATCH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Directory (or object store URL) for rules, alerts and the archive [default: ./data].
    #[arg(long, env = "WARDWATCH_DATA_DIR")]
    data_dir: Option<String>,
    /// Kafka bootstrap servers, host:port[,host:port…]. Omit to run without Kafka.
    #[arg(long, env = "WARDWATCH_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Consumer group id [default: wardwatch].
    #[arg(long, env = "WARDWATCH_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// Static group membership id (librdkafka group.instance.id): stable per
    /// instance, unique in the group. Unset: dynamic membership.
    #[arg(long, env = "WARDWATCH_KAFKA_GROUP_INSTANCE_ID")]
    kafka_group_instance_id: Option<String>,
    /// This process's number among instances sharing the data directory
    /// (0-9999, stable across restarts; see [instance] in the README).
    #[arg(long, env = "WARDWATCH_INSTANCE_ID")]
    instance_id: Option<u32>,
    /// Topic of incoming VitalEvents [default: vitals].
    #[arg(long, env = "WARDWATCH_VITALS_TOPIC")]
    vitals_topic: Option<String>,
    /// Topic alerts are written to [default: alert-events].
    #[arg(long, env = "WARDWATCH_ALERTS_TOPIC")]
    alerts_topic: Option<String>,
    /// Dead-letter topic for events that cannot be processed [default: vitals-dlq].
    #[arg(long, env = "WARDWATCH_DLQ_TOPIC")]
    dlq_topic: Option<String>,
    /// librdkafka fetch.wait.max.ms for the consumer [default: 10].
    #[arg(long, env = "WARDWATCH_FETCH_WAIT_MAX_MS")]
    fetch_wait_max_ms: Option<u32>,
    /// Default allowed lateness of event time, in ms [default: 500].
    #[arg(long, env = "WARDWATCH_ALLOWED_LATENESS_MS")]
    allowed_lateness_ms: Option<i64>,
    /// Start a simulated ward (hundreds of patients at 1 Hz) and example rules.
    /// Authentication is off in the demo unless --auth is given.
    #[arg(long)]
    demo: bool,
    /// Require credentials (the default, except with --demo).
    #[arg(long, conflicts_with = "no_auth")]
    auth: bool,
    /// Serve without authentication: everyone may do everything. Only on a
    /// loopback --listen address.
    #[arg(long, env = "WARDWATCH_NO_AUTH")]
    no_auth: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "WARDWATCH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WARDWATCH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP on a non-loopback --listen address, behind a proxy that
    /// terminates TLS.
    #[arg(long, env = "WARDWATCH_INSECURE_HTTP")]
    insecure_http: bool,
    /// Patients in the simulated ward [default: 300].
    #[arg(long)]
    demo_patients: Option<usize>,
}

impl ServeArgs {
    fn into_config(self) -> Result<(Config, bool)> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.kafka_brokers.filter(|b| !b.trim().is_empty()) {
            config.kafka.brokers = Some(v);
        }
        if let Some(v) = self.kafka_group {
            config.kafka.group_id = v;
        }
        if let Some(v) = self.instance_id {
            config.instance.id = Some(v);
        }
        if let Some(v) = self.kafka_group_instance_id {
            config.kafka.group_instance_id = Some(v);
        }
        if let Some(v) = self.vitals_topic {
            config.kafka.vitals_topic = v;
        }
        if let Some(v) = self.alerts_topic {
            config.kafka.alerts_topic = v;
        }
        if let Some(v) = self.dlq_topic {
            config.kafka.dlq_topic = v;
        }
        if let Some(v) = self.fetch_wait_max_ms {
            config.kafka.fetch_wait_max_ms = v;
        }
        if let Some(v) = self.allowed_lateness_ms {
            config.pipeline.allowed_lateness_ms = v;
        }
        if let Some(v) = self.demo_patients {
            config.demo.patients = v;
        }
        if self.auth {
            config.auth.required = Some(true);
        }
        if self.no_auth {
            config.auth.required = Some(false);
        }
        if let Some(v) = self.tls_cert {
            config.http.tls_cert_file = Some(v);
        }
        if let Some(v) = self.tls_key {
            config.http.tls_key_file = Some(v);
        }
        if self.insecure_http {
            config.http.insecure_http = true;
        }
        Ok((config, self.demo))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn,datafusion=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match cli.command {
        Command::Serve(args) => {
            let (config, demo) = args.into_config()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(wardwatch::server::run(config, demo))
        }
        Command::Openapi => {
            println!("{}", wardwatch::openapi_document());
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Create(args)) => {
            let mut config = match &args.config {
                Some(path) => Config::from_file(path)?,
                None => Config::default(),
            };
            if let Some(v) = args.data_dir {
                config.data_dir = v;
            }
            let roles = args
                .roles
                .iter()
                .map(|r| {
                    wardwatch::auth::Role::parse(r).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown role '{r}': use viewer, author, auditor, admin or ingest"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let hospitals = (!args.hospitals.is_empty()).then_some(args.hospitals);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (key, record) = runtime.block_on(wardwatch::auth::api_keys::create_in_store(
                &config.data_dir,
                &args.name,
                &roles,
                hospitals,
            ))?;
            eprintln!(
                "made API key {} ('{}', roles {}); it is shown only now:",
                record.id,
                record.name,
                record.roles.join(", ")
            );
            println!("{key}");
            Ok(())
        }
    }
}
