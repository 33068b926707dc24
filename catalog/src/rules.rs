//! Persistent, versioned alert rules.
//!
//! A rule is a stable id plus a history of immutable versions. Every edit
//! writes a new version object and never touches an old one, so an auditor can
//! replay exactly the SQL that was live when an alert fired. Layout under the
//! catalog prefix:
//!
//! ```text
//! {prefix}/rules/{id}/v000001.json   immutable RuleVersion, written with PutMode::Create
//! {prefix}/rules/{id}/v000002.json
//! {prefix}/rules/{id}/rule.json      mutable: {id, active, current_version, created_at_ms, updated_at_ms}
//! ```
//!
//! `rule.json` is the commit point: a version object whose number is above
//! `current_version` (an update interrupted between the two writes) is kept
//! and listed, but does not become current. A rule directory without
//! `rule.json` (a create interrupted the same way) is ignored on load.
//!
//! A damaged object (not JSON, empty, or contradicting its name) never stops
//! the store from opening; it is reported to [`crate::damage`] and listed by
//! [`RuleStore::damaged_files`] for the audit log:
//! - a damaged version is skipped; its number is never reused;
//! - a damaged `rule.json` is rebuilt from the newest intact version, and the
//!   rule runs (active): for alerting, a rule that runs when it was meant to
//!   be off is visible and can be switched off, one silently off is not;
//! - if the current version is damaged or missing, the newest intact version
//!   below it is current; a rule with no intact version is left out.
//!
//! [`RuleStore`] loads everything once at open and serves reads from memory;
//! writes go to the object store first and reach the in-memory index only
//! once they are durable. It does not validate SQL: the server compiles a rule
//! against the event schema before handing it here. Nor does it hold drafts
//! to [`DraftLimits`]: the server does that with its configured limits
//! ([`RuleDraft::validate_within`]); the store refuses only drafts without a
//! name or SQL.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use crate::damage::{self, DamagedFile};
use crate::storage::{get_bytes, list_all, put_new, put_overwrite};
use crate::CatalogError;

/// Longest accepted rule name, in characters, unless configured otherwise.
pub const MAX_NAME_CHARS: usize = 200;

/// Cooldown applied when a draft does not say otherwise.
pub const DEFAULT_COOLDOWN_SECONDS: u64 = 300;

/// Longest hospital id a rule may be scoped to, in bytes (as for API keys).
pub const MAX_HOSPITAL_ID_BYTES: usize = 128;

/// Longest slug taken from a rule name into its id.
const MAX_SLUG_CHARS: usize = 40;

/// How many fresh ids `create` tries before giving up on collisions.
const MAX_ID_ATTEMPTS: usize = 16;

/// How many objects are fetched at once while loading.
const LOAD_CONCURRENCY: usize = 16;

const META_FILE: &str = "rule.json";

fn default_cooldown() -> u64 {
    DEFAULT_COOLDOWN_SECONDS
}

/// How urgent an alert from a rule is.
///
/// Ordered from least to most urgent, so `Severity::High > Severity::Low`.
/// Parses case-insensitively and prints in lowercase.
///
/// ```
/// use catalog::rules::Severity;
/// assert_eq!("High".parse::<Severity>().unwrap(), Severity::High);
/// assert_eq!(Severity::Critical.to_string(), "critical");
/// assert!("urgent".parse::<Severity>().is_err());
/// ```
#[derive(
    Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational; no action expected.
    Info,
    /// Worth a look when convenient.
    Low,
    /// Needs attention soon. The default.
    #[default]
    Medium,
    /// Needs attention now.
    High,
    /// Life-threatening; needs immediate response.
    Critical,
}

impl Severity {
    /// Every level, least urgent first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The lowercase name used in JSON, SQL and the UI.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = CatalogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Severity::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| CatalogError::InvalidSeverity {
                value: s.to_string(),
            })
    }
}

/// What a user submits to create or edit a rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleDraft {
    /// Human-readable name; also the readable part of a new rule's id.
    pub name: String,
    /// The rule's SQL, stored exactly as given so error positions stay valid.
    pub sql: String,
    /// Severity of the alerts it raises.
    #[serde(default)]
    pub severity: Severity,
    /// Minimum time between two alerts for the same rule and key.
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
    /// Overrides the engine's default allowed lateness for this rule.
    #[serde(default)]
    pub allowed_lateness_ms: Option<i64>,
    /// Free-text explanation shown to clinicians.
    #[serde(default)]
    pub description: Option<String>,
    /// Aggregate duplicate events too (default: duplicates are dropped).
    #[serde(default)]
    pub keep_duplicates: bool,
    /// Re-fire a suppressed repeat that crosses a higher threshold.
    #[serde(default)]
    pub escalation: Option<sql_rules::Escalation>,
    /// The hospital whose events the rule sees; `None` is a global rule,
    /// over every hospital's events.
    #[serde(default)]
    pub hospital_id: Option<String>,
}

impl RuleDraft {
    /// A draft with default severity, cooldown and lateness.
    pub fn new(name: impl Into<String>, sql: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sql: sql.into(),
            severity: Severity::default(),
            cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
            allowed_lateness_ms: None,
            description: None,
            keep_duplicates: false,
            escalation: None,
            hospital_id: None,
        }
    }

    /// Checks the fields the catalog is responsible for (not the SQL's
    /// meaning), within the default [`DraftLimits`].
    pub fn validate(&self) -> Result<(), CatalogError> {
        self.validate_within(&DraftLimits::default())
    }

    /// Checks the fields the catalog is responsible for (not the SQL's
    /// meaning): a name, some SQL, and every field within `limits`. Each
    /// refusal names the limit, its value and the setting behind it.
    pub fn validate_within(&self, limits: &DraftLimits) -> Result<(), CatalogError> {
        self.validate_shape()?;
        let name = self.name.trim();
        let chars = name.chars().count();
        if chars > limits.max_name_chars {
            return Err(CatalogError::InvalidRule(format!(
                "the rule name is {chars} characters long; the limit is {} (max_name_chars)",
                limits.max_name_chars
            )));
        }
        if let Some(description) = &self.description {
            if description.len() > limits.max_description_bytes {
                return Err(CatalogError::InvalidRule(format!(
                    "the description of rule '{name}' is {} bytes long; the limit is {} bytes (max_description_bytes)",
                    description.len(),
                    limits.max_description_bytes
                )));
            }
        }
        if self.cooldown_seconds > limits.max_cooldown_seconds {
            return Err(CatalogError::InvalidRule(format!(
                "rule '{name}' has cooldown_seconds = {}; the limit is {} ({} days, max_cooldown_seconds)",
                self.cooldown_seconds,
                limits.max_cooldown_seconds,
                limits.max_cooldown_seconds / 86_400
            )));
        }
        if let Some(lateness) = self.allowed_lateness_ms {
            if lateness > limits.max_allowed_lateness_ms {
                return Err(CatalogError::InvalidRule(format!(
                    "rule '{name}' has allowed_lateness_ms = {lateness}; the limit is {} (max_allowed_lateness_ms): \
                     every window would stay open that much longer",
                    limits.max_allowed_lateness_ms
                )));
            }
        }
        if let Some(escalation) = &self.escalation {
            if let Some(severity) = &escalation.severity {
                if severity.parse::<Severity>().is_err() {
                    return Err(CatalogError::InvalidRule(format!(
                        "rule '{name}' escalates to severity '{}'; expected one of {}",
                        truncated(severity, 40),
                        Severity::ALL.map(Severity::as_str).join(", ")
                    )));
                }
            }
            let column = escalation.column.chars().count();
            if column > limits.max_name_chars {
                return Err(CatalogError::InvalidRule(format!(
                    "rule '{name}' escalates on a column name {column} characters long; the limit is {} (max_name_chars)",
                    limits.max_name_chars
                )));
            }
        }
        Ok(())
    }

    /// What every stored draft must have, whatever the limits: the store
    /// checks only this, so raising a limit in the server's configuration
    /// is not undone here.
    fn validate_shape(&self) -> Result<(), CatalogError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(CatalogError::InvalidRule(
                "the rule name is empty; give the rule a short descriptive name".into(),
            ));
        }
        if self.sql.trim().is_empty() {
            return Err(CatalogError::InvalidRule(format!(
                "rule '{}' has no SQL",
                truncated(name, 80)
            )));
        }
        if let Some(lateness) = self.allowed_lateness_ms {
            if lateness < 0 {
                return Err(CatalogError::InvalidRule(format!(
                    "rule '{}' has allowed_lateness_ms = {lateness}; it must be 0 or more",
                    truncated(name, 80)
                )));
            }
        }
        if let Some(hospital) = &self.hospital_id {
            if hospital.is_empty() || hospital.len() > MAX_HOSPITAL_ID_BYTES {
                return Err(CatalogError::InvalidRule(format!(
                    "rule '{}' has a hospital_id of {} bytes; it must be 1–{MAX_HOSPITAL_ID_BYTES} \
                     (leave it out for a rule over every hospital)",
                    truncated(name, 80),
                    hospital.len()
                )));
            }
        }
        Ok(())
    }
}

/// The first `max` characters of `text`, with `…` if it was longer: user
/// text quoted back in an error stays short.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// How large a rule's fields may be, checked when a draft is submitted.
///
/// ```
/// use catalog::rules::{DraftLimits, RuleDraft};
/// let mut draft = RuleDraft::new("Brady", "SELECT 1");
/// draft.cooldown_seconds = u64::MAX;
/// let err = draft.validate_within(&DraftLimits::default()).unwrap_err();
/// assert!(err.to_string().contains("max_cooldown_seconds"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DraftLimits {
    /// Longest rule name (and escalation column name), in characters.
    pub max_name_chars: usize,
    /// Longest description, in bytes.
    pub max_description_bytes: usize,
    /// Longest cooldown.
    pub max_cooldown_seconds: u64,
    /// Longest per-rule allowed lateness.
    pub max_allowed_lateness_ms: i64,
}

impl Default for DraftLimits {
    fn default() -> Self {
        Self {
            max_name_chars: MAX_NAME_CHARS,
            max_description_bytes: 4 * 1024,
            max_cooldown_seconds: 7 * 24 * 60 * 60,
            max_allowed_lateness_ms: 60 * 60 * 1000,
        }
    }
}

/// One immutable version of a rule, exactly as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleVersion {
    /// The rule this version belongs to.
    pub rule_id: String,
    /// 1 for the first version, then one more for each edit.
    pub version: u32,
    /// Name at this version.
    pub name: String,
    /// SQL at this version.
    pub sql: String,
    /// Severity at this version.
    pub severity: Severity,
    /// Cooldown at this version.
    pub cooldown_seconds: u64,
    /// Allowed lateness override at this version.
    pub allowed_lateness_ms: Option<i64>,
    /// Description at this version.
    pub description: Option<String>,
    /// When this version was written (Unix ms).
    /// Whether duplicate events are aggregated at this version.
    #[serde(default)]
    pub keep_duplicates: bool,
    /// Escalation during cooldown at this version.
    #[serde(default)]
    pub escalation: Option<sql_rules::Escalation>,
    pub created_at_ms: i64,
    /// The hospital whose events this version sees; `None` (and every
    /// version stored before rules had a scope) is a global rule.
    #[serde(default)]
    pub hospital_id: Option<String>,
}

impl RuleVersion {
    /// The hospital this version is scoped to, to compile it with
    /// ([`sql_rules::RuleCompiler::compile_scoped`]); `None` for a global rule.
    pub fn hospital(&self) -> Option<&str> {
        self.hospital_id.as_deref()
    }

    /// The engine's view of this version, with its SQL compiled by the
    /// caller (the catalog does not judge SQL) with its scope, see
    /// [`hospital`](Self::hospital).
    pub fn spec(&self, compiled: sql_rules::CompiledRule) -> sql_rules::RuleSpec {
        sql_rules::RuleSpec {
            id: self.rule_id.clone(),
            version: self.version,
            name: self.name.clone(),
            severity: self.severity.to_string(),
            // Saturating: a cooldown stored before it was bounded (up to
            // u64::MAX s) must mean "very long", not wrap round to none.
            cooldown_ms: i64::try_from(self.cooldown_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            allowed_lateness_ms: self.allowed_lateness_ms,
            keep_duplicates: self.keep_duplicates,
            escalation: self.escalation.clone(),
            compiled,
        }
    }

    fn from_draft(rule_id: String, version: u32, draft: RuleDraft, now_ms: i64) -> Self {
        Self {
            rule_id,
            version,
            // Validation trims for emptiness; store the trimmed name so lists
            // and ids do not carry stray whitespace.
            name: draft.name.trim().to_string(),
            sql: draft.sql,
            severity: draft.severity,
            cooldown_seconds: draft.cooldown_seconds,
            allowed_lateness_ms: draft.allowed_lateness_ms,
            description: draft.description,
            keep_duplicates: draft.keep_duplicates,
            escalation: draft.escalation,
            created_at_ms: now_ms,
            hospital_id: draft.hospital_id,
        }
    }
}

/// A rule as the API shows it: its state, current version and version history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rule {
    /// Stable, URL-safe id, e.g. `sustained-tachycardia-3f9a`.
    pub id: String,
    /// Whether the engine should run it. Deactivated rules keep their versions.
    pub active: bool,
    /// The version the engine runs.
    pub current: RuleVersion,
    /// Every stored version number, ascending.
    pub versions: Vec<u32>,
    /// When the rule was created (Unix ms).
    pub created_at_ms: i64,
    /// When the rule was last edited, activated or deactivated (Unix ms).
    pub updated_at_ms: i64,
    /// Who stopped it, when and why; `None` while active (and for rules
    /// deactivated before reasons were recorded).
    pub deactivation: Option<Deactivation>,
}

/// Who deactivated a rule, when and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deactivation {
    /// The caller's display name.
    pub by: String,
    /// The caller's stable id (token `sub` or `api-key:<id>`).
    pub by_subject: String,
    pub at_ms: i64,
    pub reason: String,
}

/// The mutable `rule.json` object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct RuleMeta {
    id: String,
    active: bool,
    current_version: u32,
    created_at_ms: i64,
    updated_at_ms: i64,
    /// Absent in files written before reasons were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deactivation: Option<Deactivation>,
}

/// One rule in the in-memory index.
#[derive(Clone, Debug)]
struct Entry {
    meta: RuleMeta,
    /// A copy of `versions[meta.current_version]`, kept so building a [`Rule`]
    /// needs no lookup that could fail.
    current: RuleVersion,
    versions: BTreeMap<u32, RuleVersion>,
    /// The highest version number stored, damaged ones included: the next
    /// version must not reuse a number whose object exists.
    highest_version: u32,
}

impl Entry {
    fn to_rule(&self) -> Rule {
        Rule {
            id: self.meta.id.clone(),
            active: self.meta.active,
            current: self.current.clone(),
            versions: self.versions.keys().copied().collect(),
            created_at_ms: self.meta.created_at_ms,
            updated_at_ms: self.meta.updated_at_ms,
            deactivation: self.meta.deactivation.clone(),
        }
    }
}

/// The versioned rule store. Cheap to clone; clones share one index.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use catalog::rules::{RuleDraft, RuleStore};
/// use object_store::{memory::InMemory, path::Path};
///
/// let rules = RuleStore::open(Arc::new(InMemory::new()), Path::default()).await?;
/// let rule = rules
///     .create(RuleDraft::new("Sustained tachycardia", "SELECT 1"), 1_000)
///     .await?;
/// assert!(rule.id.starts_with("sustained-tachycardia-"));
/// assert_eq!(rule.current.version, 1);
/// # Ok::<(), catalog::CatalogError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RuleStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// `{prefix}/rules`.
    root: Path,
    index: RwLock<BTreeMap<String, Entry>>,
    /// Objects found damaged at open.
    damaged: Vec<DamagedFile>,
    /// Serialises writers so version numbers are assigned one at a time,
    /// without making readers wait on object-store I/O.
    writes: Mutex<()>,
    /// Feeds id generation so two ids made in the same millisecond differ.
    id_counter: AtomicU64,
    /// What the store listed when the index was last loaded: another
    /// instance's writes show as a difference (see [`RuleStore::reload`]).
    listed: std::sync::Mutex<Listing>,
}

/// Per object under `rules/`: its size, modification time and e-tag.
type Listing = BTreeMap<String, (usize, i64, Option<String>)>;

fn listing(objects: &[object_store::ObjectMeta]) -> Listing {
    objects
        .iter()
        .map(|o| {
            (
                o.location.to_string(),
                (
                    o.size as usize,
                    o.last_modified.timestamp_nanos_opt().unwrap_or(0),
                    o.e_tag.clone(),
                ),
            )
        })
        .collect()
}

impl fmt::Debug for RuleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleStore")
            .field("store", &self.inner.store)
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl RuleStore {
    /// Opens the store and loads every rule under `{prefix}/rules/`.
    ///
    /// Fails only if the store cannot be listed or read. Damaged objects are
    /// skipped or recovered from (see the [module docs](self)) and listed by
    /// [`damaged_files`](Self::damaged_files).
    pub async fn open(store: Arc<dyn ObjectStore>, prefix: Path) -> Result<Self, CatalogError> {
        let root = prefix.join("rules");
        let objects = list_all(store.as_ref(), &root).await?;
        let listed = listing(&objects);
        let (index, damaged) = load_index(store.as_ref(), &root, objects).await?;
        tracing::debug!(rules = index.len(), root = %root, "loaded rules");
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                root,
                index: RwLock::new(index),
                damaged,
                writes: Mutex::new(()),
                id_counter: AtomicU64::new(0),
                listed: std::sync::Mutex::new(listed),
            }),
        })
    }

    /// Reads the store again if anything under `rules/` changed since it
    /// was last read (a rule created, changed or switched on or off by
    /// another instance sharing the store); returns whether it did. One
    /// listing when nothing changed. Writes call it first, so they number
    /// versions after, and never overwrite, what another instance wrote.
    pub async fn reload(&self) -> Result<bool, CatalogError> {
        let _writer = self.inner.writes.lock().await;
        self.reload_locked().await
    }

    /// [`reload`](Self::reload), with the writer lock held by the caller.
    async fn reload_locked(&self) -> Result<bool, CatalogError> {
        let objects = list_all(self.inner.store.as_ref(), &self.inner.root).await?;
        let listed = listing(&objects);
        if *self.inner.listed.lock().expect("listing lock") == listed {
            return Ok(false);
        }
        let (index, damaged) =
            load_index(self.inner.store.as_ref(), &self.inner.root, objects).await?;
        for d in &damaged {
            tracing::warn!(path = %d.path, reason = %d.reason, "a rule object read again is damaged: {}", d.outcome);
        }
        *self.inner.index.write().await = index;
        *self.inner.listed.lock().expect("listing lock") = listed;
        Ok(true)
    }

    /// Creates a new, active rule at version 1 with a fresh id.
    pub async fn create(&self, draft: RuleDraft, now_ms: i64) -> Result<Rule, CatalogError> {
        draft.validate_shape()?;
        let _writer = self.inner.writes.lock().await;
        self.reload_locked().await?;

        let mut last_clash = None;
        for _ in 0..MAX_ID_ATTEMPTS {
            let id = self.new_id(draft.name.trim());
            if self.inner.index.read().await.contains_key(&id) {
                continue;
            }
            let version = RuleVersion::from_draft(id.clone(), 1, draft.clone(), now_ms);
            // Writing version 1 with PutMode::Create doubles as reserving the
            // id: another instance sharing the store cannot take it too.
            match self.put_version(&version).await {
                Ok(()) => {}
                Err(CatalogError::AlreadyExists { path }) => {
                    last_clash = Some(path);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let meta = RuleMeta {
                id: id.clone(),
                active: true,
                current_version: 1,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
                deactivation: None,
            };
            self.put_meta(&meta).await?;

            let entry = Entry {
                meta,
                current: version.clone(),
                versions: BTreeMap::from([(1, version)]),
                highest_version: 1,
            };
            let rule = entry.to_rule();
            self.inner.index.write().await.insert(id, entry);
            return Ok(rule);
        }
        Err(CatalogError::AlreadyExists {
            path: last_clash.unwrap_or_else(|| self.inner.root.to_string()),
        })
    }

    /// Stores `draft` as the next version of rule `id` and makes it current.
    ///
    /// The new version number is one more than the highest stored, and the
    /// rule keeps its active flag.
    pub async fn update(
        &self,
        id: &str,
        draft: RuleDraft,
        now_ms: i64,
    ) -> Result<Rule, CatalogError> {
        draft.validate_shape()?;
        let _writer = self.inner.writes.lock().await;
        self.reload_locked().await?;

        let (mut meta, next) = {
            let index = self.inner.index.read().await;
            let entry = index.get(id).ok_or_else(|| not_found(id))?;
            let highest = entry
                .versions
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
                .max(entry.highest_version);
            let next = highest.checked_add(1).ok_or_else(|| {
                CatalogError::InvalidRule(format!("rule '{id}' has run out of version numbers"))
            })?;
            (entry.meta.clone(), next)
        };

        let version = RuleVersion::from_draft(id.to_string(), next, draft, now_ms);
        self.put_version(&version).await?;
        meta.current_version = next;
        meta.updated_at_ms = now_ms;
        let committed = self.put_meta(&meta).await;

        let mut index = self.inner.index.write().await;
        let entry = index.get_mut(id).ok_or_else(|| not_found(id))?;
        // The version object exists even if rule.json failed, so remember it:
        // the next update must not try to reuse its number.
        entry.versions.insert(next, version.clone());
        entry.highest_version = entry.highest_version.max(next);
        committed?;
        entry.meta = meta;
        entry.current = version;
        Ok(entry.to_rule())
    }

    /// Activates or deactivates rule `id`. Versions are kept either way, and
    /// setting the state it already has changes nothing.
    pub async fn set_active(
        &self,
        id: &str,
        active: bool,
        now_ms: i64,
    ) -> Result<Rule, CatalogError> {
        self.set_active_because(id, active, now_ms, None).await
    }

    /// As [`set_active`](Self::set_active), recording who deactivated the
    /// rule and why (`deactivation` is ignored when activating; activating
    /// clears it).
    pub async fn set_active_because(
        &self,
        id: &str,
        active: bool,
        now_ms: i64,
        deactivation: Option<Deactivation>,
    ) -> Result<Rule, CatalogError> {
        let _writer = self.inner.writes.lock().await;
        self.reload_locked().await?;

        let mut meta = {
            let index = self.inner.index.read().await;
            let entry = index.get(id).ok_or_else(|| not_found(id))?;
            if entry.meta.active == active {
                return Ok(entry.to_rule());
            }
            entry.meta.clone()
        };
        meta.active = active;
        meta.updated_at_ms = now_ms;
        meta.deactivation = if active { None } else { deactivation };
        self.put_meta(&meta).await?;

        let mut index = self.inner.index.write().await;
        let entry = index.get_mut(id).ok_or_else(|| not_found(id))?;
        entry.meta = meta;
        Ok(entry.to_rule())
    }

    /// The objects found damaged when the store was opened, with what was
    /// done about each (for the audit log).
    pub fn damaged_files(&self) -> &[DamagedFile] {
        &self.inner.damaged
    }

    /// The rule with this id, active or not.
    pub async fn get(&self, id: &str) -> Option<Rule> {
        self.inner.index.read().await.get(id).map(Entry::to_rule)
    }

    /// One stored version of a rule, current or not.
    pub async fn version(&self, id: &str, version: u32) -> Option<RuleVersion> {
        let index = self.inner.index.read().await;
        index.get(id)?.versions.get(&version).cloned()
    }

    /// Every rule, active or not, oldest first (ties broken by id).
    pub async fn list(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self
            .inner
            .index
            .read()
            .await
            .values()
            .map(Entry::to_rule)
            .collect();
        rules.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        rules
    }

    /// Every stored version of every rule: rules in the order of
    /// [`list`](Self::list), each rule's versions ascending.
    pub async fn all_versions(&self) -> Vec<RuleVersion> {
        let index = self.inner.index.read().await;
        let mut entries: Vec<&Entry> = index.values().collect();
        entries.sort_by(|a, b| {
            (a.meta.created_at_ms, &a.meta.id).cmp(&(b.meta.created_at_ms, &b.meta.id))
        });
        entries
            .into_iter()
            .flat_map(|entry| entry.versions.values().cloned())
            .collect()
    }

    /// A short, URL-safe id: a slug of the name plus four random hex digits.
    fn new_id(&self, name: &str) -> String {
        // RandomState is seeded randomly per process and differs per call;
        // the counter separates calls that would otherwise hash alike.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.inner.id_counter.fetch_add(1, Ordering::Relaxed));
        hasher.write(name.as_bytes());
        format!("{}-{:04x}", slug(name), hasher.finish() & 0xffff)
    }

    async fn put_version(&self, version: &RuleVersion) -> Result<(), CatalogError> {
        let path = version_path(&self.inner.root, &version.rule_id, version.version);
        let bytes = serde_json::to_vec_pretty(version).map_err(|source| CatalogError::Encode {
            what: format!("rule '{}' version {}", version.rule_id, version.version),
            source,
        })?;
        put_new(self.inner.store.as_ref(), &path, bytes.into()).await
    }

    async fn put_meta(&self, meta: &RuleMeta) -> Result<(), CatalogError> {
        let path = meta_path(&self.inner.root, &meta.id);
        let bytes = serde_json::to_vec_pretty(meta).map_err(|source| CatalogError::Encode {
            what: format!("rule '{}' metadata", meta.id),
            source,
        })?;
        put_overwrite(self.inner.store.as_ref(), &path, bytes.into()).await
    }
}

fn not_found(id: &str) -> CatalogError {
    CatalogError::RuleNotFound {
        rule_id: id.to_string(),
    }
}

fn version_path(root: &Path, id: &str, version: u32) -> Path {
    root.clone().join(id).join(format!("v{version:06}.json"))
}

fn meta_path(root: &Path, id: &str) -> Path {
    root.clone().join(id).join(META_FILE)
}

/// Lowercase ASCII letters and digits of `name`, other runs collapsed to `-`.
fn slug(name: &str) -> String {
    let mut out = String::with_capacity(MAX_SLUG_CHARS);
    for c in name.chars() {
        if out.len() >= MAX_SLUG_CHARS {
            break;
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "rule".to_string()
    } else {
        trimmed.to_string()
    }
}

/// What one object under `{prefix}/rules/{id}/` holds, judged by its name.
enum RuleObject {
    Meta,
    Version(u32),
}

fn classify(file_name: &str) -> Option<RuleObject> {
    if file_name == META_FILE {
        return Some(RuleObject::Meta);
    }
    let digits = file_name.strip_prefix('v')?.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(RuleObject::Version)
}

/// A stored object that could not be used, before it is reported.
struct Damage {
    path: Path,
    reason: String,
}

#[derive(Default)]
struct Loaded {
    meta: Option<(Path, RuleMeta)>,
    damaged_meta: Option<Damage>,
    versions: BTreeMap<u32, (Path, RuleVersion)>,
    damaged_versions: BTreeMap<u32, Damage>,
}

async fn load_index(
    store: &dyn ObjectStore,
    root: &Path,
    objects: Vec<object_store::ObjectMeta>,
) -> Result<(BTreeMap<String, Entry>, Vec<DamagedFile>), CatalogError> {
    let mut wanted = Vec::new();
    for object in objects {
        let parts: Vec<_> = match object.location.prefix_match(root) {
            Some(parts) => parts.collect(),
            None => continue,
        };
        let [id, file] = parts.as_slice() else {
            tracing::warn!(path = %object.location, "ignoring unexpected object in the rule store");
            continue;
        };
        match classify(file.as_ref()) {
            Some(kind) => wanted.push((id.as_ref().to_string(), kind, object.location)),
            None => {
                tracing::warn!(path = %object.location, "ignoring unexpected object in the rule store");
            }
        }
    }

    let fetched: Vec<_> = futures::stream::iter(wanted)
        .map(|(id, kind, path)| async move {
            let bytes = get_bytes(store, &path).await?;
            Ok::<_, CatalogError>((id, kind, path, bytes))
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;

    let mut by_id: HashMap<String, Loaded> = HashMap::new();
    for (id, kind, path, bytes) in fetched {
        let loaded = by_id.entry(id).or_default();
        match kind {
            RuleObject::Meta => match decode_json(&bytes) {
                Ok(meta) => loaded.meta = Some((path, meta)),
                Err(reason) => loaded.damaged_meta = Some(Damage { path, reason }),
            },
            RuleObject::Version(n) => match decode_json(&bytes) {
                Ok(version) => {
                    loaded.versions.insert(n, (path, version));
                }
                Err(reason) => {
                    loaded.damaged_versions.insert(n, Damage { path, reason });
                }
            },
        }
    }

    let mut index = BTreeMap::new();
    let mut damaged = Vec::new();
    let mut ids: Vec<String> = by_id.keys().cloned().collect();
    ids.sort();
    for id in ids {
        let Some(loaded) = by_id.remove(&id) else {
            continue;
        };
        if let Some(entry) = assemble(&id, loaded, &mut damaged) {
            index.insert(id, entry);
        }
    }
    Ok((index, damaged))
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| match bytes.len() {
        0 => "the file is empty".to_string(),
        n => format!("not valid JSON ({n} bytes): {e}"),
    })
}

/// Checks one rule's objects against each other and builds its index entry,
/// skipping or recovering from damaged objects (reported into `damaged`).
fn assemble(id: &str, loaded: Loaded, damaged: &mut Vec<DamagedFile>) -> Option<Entry> {
    let Loaded {
        meta,
        mut damaged_meta,
        versions: stored,
        mut damaged_versions,
    } = loaded;

    // A version object that holds another rule or number is damaged too.
    let mut versions = BTreeMap::new();
    for (n, (path, version)) in stored {
        if version.rule_id == id && version.version == n {
            versions.insert(n, version);
        } else {
            let reason = format!(
                "the object holds rule '{}' version {}",
                version.rule_id, version.version
            );
            damaged_versions.insert(n, Damage { path, reason });
        }
    }
    let highest_version = versions
        .keys()
        .chain(damaged_versions.keys())
        .max()
        .copied()
        .unwrap_or(0);

    let meta = match meta {
        Some((path, meta)) if meta.id == id => Some((path, meta)),
        Some((path, meta)) => {
            let reason = format!("rule.json names rule '{}'", meta.id);
            damaged_meta = Some(Damage { path, reason });
            None
        }
        None => None,
    };

    // The state to use: rule.json, or one rebuilt from the versions.
    let (meta_path, meta, meta_damage) = match (meta, damaged_meta) {
        (Some((path, meta)), _) => (path, meta, None),
        (None, None) => {
            // Version objects without rule.json come from a create that
            // failed after writing version 1; that create reported an
            // error, so the rule never existed for its caller.
            tracing::warn!(
                rule_id = id,
                "ignoring rule versions without rule.json (interrupted create)"
            );
            return None;
        }
        (None, Some(damage)) => {
            let (Some(first), Some(last)) = (versions.values().next(), versions.values().last())
            else {
                let outcome = "rule left out: no intact version";
                push_report(damaged, "rule state", damage, outcome.to_string());
                for damage in damaged_versions.into_values() {
                    push_report(damaged, "rule version", damage, outcome.to_string());
                }
                return None;
            };
            let rebuilt = RuleMeta {
                id: id.to_string(),
                active: true,
                current_version: last.version,
                created_at_ms: first.created_at_ms,
                updated_at_ms: last.created_at_ms,
                deactivation: None,
            };
            (damage.path.clone(), rebuilt, Some(damage))
        }
    };

    // The current version, or the newest intact one below it.
    let current = versions
        .range(..=meta.current_version)
        .next_back()
        .map(|(_, v)| v.clone());
    let Some(current) = current else {
        let outcome = "rule left out: no intact version";
        // rule.json itself is fine when it names a version that is damaged.
        let meta_damage = meta_damage.or_else(|| {
            (!damaged_versions.contains_key(&meta.current_version)).then(|| Damage {
                path: meta_path,
                reason: format!("current version {} is missing", meta.current_version),
            })
        });
        if let Some(damage) = meta_damage {
            push_report(damaged, "rule state", damage, outcome.to_string());
        }
        for damage in damaged_versions.into_values() {
            push_report(damaged, "rule version", damage, outcome.to_string());
        }
        return None;
    };
    if let Some(damage) = meta_damage {
        push_report(
            damaged,
            "rule state",
            damage,
            format!("rule recovered from version {} and active", current.version),
        );
    } else if current.version != meta.current_version
        && !damaged_versions.contains_key(&meta.current_version)
    {
        let damage = Damage {
            path: meta_path,
            reason: format!("current version {} is missing", meta.current_version),
        };
        let outcome = format!("the rule runs version {}", current.version);
        push_report(damaged, "rule state", damage, outcome);
    }
    for (n, damage) in damaged_versions {
        let outcome = if n == meta.current_version {
            format!("version skipped; the rule runs version {}", current.version)
        } else {
            "version skipped".to_string()
        };
        push_report(damaged, "rule version", damage, outcome);
    }
    Some(Entry {
        meta,
        current,
        versions,
        highest_version,
    })
}

fn push_report(
    damaged: &mut Vec<DamagedFile>,
    kind: &'static str,
    damage: Damage,
    outcome: String,
) {
    damaged.push(damage::report(DamagedFile {
        path: damage.path.to_string(),
        kind,
        reason: damage.reason,
        outcome,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    fn draft(name: &str) -> RuleDraft {
        RuleDraft::new(name, "SELECT patient_id FROM vitals WHERE heart_rate > 120")
    }

    async fn memory_store() -> (Arc<dyn ObjectStore>, RuleStore) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let rules = RuleStore::open(store.clone(), Path::from("ward"))
            .await
            .unwrap();
        (store, rules)
    }

    #[tokio::test]
    async fn two_stores_on_one_object_store_see_each_others_writes_and_never_undo_them() {
        let (store, a) = memory_store().await;
        let b = RuleStore::open(store.clone(), Path::from("ward"))
            .await
            .unwrap();
        assert!(!b.reload().await.unwrap(), "nothing changed yet");
        let rule = a.create(draft("Tachy"), 1_000).await.unwrap();
        assert!(b.get(&rule.id).await.is_none());
        assert!(b.reload().await.unwrap());
        assert_eq!(b.get(&rule.id).await.unwrap().current.version, 1);
        assert!(!b.reload().await.unwrap(), "read once per change");
        // B edits a rule it has seen; A, not having read since, then
        // deactivates it: A reads first, so B's version stays current.
        b.update(&rule.id, draft("Tachy v2"), 2_000).await.unwrap();
        let off = a.set_active(&rule.id, false, 3_000).await.unwrap();
        assert_eq!(off.current.version, 2);
        assert!(!off.active);
        b.reload().await.unwrap();
        let seen = b.get(&rule.id).await.unwrap();
        assert!(!seen.active);
        assert_eq!(seen.current.version, 2);
        // And A numbers its next version after B's.
        let v3 = a.update(&rule.id, draft("Tachy v3"), 4_000).await.unwrap();
        assert_eq!(v3.current.version, 3);
    }

    #[test]
    fn severity_parses_case_insensitively_and_prints_lowercase() {
        for level in Severity::ALL {
            let upper = level.to_string().to_uppercase();
            assert_eq!(upper.parse::<Severity>().unwrap(), level);
        }
        assert_eq!(Severity::default(), Severity::Medium);
        assert!(Severity::Critical > Severity::High);
    }

    #[test]
    fn unknown_severity_lists_the_allowed_values() {
        let msg = "urgent".parse::<Severity>().unwrap_err().to_string();
        assert!(msg.contains("'urgent'"), "{msg}");
        assert!(msg.contains("info, low, medium, high, critical"), "{msg}");
    }

    #[test]
    fn draft_defaults_come_from_serde() {
        let draft: RuleDraft = serde_json::from_str(r#"{"name": "n", "sql": "SELECT 1"}"#).unwrap();
        assert_eq!(draft, RuleDraft::new("n", "SELECT 1"));
        assert_eq!(draft.cooldown_seconds, 300);
        let draft: RuleDraft =
            serde_json::from_str(r#"{"name": "n", "sql": "s", "severity": "critical"}"#).unwrap();
        assert_eq!(draft.severity, Severity::Critical);
    }

    #[test]
    fn draft_validation_explains_what_is_wrong() {
        let msg = |d: RuleDraft| d.validate().unwrap_err().to_string();
        assert!(msg(RuleDraft::new("  ", "SELECT 1")).contains("name is empty"));
        assert!(msg(RuleDraft::new("x".repeat(201), "SELECT 1"))
            .contains("the limit is 200 (max_name_chars)"));
        assert!(msg(RuleDraft::new("ok", " \n")).contains("has no SQL"));
        let mut late = RuleDraft::new("ok", "SELECT 1");
        late.allowed_lateness_ms = Some(-1);
        assert!(msg(late).contains("allowed_lateness_ms"));
        // 200 multi-byte characters are within the limit: it counts characters.
        assert!(RuleDraft::new("é".repeat(200), "SELECT 1")
            .validate()
            .is_ok());
    }

    #[test]
    fn a_hospital_scope_is_one_to_128_bytes_and_absent_means_global() {
        let scoped = |h: &str| RuleDraft {
            hospital_id: Some(h.into()),
            ..RuleDraft::new("ok", "SELECT 1")
        };
        assert!(scoped("H01").validate().is_ok());
        assert!(scoped(&"h".repeat(MAX_HOSPITAL_ID_BYTES))
            .validate()
            .is_ok());
        for bad in [String::new(), "h".repeat(MAX_HOSPITAL_ID_BYTES + 1)] {
            let err = scoped(&bad).validate().unwrap_err().to_string();
            assert!(err.contains("hospital_id"), "{err}");
        }
        // The store holds every draft to it, whatever the server's limits.
        assert!(scoped("").validate_shape().is_err());
        // Drafts and versions stored before rules had a scope are global.
        let draft: RuleDraft = serde_json::from_str(r#"{"name": "n", "sql": "s"}"#).unwrap();
        assert_eq!(draft.hospital_id, None);
        let mut old =
            serde_json::to_value(RuleVersion::from_draft("r-1".into(), 1, scoped("H01"), 5))
                .unwrap();
        assert_eq!(old["hospital_id"], "H01");
        old.as_object_mut().unwrap().remove("hospital_id");
        let old: RuleVersion = serde_json::from_value(old).unwrap();
        assert_eq!(old.hospital(), None);
    }

    #[tokio::test]
    async fn a_rule_keeps_its_hospital_through_versions_and_reopening() {
        let (store, rules) = memory_store().await;
        let mut scoped = draft("Tachy");
        scoped.hospital_id = Some("H01".into());
        let rule = rules.create(scoped.clone(), 10).await.unwrap();
        assert_eq!(rule.current.hospital(), Some("H01"));
        // Each version has its own: an edit may move the rule.
        scoped.hospital_id = Some("H02".into());
        rules.update(&rule.id, scoped, 20).await.unwrap();
        let reopened = RuleStore::open(store, Path::from("ward")).await.unwrap();
        assert_eq!(
            reopened.get(&rule.id).await.unwrap().current.hospital(),
            Some("H02")
        );
        assert_eq!(
            reopened.version(&rule.id, 1).await.unwrap().hospital(),
            Some("H01")
        );
    }

    #[test]
    fn slug_keeps_ascii_words_and_collapses_the_rest() {
        assert_eq!(
            slug("Sustained Tachycardia (HR>120)"),
            "sustained-tachycardia-hr-120"
        );
        assert_eq!(slug("--SpO2  low--"), "spo2-low");
        assert_eq!(slug("Фибрилляция"), "rule");
        assert!(slug(&"a".repeat(500)).len() <= MAX_SLUG_CHARS);
    }

    #[tokio::test]
    async fn create_assigns_unique_url_safe_ids_even_for_equal_names() {
        let (_, rules) = memory_store().await;
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let rule = rules
                .create(draft("Sustained tachycardia"), 1)
                .await
                .unwrap();
            assert!(rule.id.starts_with("sustained-tachycardia-"), "{}", rule.id);
            assert!(rule
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            assert!(ids.insert(rule.id));
        }
    }

    #[tokio::test]
    async fn create_starts_active_at_version_one() {
        let (_, rules) = memory_store().await;
        let rule = rules.create(draft("  Brady  "), 10).await.unwrap();
        assert!(rule.active);
        assert_eq!(rule.versions, vec![1]);
        assert_eq!(rule.current.version, 1);
        assert_eq!(rule.current.name, "Brady");
        assert_eq!(rule.current.rule_id, rule.id);
        assert_eq!((rule.created_at_ms, rule.updated_at_ms), (10, 10));
        assert_eq!(rules.get(&rule.id).await, Some(rule));
    }

    #[tokio::test]
    async fn create_rejects_invalid_drafts_without_writing() {
        let (store, rules) = memory_store().await;
        let err = rules
            .create(RuleDraft::new("", "SELECT 1"), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::InvalidRule(_)), "{err}");
        assert!(list_all(store.as_ref(), &Path::from("ward"))
            .await
            .unwrap()
            .is_empty());
        assert!(rules.list().await.is_empty());
    }

    #[tokio::test]
    async fn update_adds_a_version_and_keeps_the_old_one() {
        let (_, rules) = memory_store().await;
        let created = rules.create(draft("Tachy"), 10).await.unwrap();
        let mut edit = draft("Tachy (tuned)");
        edit.severity = Severity::High;
        let updated = rules.update(&created.id, edit, 20).await.unwrap();

        assert_eq!(updated.id, created.id);
        assert_eq!(updated.versions, vec![1, 2]);
        assert_eq!(updated.current.version, 2);
        assert_eq!(updated.current.severity, Severity::High);
        assert_eq!((updated.created_at_ms, updated.updated_at_ms), (10, 20));
        assert_eq!(
            rules.version(&created.id, 1).await,
            Some(created.current.clone())
        );
        assert_eq!(rules.version(&created.id, 3).await, None);
    }

    #[tokio::test]
    async fn update_or_deactivate_of_an_unknown_rule_is_not_found() {
        let (_, rules) = memory_store().await;
        let err = rules.update("nope", draft("x"), 1).await.unwrap_err();
        assert!(matches!(err, CatalogError::RuleNotFound { ref rule_id } if rule_id == "nope"));
        let err = rules.set_active("nope", false, 1).await.unwrap_err();
        assert_eq!(err.to_string(), "rule 'nope' not found");
        assert_eq!(rules.get("nope").await, None);
    }

    #[tokio::test]
    async fn update_never_overwrites_an_existing_version_object() {
        let (store, rules) = memory_store().await;
        let rule = rules.create(draft("Tachy"), 10).await.unwrap();
        // Someone else already wrote version 2 behind this store's back.
        let squatter = version_path(&Path::from("ward/rules"), &rule.id, 2);
        store.put(&squatter, "{}".into()).await.unwrap();

        // A write reads the store first: it numbers after what it finds
        // (a damaged version's number is never reused) and overwrites none.
        let updated = rules.update(&rule.id, draft("Tachy 2"), 20).await.unwrap();
        assert_eq!(updated.current.version, 3);
        let bytes = get_bytes(store.as_ref(), &squatter).await.unwrap();
        assert_eq!(bytes.as_ref(), b"{}");
    }

    #[tokio::test]
    async fn set_active_keeps_versions_and_is_idempotent() {
        let (_, rules) = memory_store().await;
        let rule = rules.create(draft("Tachy"), 10).await.unwrap();
        let off = rules.set_active(&rule.id, false, 20).await.unwrap();
        assert!(!off.active);
        assert_eq!(off.versions, vec![1]);
        assert_eq!(off.updated_at_ms, 20);
        // Already inactive: nothing changes, not even the timestamp.
        let again = rules.set_active(&rule.id, false, 30).await.unwrap();
        assert_eq!(again, off);
        // Editing an inactive rule keeps it inactive.
        let edited = rules.update(&rule.id, draft("Tachy"), 40).await.unwrap();
        assert!(!edited.active);
    }

    #[tokio::test]
    async fn a_deactivation_keeps_who_and_why_until_reactivated() {
        let (store, rules) = memory_store().await;
        let rule = rules.create(draft("Tachy"), 10).await.unwrap();
        assert_eq!(rule.deactivation, None);
        let why = Deactivation {
            by: "Dr A".into(),
            by_subject: "api-key:k1".into(),
            at_ms: 20,
            reason: "too noisy on ward 3".into(),
        };
        let off = rules
            .set_active_because(&rule.id, false, 20, Some(why.clone()))
            .await
            .unwrap();
        assert_eq!(off.deactivation.as_ref(), Some(&why));
        let reopened = RuleStore::open(store.clone(), Path::from("ward"))
            .await
            .unwrap();
        assert_eq!(
            reopened.get(&rule.id).await.unwrap().deactivation,
            Some(why)
        );
        let on = reopened.set_active(&rule.id, true, 30).await.unwrap();
        assert!(on.active);
        assert_eq!(on.deactivation, None, "activating clears the reason");
        let reopened = RuleStore::open(store, Path::from("ward")).await.unwrap();
        assert_eq!(reopened.get(&rule.id).await.unwrap().deactivation, None);
    }

    #[tokio::test]
    async fn list_is_sorted_by_creation_time_then_id() {
        let (_, rules) = memory_store().await;
        let late = rules.create(draft("b"), 30).await.unwrap();
        let early = rules.create(draft("z"), 10).await.unwrap();
        let tie_a = rules.create(draft("a"), 20).await.unwrap();
        let tie_c = rules.create(draft("c"), 20).await.unwrap();
        let ids: Vec<_> = rules.list().await.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![early.id, tie_a.id, tie_c.id, late.id]);
    }

    #[tokio::test]
    async fn everything_comes_back_after_reopening_a_local_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || async {
            let store: Arc<dyn ObjectStore> =
                Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
            RuleStore::open(store, Path::from("catalog")).await.unwrap()
        };

        let rules = open().await;
        let tachy = rules.create(draft("Tachy"), 10).await.unwrap();
        let brady = rules.create(draft("Brady"), 11).await.unwrap();
        let mut edit = draft("Tachy v2");
        edit.description = Some("tuned after review".into());
        edit.allowed_lateness_ms = Some(2_000);
        rules.update(&tachy.id, edit, 20).await.unwrap();
        rules.set_active(&brady.id, false, 30).await.unwrap();
        let before = rules.list().await;
        drop(rules);

        assert!(tmp
            .path()
            .join(format!("catalog/rules/{}/v000002.json", tachy.id))
            .is_file());
        assert!(tmp
            .path()
            .join(format!("catalog/rules/{}/rule.json", tachy.id))
            .is_file());

        let reopened = open().await;
        assert_eq!(reopened.list().await, before);
        assert_eq!(
            reopened.version(&tachy.id, 1).await,
            Some(tachy.current.clone())
        );
        // Numbering continues where it left off.
        let third = reopened
            .update(&tachy.id, draft("Tachy v3"), 40)
            .await
            .unwrap();
        assert_eq!(third.versions, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn opening_an_empty_location_gives_no_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
        let rules = RuleStore::open(store, Path::default()).await.unwrap();
        assert!(rules.list().await.is_empty());
    }

    #[tokio::test]
    async fn a_version_above_current_is_listed_but_not_current() {
        let (store, rules) = memory_store().await;
        let rule = rules.create(draft("Tachy"), 10).await.unwrap();
        // As if an update wrote v2 and then failed before rule.json.
        let mut orphan = rule.current.clone();
        orphan.version = 2;
        orphan.sql = "SELECT 2".into();
        let path = version_path(&Path::from("ward/rules"), &rule.id, 2);
        store
            .put(&path, serde_json::to_vec(&orphan).unwrap().into())
            .await
            .unwrap();

        let reopened = RuleStore::open(store, Path::from("ward")).await.unwrap();
        let loaded = reopened.get(&rule.id).await.unwrap();
        assert_eq!(loaded.current.version, 1);
        assert_eq!(loaded.versions, vec![1, 2]);
        let next = reopened.update(&rule.id, draft("Tachy"), 20).await.unwrap();
        assert_eq!(next.current.version, 3);
    }

    #[tokio::test]
    async fn versions_without_rule_json_are_ignored() {
        let (store, _) = memory_store().await;
        let version = RuleVersion::from_draft("ghost-0000".into(), 1, draft("Ghost"), 1);
        let path = version_path(&Path::from("ward/rules"), "ghost-0000", 1);
        store
            .put(&path, serde_json::to_vec(&version).unwrap().into())
            .await
            .unwrap();
        let reopened = RuleStore::open(store, Path::from("ward")).await.unwrap();
        assert!(reopened.list().await.is_empty());
    }

    #[tokio::test]
    async fn a_damaged_rule_json_is_rebuilt_from_the_newest_version_and_runs() {
        let (store, rules) = memory_store().await;
        let rule = rules.create(draft("Tachy"), 10).await.unwrap();
        rules.update(&rule.id, draft("Tachy v2"), 20).await.unwrap();
        rules.set_active(&rule.id, false, 30).await.unwrap();
        let meta = meta_path(&Path::from("ward/rules"), &rule.id);
        store.put(&meta, "".into()).await.unwrap();

        let reopened = RuleStore::open(store.clone(), Path::from("ward"))
            .await
            .unwrap();
        let loaded = reopened.get(&rule.id).await.unwrap();
        assert_eq!(loaded.current.version, 2);
        assert!(loaded.active, "a recovered rule runs");
        assert_eq!((loaded.created_at_ms, loaded.updated_at_ms), (10, 20));
        let damaged = reopened.damaged_files();
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].path, meta.to_string());
        assert_eq!(damaged[0].reason, "the file is empty");
        assert_eq!(
            damaged[0].outcome,
            "rule recovered from version 2 and active"
        );

        // rule.json naming another rule is damage of the same kind.
        let mut wrong = serde_json::to_value(&loaded).unwrap();
        wrong["id"] = "someone-else".into();
        wrong["current_version"] = 1.into();
        store
            .put(&meta, serde_json::to_vec(&wrong).unwrap().into())
            .await
            .unwrap();
        let reopened = RuleStore::open(store, Path::from("ward")).await.unwrap();
        assert_eq!(reopened.get(&rule.id).await.unwrap().current.version, 2);
        assert!(reopened.damaged_files()[0]
            .reason
            .contains("names rule 'someone-else'"));
    }

    #[tokio::test]
    async fn a_damaged_current_version_falls_back_and_its_number_is_not_reused() {
        let (store, rules) = memory_store().await;
        let rule = rules.create(draft("Tachy"), 10).await.unwrap();
        rules.update(&rule.id, draft("Tachy v2"), 20).await.unwrap();
        let v2 = version_path(&Path::from("ward/rules"), &rule.id, 2);
        store.put(&v2, "{\"rule_id\": \"tach".into()).await.unwrap();
        let before = damage::damaged_files();

        let reopened = RuleStore::open(store.clone(), Path::from("ward"))
            .await
            .unwrap();
        let loaded = reopened.get(&rule.id).await.unwrap();
        assert_eq!(loaded.current.version, 1);
        assert_eq!(loaded.versions, vec![1]);
        let damaged = reopened.damaged_files();
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].kind, "rule version");
        assert!(
            damaged[0].reason.starts_with("not valid JSON"),
            "{:?}",
            damaged[0]
        );
        assert_eq!(
            damaged[0].outcome,
            "version skipped; the rule runs version 1"
        );
        assert!(damage::damaged_files() > before);

        let next = reopened
            .update(&rule.id, draft("Tachy v3"), 30)
            .await
            .unwrap();
        assert_eq!(next.current.version, 3, "version 2's object still exists");
    }

    #[tokio::test]
    async fn a_rule_without_any_intact_version_is_left_out_and_others_load() {
        let (store, rules) = memory_store().await;
        let broken = rules.create(draft("Broken"), 10).await.unwrap();
        let fine = rules.create(draft("Fine"), 11).await.unwrap();
        let v1 = version_path(&Path::from("ward/rules"), &broken.id, 1);
        store.put(&v1, "not json".into()).await.unwrap();

        let reopened = RuleStore::open(store.clone(), Path::from("ward"))
            .await
            .unwrap();
        assert!(reopened.get(&broken.id).await.is_none());
        assert!(reopened.get(&fine.id).await.is_some());
        // Only the version is damaged: rule.json names it, and is fine.
        let damaged = reopened.damaged_files();
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert_eq!(damaged[0].kind, "rule version");
        assert_eq!(damaged[0].outcome, "rule left out: no intact version");

        // rule.json pointing at a version that does not exist.
        let meta = meta_path(&Path::from("ward/rules"), &fine.id);
        let bad = RuleMeta {
            id: fine.id.clone(),
            active: true,
            current_version: 7,
            created_at_ms: 10,
            updated_at_ms: 10,
            deactivation: None,
        };
        store
            .put(&meta, serde_json::to_vec(&bad).unwrap().into())
            .await
            .unwrap();
        let reopened = RuleStore::open(store, Path::from("ward")).await.unwrap();
        assert_eq!(reopened.get(&fine.id).await.unwrap().current.version, 1);
        let damaged = reopened.damaged_files();
        assert!(
            damaged
                .iter()
                .any(|d| d.reason == "current version 7 is missing"
                    && d.outcome == "the rule runs version 1"),
            "{damaged:?}"
        );
    }
}
