//! Configuration: defaults, then a TOML file, then `WARDWATCH_*` environment
//! variables, then command-line flags (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API, metrics and UI listen on.
    pub listen: SocketAddr,
    /// Where rules, alerts and the archive live: a directory, or an object
    /// store URL (`file://…`, `memory://`).
    pub data_dir: String,
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    pub demo: DemoConfig,
    pub archive: ArchiveSettings,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub instance: InstanceConfig,
}

/// Several processes on one data directory (`[instance]`); see the README's
/// "Several instances" section. Unset `id`: a single instance, alone on
/// its data directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// This process's number among those sharing the data directory
    /// (0–9999), stable across its restarts: it names its lock
    /// (`wardwatch-i{id}.lock`), its checkpoints (`checkpoints/i{id}/`) and
    /// the files it writes, so instances never collide. Two live processes
    /// with one id refuse each other.
    pub id: Option<u32>,
    /// Which rules this process runs (see [`InstanceRole`]).
    pub role: InstanceRole,
    /// How often the shared rule store is read again, so rules created,
    /// changed or deactivated through another instance run here too (ms;
    /// with `id` set; at least 100).
    pub rule_watch_interval_ms: u64,
}

/// Which rules an instance runs. Patient rules (grouped by `patient_id`, or
/// without aggregation) need only the partitions of their patients, so
/// instances that split the partitions between them run them exactly;
/// a rule grouped otherwise (by `hospital_id`, or not at all) needs every
/// partition, and runs on the one `global_rules` instance, which reads
/// every partition for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceRole {
    /// Every rule (a single instance).
    #[default]
    All,
    /// Only patient rules, over the partitions this instance reads.
    PatientRules,
    /// Only the other rules, over every partition: it reads them all (by
    /// assignment, under a group id of its own) and archives nothing and
    /// writes no dead letters, which the patient instances do.
    GlobalRules,
}

impl InstanceRole {
    /// Whether a rule keyed (or not) by patient runs here.
    pub fn runs(self, keyed_by_patient: bool) -> bool {
        match self {
            Self::All => true,
            Self::PatientRules => keyed_by_patient,
            Self::GlobalRules => !keyed_by_patient,
        }
    }
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            id: None,
            role: InstanceRole::All,
            rule_watch_interval_ms: 1_000,
        }
    }
}

/// Highest `[instance] id`.
pub const MAX_INSTANCE_ID: u32 = 9_999;

impl InstanceConfig {
    /// The name this instance's files carry (`i{id}`), if it has an id.
    pub fn name(&self) -> Option<String> {
        self.id.map(|id| format!("i{id}"))
    }

    /// The archive partition of what this instance writes without Kafka
    /// offsets (its alert history, `POST /api/ingest`): -1 alone, else
    /// `-2 − id`, so two instances never name a file alike.
    pub fn local_partition(&self) -> i32 {
        match self.id {
            None => -1,
            Some(id) => -2 - id as i32,
        }
    }
}

/// Who may call the API (`[auth]`): OpenID Connect bearer tokens for people,
/// API keys for services. See the README's Security section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require credentials on every route except `/healthz`, `/readyz`, the
    /// UI page and the OpenAPI document (and `/metrics` unless
    /// `protect_metrics`). Unset: required, except for `serve --demo`.
    /// Off is allowed only on a loopback listen address.
    pub required: Option<bool>,
    /// The identity provider's JWKS (signing keys) as a file…
    pub jwks_file: Option<PathBuf>,
    /// …or fetched from a URL (refreshed every `jwks_refresh_seconds`, and
    /// at most once a minute when a token names an unknown key id).
    pub jwks_url: Option<String>,
    pub jwks_refresh_seconds: u64,
    /// The `iss` a token must carry (required when a JWKS is configured).
    pub issuer: Option<String>,
    /// The `aud` a token must carry (required when a JWKS is configured).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Claim holding the caller's roles (a string or a list); dots walk
    /// into objects, e.g. `realm_access.roles` for Keycloak.
    pub roles_claim: String,
    /// Claim holding the hospitals a caller is limited to (absent: all).
    pub hospitals_claim: String,
    /// Refuse tokens without `hospitals_claim` (fail closed: a missing
    /// provider mapper then locks people out instead of widening them to
    /// every hospital).
    pub require_hospitals_claim: bool,
    /// Claim shown as who did something (falls back to `sub`).
    pub name_claim: String,
    /// `/metrics` needs credentials too (off: scrapers need none).
    pub protect_metrics: bool,
    /// The UI's "Sign in with …": the identity provider's authorization
    /// code flow with PKCE (a public client, no secret). Absent: the page
    /// takes a pasted access token or an API key only.
    pub ui_login: Option<UiLoginConfig>,
}

/// `[auth.ui_login]`: where the UI sends people to sign in.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UiLoginConfig {
    /// The provider's authorization endpoint (https, or http to loopback).
    pub authorization_endpoint: String,
    /// Its token endpoint, which the browser calls (the provider must allow
    /// this server's origin: CORS, "web origins" in Keycloak).
    pub token_endpoint: String,
    /// The UI's client id at the provider (a public client; the tokens it
    /// gets must carry `[auth] audience`).
    pub client_id: String,
    #[serde(default = "default_ui_scope")]
    pub scope: String,
    /// Shown on the button: "Sign in with {name}".
    #[serde(default = "default_ui_login_name")]
    pub name: String,
}

fn default_ui_scope() -> String {
    "openid profile".into()
}

fn default_ui_login_name() -> String {
    "the identity provider".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 300,
            issuer: None,
            audience: None,
            leeway_seconds: 60,
            roles_claim: "roles".into(),
            hospitals_claim: "hospitals".into(),
            require_hospitals_claim: false,
            name_claim: "name".into(),
            protect_metrics: false,
            ui_login: None,
        }
    }
}

/// How the HTTP server is reached (`[http]`): TLS, allowed `Host` names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// PEM certificate chain; with `tls_key_file`, the server speaks HTTPS
    /// (rustls) only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating
    /// proxy). Without it, or TLS, such an address is refused at startup.
    pub insecure_http: bool,
    /// `Host` names (without port) requests may carry; others get 421
    /// (DNS rebinding). Empty: the loopback names and the listen address.
    /// `"*"` allows any.
    pub allowed_hosts: Vec<String>,
}

/// What the server accepts from a client (`[limits]`): every budget a rule,
/// a query or an acknowledgement is held to, so no single request can stop
/// alerting. A request over one is refused with `400` and a message that
/// names the setting.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest SQL of a rule, a validation, a backtest or a history query.
    pub max_sql_bytes: usize,
    /// Deepest nesting of expressions in that SQL (each operator of a chain
    /// such as `a + b + c` is a level).
    pub max_expression_depth: usize,
    /// Longest TUMBLE or HOP size, or SESSION gap.
    pub max_window_ms: i64,
    /// Most panes a HOP window is merged from: size / gcd(size, slide).
    pub max_panes_per_window: i64,
    /// Longest per-rule `allowed_lateness_ms`.
    pub max_allowed_lateness_ms: i64,
    /// Longest `cooldown_seconds`.
    pub max_cooldown_seconds: u64,
    /// Longest rule name, in characters.
    pub max_name_chars: usize,
    /// Longest rule description, in bytes.
    pub max_description_bytes: usize,
    /// Longest `by` of an acknowledgement, in characters.
    pub max_ack_by_chars: usize,
    /// Longest `note` of an acknowledgement, in bytes.
    pub max_ack_note_bytes: usize,
    /// Longest reason given when deactivating a rule, in characters.
    pub max_deactivation_reason_chars: usize,
    /// Requests a second each caller (API key, token subject, or peer address
    /// with failing credentials) may make past its burst; 0 = unlimited.
    /// Only while authentication is on. Over it: 429 with `Retry-After`.
    pub max_requests_per_second_per_caller: u32,
    /// Requests a caller may make at once before its rate applies.
    pub max_request_burst_per_caller: u32,
    /// History queries (`POST /api/query`) running at once; more get 503.
    pub max_concurrent_queries: usize,
    /// Replays and backtests running at once (in the foreground or as
    /// jobs); more get 503.
    pub max_concurrent_replays: usize,
    /// Finished background replays kept for `GET /api/replay/{job}`; the
    /// oldest are forgotten past this.
    pub max_finished_replays: usize,
    /// Memory one history query's operators (sorts, aggregates, joins) may
    /// hold; over it the query is stopped with 413. Nothing spills to disk.
    pub max_query_memory_bytes: usize,
    /// Output of one call of `repeat`, `lpad`, `rpad`, `range`,
    /// `generate_series`, `array_repeat` or `array_resize` in history SQL;
    /// over it the query is stopped with 413.
    pub max_function_output_bytes: usize,
    /// Run time: bytes of window state one rule may hold. A rule over any
    /// `max_rule_*` / `max_alerts_per_rule_minute` budget is suspended
    /// (state dropped, no longer evaluated, a `rule_suspended` system
    /// alert, `stats.suspension` in `GET /api/rules`) until a new version
    /// of it is saved; the other rules keep running.
    pub max_rule_state_bytes: u64,
    /// Run time: units of window work one rule may do on one batch (each
    /// window result row counts the panes merged into it).
    pub max_rule_work_per_batch: u64,
    /// Run time: alerts one rule may fire within one minute of event time.
    pub max_alerts_per_rule_minute: u64,
}

impl Default for Limits {
    fn default() -> Self {
        let rules = sql_rules::RuleLimits::default();
        let drafts = catalog::rules::DraftLimits::default();
        Self {
            max_sql_bytes: rules.max_sql_bytes,
            max_expression_depth: rules.max_expression_depth,
            max_window_ms: rules.max_window_ms,
            max_panes_per_window: rules.max_panes_per_window,
            max_allowed_lateness_ms: drafts.max_allowed_lateness_ms,
            max_cooldown_seconds: drafts.max_cooldown_seconds,
            max_name_chars: drafts.max_name_chars,
            max_description_bytes: drafts.max_description_bytes,
            max_ack_by_chars: 200,
            max_ack_note_bytes: 4 * 1024,
            max_deactivation_reason_chars: 500,
            max_requests_per_second_per_caller: 100,
            max_request_burst_per_caller: 400,
            max_concurrent_queries: 4,
            max_concurrent_replays: 2,
            max_finished_replays: 16,
            max_query_memory_bytes: 512 * 1024 * 1024,
            max_function_output_bytes: 16 * 1024 * 1024,
            max_rule_state_bytes: sql_rules::RuleBudgets::default().max_state_bytes,
            max_rule_work_per_batch: sql_rules::RuleBudgets::default().max_work_per_batch,
            max_alerts_per_rule_minute: sql_rules::RuleBudgets::default().max_alerts_per_minute,
        }
    }
}

impl Limits {
    /// The budgets the rule compiler checks SQL against.
    pub fn rules(&self) -> sql_rules::RuleLimits {
        sql_rules::RuleLimits {
            max_sql_bytes: self.max_sql_bytes,
            max_expression_depth: self.max_expression_depth,
            max_window_ms: self.max_window_ms,
            max_panes_per_window: self.max_panes_per_window,
            max_function_output_bytes: self.max_function_output_bytes,
        }
    }

    /// What each rule may cost at run time before it is suspended.
    pub fn budgets(&self) -> sql_rules::RuleBudgets {
        sql_rules::RuleBudgets {
            max_state_bytes: self.max_rule_state_bytes,
            max_work_per_batch: self.max_rule_work_per_batch,
            max_alerts_per_minute: self.max_alerts_per_rule_minute,
        }
    }

    /// The budgets a rule's other fields are checked against.
    pub fn drafts(&self) -> catalog::rules::DraftLimits {
        catalog::rules::DraftLimits {
            max_name_chars: self.max_name_chars,
            max_description_bytes: self.max_description_bytes,
            max_cooldown_seconds: self.max_cooldown_seconds,
            max_allowed_lateness_ms: self.max_allowed_lateness_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSettings {
    /// No buffered event waits longer than this before its file is written.
    pub flush_interval_ms: u64,
    /// A file is rolled at this much buffered Arrow memory.
    pub max_file_mb: usize,
    /// Raw events older than this are deleted, whole files at a time.
    pub retention_days: u32,
    /// Alerts (and the audit log) are kept longer.
    pub alerts_retention_days: u32,
    /// Embedded dead letters (no Kafka) older than this are forgotten and
    /// their stored segments deleted (720 h: the vitals archive's 30 days).
    pub dead_letter_retention_hours: u64,
    /// Embedded dead letters kept in memory for `GET /api/dead-letters`
    /// (each at most 4 KiB of payload): the newest this many.
    pub max_dead_letters: usize,
    /// Embedded dead letters kept in storage: segments holding only older
    /// ones are deleted (at 4 KiB each, 1,000,000 is about 4 GiB).
    pub max_dead_letters_stored: u64,
    /// `POST /api/ingest` (and the demo) answer only once their events are
    /// in a written archive file (fsync'd on local disk) and their embedded
    /// dead letters are written. Off: the answer means "buffered in memory",
    /// written within `flush_interval_ms`.
    pub ingest_durable_ack: bool,
    /// With `ingest_durable_ack`, how long a request's events may wait for
    /// others to share their archive write (group commit): the latency added
    /// to each ingest, and at most one small file per interval and hour.
    pub ingest_commit_interval_ms: u64,
    /// History queries: more result rows than this is an error.
    pub query_max_rows: usize,
    /// History queries are cancelled after this long.
    pub query_timeout_ms: u64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            flush_interval_ms: 10_000,
            max_file_mb: 64,
            retention_days: 30,
            alerts_retention_days: 365,
            dead_letter_retention_hours: 720,
            max_dead_letters: 10_000,
            max_dead_letters_stored: 1_000_000,
            ingest_durable_ack: false,
            ingest_commit_interval_ms: 200,
            query_max_rows: 100_000,
            query_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`; empty means no Kafka (embedded mode).
    pub brokers: Option<String>,
    pub group_id: String,
    /// librdkafka `group.instance.id` (static group membership, KIP-345):
    /// a member restarted with the same id takes its partitions back
    /// without waiting for the dead member's session to time out. Set it
    /// per instance, stable across that instance's restarts and different
    /// from every other member of the group (two live members with one id
    /// fence each other out). Unset (the default): dynamic membership.
    pub group_instance_id: Option<String>,
    /// Read these partitions of `vitals_topic` by assignment instead of
    /// joining the consumer group (an empty list: all of them). With no
    /// group protocol, a restarted process reads again at once, whatever the
    /// broker; each instance lists its own partitions, and the operator
    /// keeps the lists disjoint and complete. Offsets are still committed
    /// under `group_id`. Unset (the default): group membership.
    pub partitions: Option<Vec<i32>>,
    /// With `partitions`: whether this instance reads the hospitals' own
    /// topics (all their partitions). Where several instances split the
    /// shared topic, set it on exactly one of them (as a group member the
    /// group shares them out instead). Default true.
    pub hospital_topics: bool,
    /// With `partitions`: each partition is fetched from this many messages
    /// before its committed offset, and what lies below the committed
    /// offset is dropped before decoding. A broker that, asked for an offset
    /// inside a record batch, skips the rest of that batch (tansu 0.6 does;
    /// Kafka returns the whole batch and librdkafka drops the head) would
    /// otherwise lose those messages after a restart; the lookback must
    /// cover a producer's batch. 0 (the default): fetch from the committed
    /// offset.
    pub resume_lookback_messages: i64,
    pub vitals_topic: String,
    pub dlq_topic: String,
    pub alerts_topic: String,
    /// librdkafka `fetch.wait.max.ms`: how long the broker may hold a fetch
    /// for more data. Low values cut latency (tansu holds every fetch for at
    /// least half of it).
    pub fetch_wait_max_ms: u32,
    /// Extra librdkafka properties for both consumer and producer.
    pub properties: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// A micro-batch is cut at this many events…
    pub max_batch_rows: usize,
    /// …or after this long, whichever comes first. The Kafka source also
    /// cuts whenever it has read everything available, so this bounds the
    /// wait only while a backlog is being read.
    pub max_batch_delay_ms: u64,
    /// Default allowed lateness of event time, per rule overridable.
    pub allowed_lateness_ms: i64,
    /// A partition that other partitions have moved past in event time, and
    /// that delivers nothing for this long, stops holding back the
    /// watermark. Silence alone never does: a stream quiet this long as a
    /// whole starts over when traffic resumes.
    pub idle_timeout_ms: i64,
    /// The engine thread busy on one input this long counts as stalled:
    /// `/healthz` fails and `wardwatch_engine_stalled` is 1.
    pub engine_stall_ms: i64,
    /// An event dated more than this far ahead of the server clock is
    /// refused (dead-lettered, reason `timestamp in the future`), so no
    /// partition's event time goes past now + this. Events older than
    /// `[archive] retention_days` are refused too.
    pub max_future_skew_ms: i64,
    /// When every partition is caught up and none has delivered anything for
    /// this long, windows whose end + allowed lateness is this far behind
    /// the server clock close (the last window before a quiet period would
    /// otherwise wait for the next event). 0 turns it off.
    pub quiet_close_ms: i64,
    /// A closed TUMBLE or HOP window is kept this long (event time past
    /// its end) so that a late event that turns its decision into an alert
    /// still alerts, marked late. 0 turns it off: late events are only
    /// counted.
    pub late_alert_horizon_ms: i64,
    /// With Kafka: how often the engine's state is checkpointed with the
    /// offsets it covers (`checkpoints/` in the data dir). Offsets are
    /// committed no further than the latest checkpoint, and a restart (after
    /// a crash too) resumes from it: no window is lost or split, and alerts
    /// already delivered are not delivered again. 0 turns checkpoints off
    /// (a restart then starts every window empty at the committed offsets).
    pub checkpoint_interval_ms: u64,
    /// At most this share of the time (percent) goes to checkpoints: after
    /// one whose work (taking the state, writing the file; not waiting for
    /// Kafka) took `d`, the next waits at least `d × (100 − p) / p`, longer
    /// than `checkpoint_interval_ms` when the state is large (like Flink's
    /// minimum pause between checkpoints), but at most 5 minutes; a failed
    /// one is retried after the interval. 0 or 100: no bound.
    pub checkpoint_max_overhead_percent: u64,
    /// A patient not seen for this long in event time, whose readings no
    /// rule's state holds any more, is forgotten by the engine (its id
    /// interned again if it comes back): 1 M patients passing through no
    /// longer hold memory forever. 0: never.
    pub forget_patients_after_ms: i64,
}

impl PipelineConfig {
    /// The engine's settings from this section.
    pub fn engine_config(&self) -> sql_rules::EngineConfig {
        sql_rules::EngineConfig {
            default_lateness_ms: self.allowed_lateness_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            quiet_close_ms: (self.quiet_close_ms > 0).then_some(self.quiet_close_ms),
            late_alert_horizon_ms: self.late_alert_horizon_ms,
            budgets: sql_rules::RuleBudgets::default(),
        }
    }
}

impl Config {
    /// The engine's settings: `[pipeline]`, with the run-time budgets of
    /// `[limits]`.
    pub fn engine_config(&self) -> sql_rules::EngineConfig {
        sql_rules::EngineConfig {
            budgets: self.limits.budgets(),
            ..self.pipeline.engine_config()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    pub patients: usize,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            data_dir: "./data".into(),
            kafka: KafkaConfig::default(),
            pipeline: PipelineConfig::default(),
            demo: DemoConfig::default(),
            archive: ArchiveSettings::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            instance: InstanceConfig::default(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            group_id: "wardwatch".into(),
            group_instance_id: None,
            partitions: None,
            hospital_topics: true,
            resume_lookback_messages: 0,
            vitals_topic: "vitals".into(),
            dlq_topic: "vitals-dlq".into(),
            alerts_topic: "alert-events".into(),
            fetch_wait_max_ms: 10,
            properties: Default::default(),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: 8192,
            max_batch_delay_ms: 20,
            allowed_lateness_ms: 500,
            idle_timeout_ms: 10_000,
            engine_stall_ms: 15_000,
            max_future_skew_ms: 300_000,
            quiet_close_ms: 5_000,
            late_alert_horizon_ms: 600_000,
            checkpoint_interval_ms: 2_000,
            checkpoint_max_overhead_percent: 10,
            forget_patients_after_ms: sql_rules::DEFAULT_FORGET_PATIENTS_AFTER_MS,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            patients: 300,
            seed: 42,
        }
    }
}

impl Config {
    /// Reads a TOML file; a missing file named explicitly is an error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Refuses `[instance]` settings that cannot work together, saying what
    /// to set instead.
    pub fn check_instance(&self) -> Result<()> {
        let i = &self.instance;
        if let Some(id) = i.id {
            anyhow::ensure!(
                id <= MAX_INSTANCE_ID,
                "[instance] id = {id}: at most {MAX_INSTANCE_ID}"
            );
            anyhow::ensure!(
                i.rule_watch_interval_ms >= 100,
                "[instance] rule_watch_interval_ms = {}: at least 100",
                i.rule_watch_interval_ms
            );
        }
        if i.role != InstanceRole::All {
            anyhow::ensure!(
                i.id.is_some(),
                "[instance] role = {:?} needs an [instance] id: roles split the work of several \
                 instances on one data directory",
                i.role
            );
        }
        if i.id.is_some() && self.kafka.brokers.is_some() {
            // Group rebalancing would move a partition without its state
            // (checkpoints are per instance): each lists its own.
            anyhow::ensure!(
                self.kafka.partitions.is_some(),
                "[instance] id with Kafka: list the partitions this instance reads in \
                 [kafka] partitions (disjoint between patient_rules instances; [] for all). \
                 Consumer-group rebalancing would move a partition without its window state"
            );
            anyhow::ensure!(
                i.role != InstanceRole::All || self.kafka.partitions.as_deref() == Some(&[]),
                "[instance] role = \"all\" runs every rule, and rules not grouped by patient_id \
                 need every partition: set [kafka] partitions = [], or split the partitions \
                 between role = \"patient_rules\" instances and run one role = \"global_rules\""
            );
        }
        if i.role == InstanceRole::GlobalRules {
            anyhow::ensure!(
                self.kafka.brokers.is_some(),
                "[instance] role = \"global_rules\" reads every Kafka partition: set [kafka] brokers"
            );
            anyhow::ensure!(
                self.kafka.partitions.as_deref() == Some(&[]),
                "[instance] role = \"global_rules\" reads every partition by assignment: \
                 set [kafka] partitions = [] (and a group_id of its own)"
            );
        }
        Ok(())
    }

    pub fn data_path(&self) -> Option<PathBuf> {
        if self.data_dir.contains("://") {
            None
        } else {
            Some(PathBuf::from(&self.data_dir))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_local_and_without_kafka() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, "./data");
        assert!(c.kafka.brokers.is_none());
        assert_eq!(c.kafka.fetch_wait_max_ms, 10);
    }

    #[test]
    fn a_toml_file_overrides_only_what_it_names() {
        let c: Config =
            toml::from_str("listen = \"0.0.0.0:9000\"\n[kafka]\nbrokers = \"k:9092\"\n").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.kafka.brokers.as_deref(), Some("k:9092"));
        assert_eq!(c.kafka.vitals_topic, "vitals");
    }

    #[test]
    fn static_membership_is_off_unless_an_instance_id_is_configured() {
        assert!(Config::default().kafka.group_instance_id.is_none());
        let c: Config = toml::from_str("[kafka]\ngroup_instance_id = \"ward-a\"\n").unwrap();
        assert_eq!(c.kafka.group_instance_id.as_deref(), Some("ward-a"));
    }

    #[test]
    fn instance_settings_that_cannot_work_are_refused_with_what_to_set() {
        assert!(Config::default().check_instance().is_ok());
        let c: Config = toml::from_str("[instance]\nrole = \"patient_rules\"\n").unwrap();
        let e = c.check_instance().unwrap_err().to_string();
        assert!(e.contains("needs an [instance] id"), "{e}");
        let c: Config = toml::from_str("[instance]\nid = 10000\n").unwrap();
        assert!(c.check_instance().is_err());
        let c: Config = toml::from_str(
            "[instance]\nid = 2\nrole = \"global_rules\"\n[kafka]\nbrokers = \"k:9092\"\n",
        )
        .unwrap();
        let e = c.check_instance().unwrap_err().to_string();
        assert!(e.contains("[kafka] partitions"), "{e}");
        let c: Config = toml::from_str(
            "[instance]\nid = 2\nrole = \"global_rules\"\n[kafka]\nbrokers = \"k:9092\"\npartitions = []\n",
        )
        .unwrap();
        assert!(c.check_instance().is_ok());
        assert_eq!(c.instance.local_partition(), -4);
        assert_eq!(c.instance.name().as_deref(), Some("i2"));
        assert_eq!(Config::default().instance.local_partition(), -1);
        let c: Config = toml::from_str(
            "[instance]\nid = 0\nrole = \"patient_rules\"\n[kafka]\nbrokers = \"k:9092\"\n",
        )
        .unwrap();
        let e = c.check_instance().unwrap_err().to_string();
        assert!(e.contains("[kafka] partitions"), "{e}");
        let c: Config = toml::from_str(
            "[instance]\nid = 0\n[kafka]\nbrokers = \"k:9092\"\npartitions = [0, 1]\n",
        )
        .unwrap();
        let e = c.check_instance().unwrap_err().to_string();
        assert!(e.contains("global_rules"), "{e}");
        assert!(InstanceRole::PatientRules.runs(true) && !InstanceRole::PatientRules.runs(false));
        assert!(InstanceRole::GlobalRules.runs(false) && !InstanceRole::GlobalRules.runs(true));
    }

    #[test]
    fn unknown_keys_are_errors_not_silently_ignored() {
        assert!(toml::from_str::<Config>("listne = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[limits]\nmax_window = 1\n").is_err());
    }

    #[test]
    fn limits_default_to_the_documented_budgets_and_can_be_raised() {
        let l = Config::default().limits;
        assert_eq!(l.max_sql_bytes, 65_536);
        assert_eq!(l.max_expression_depth, 200);
        assert_eq!(l.max_window_ms, 86_400_000);
        assert_eq!(l.max_panes_per_window, 1440);
        assert_eq!(l.max_allowed_lateness_ms, 3_600_000);
        assert_eq!(l.max_cooldown_seconds, 604_800);
        assert_eq!((l.max_name_chars, l.max_description_bytes), (200, 4096));
        assert_eq!((l.max_ack_by_chars, l.max_ack_note_bytes), (200, 4096));
        assert_eq!(l.max_rule_state_bytes, 268_435_456);
        assert_eq!(l.max_rule_work_per_batch, 1_000_000_000);
        assert_eq!(l.max_alerts_per_rule_minute, 100_000);
        let c: Config = toml::from_str("[limits]\nmax_alerts_per_rule_minute = 50\n").unwrap();
        assert_eq!(c.engine_config().budgets.max_alerts_per_minute, 50);
        let c: Config = toml::from_str("[limits]\nmax_window_ms = 172800000\n").unwrap();
        assert_eq!(c.limits.rules().max_window_ms, 172_800_000);
        assert_eq!(c.limits.max_panes_per_window, 1440);
    }
}
