//! Streams, buckets and the records the master keeps in them.
//!
//! All master state lives in JetStream, never in process memory, so master
//! replicas are interchangeable and a `kill -9` loses nothing. Records that
//! several replicas may change at once are updated with compare-and-set on
//! the KV revision ([`Store::modify`]), in one retry loop
//! ([`Store::compare_and_set`]) that every such writer shares.
//!
//! Failures are [`StoreError`]s, told apart by kind (a lost compare-and-set
//! is a [`StoreError::Conflict`], never a message to match); the API turns
//! them into wire errors at its boundary.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use muster_shared::job::{JobDef, JobSpec};
use muster_shared::msg::{InstrOutcome, Instruction, PollReport};
use muster_shared::name::{GroupName, JobName, TargetName};
use muster_shared::streams::{self, ConsumerSpec, Retention, StoreOptions, StreamSpec};
use muster_shared::subject::{Bucket, Subjects};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A target in the registry (`muster-targets`, key = name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub name: TargetName,
    #[serde(default)]
    pub location: String,
    pub enlisted_at: DateTime<Utc>,
    pub poll_interval_secs: u64,
    /// The agent process that enlisted last, if it enlisted itself.
    #[serde(default)]
    pub instance: Option<Uuid>,
    /// The last instruction failure, until a later poll applies cleanly.
    #[serde(default)]
    pub blocked: Option<String>,
    /// The interval an operator set with `set-poll`; `None` = the agent's
    /// own (what the manifest's `poll_interval_secs` carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_set_secs: Option<u64>,
    /// When it was told to defect; its manifest says `defected` from then
    /// on, until an enlist clears this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defected_at: Option<DateTime<Utc>>,
    /// The agent's x25519 public key, from its own enlist; `None` for an
    /// older agent, or one enlisted only by an operator. Secret parameters
    /// are sealed for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xkey: Option<String>,
}

impl TargetRecord {
    /// A target enlisted `now`, with nothing set by an operator yet.
    pub fn new(name: TargetName, poll_interval_secs: u64, now: DateTime<Utc>) -> Self {
        Self {
            name,
            location: String::new(),
            enlisted_at: now,
            poll_interval_secs,
            instance: None,
            blocked: None,
            poll_set_secs: None,
            defected_at: None,
            xkey: None,
        }
    }
}

/// A job and where it is assigned (`muster-jobs`, key = job name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub revision: u64,
    pub spec: JobSpec,
    #[serde(default)]
    pub targets: BTreeSet<TargetName>,
    #[serde(default)]
    pub groups: BTreeSet<GroupName>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Tombstone: the job is being deleted. It reaches no target, and its
    /// record goes once every target concerned was republished and its
    /// documents purged (reconcile finishes what a killed master left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// A job created `now`, at revision 1, assigned nowhere.
    pub fn new(id: Uuid, spec: JobSpec, now: DateTime<Utc>) -> Self {
        Self {
            id,
            revision: 1,
            spec,
            targets: BTreeSet::new(),
            groups: BTreeSet::new(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
        }
    }

    /// The definition as targets receive it.
    pub fn def(&self) -> JobDef {
        JobDef { id: self.id, revision: self.revision, spec: self.spec.clone() }
    }
}

/// A target group (`muster-groups`, key = group name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: GroupName,
    #[serde(default)]
    pub members: BTreeSet<TargetName>,
    pub created_at: DateTime<Utc>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Other writers kept winning the compare-and-set on `key`.
    #[error("'{key}' kept changing under us; try again")]
    Conflict { key: String },
    /// A record the caller named does not exist.
    #[error("{0}")]
    NotFound(Missing),
    /// A stored record that does not decode; `record` says what the caller
    /// asked for, when it named one.
    #[error("record '{key}' is corrupt: {source}")]
    Corrupt {
        key: String,
        record: Option<Missing>,
        #[source]
        source: serde_json::Error,
    },
    /// NATS or JetStream failed; `what` says what was being done.
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
}

impl StoreError {
    /// Names the record a [`StoreError::Corrupt`] is about; other errors
    /// are returned as they are.
    #[must_use]
    pub fn about(self, named: Missing) -> StoreError {
        match self {
            StoreError::Corrupt { key, source, .. } => StoreError::Corrupt { key, record: Some(named), source },
            e => e,
        }
    }

    /// A NATS failure while doing `what`.
    pub fn nats(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Nats { what: what.into(), source: Box::new(source) }
    }
}

/// The record a [`StoreError::NotFound`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Target(TargetName),
    Job(JobName),
    Group(GroupName),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Target(t) => write!(f, "target '{t}' is not enlisted"),
            Missing::Job(j) => write!(f, "no job is named '{j}'"),
            Missing::Group(g) => write!(f, "no group is named '{g}'"),
        }
    }
}

/// What a key holds as far as a writer knows: its value and KV revision, or
/// `None` when it holds nothing.
pub type Current<T> = Option<(T, u64)>;

/// What a compare-and-set step decides to do with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// Write this value.
    Put(T),
    /// Delete the key (nothing to do when it holds nothing).
    Delete,
    /// Leave the key as it is.
    Keep,
}

/// How many times a compare-and-set is tried before it gives up with
/// [`StoreError::Conflict`].
const CAS_ATTEMPTS: usize = 32;

/// The download list's rows are wire types: `musterctl instructions` shows them as stored.
pub use muster_shared::api::{InstrRow, InstrStatus};

/// The download-list row of a posted instruction, merged with the row
/// already there. A row has two writers, and either may write first (a
/// target can poll and report before the master records what it posted):
/// the master knows what was posted (op, job, when), the target what became
/// of it (status, when applied, error).
pub fn posted_row(i: &Instruction, old: Option<InstrRow>) -> InstrRow {
    let posted = InstrRow {
        id: i.id,
        target: i.target.clone(),
        op: i.op.name().to_owned(),
        job: i.op.job_name().cloned(),
        posted_at: i.posted_at,
        status: InstrStatus::Pending,
        applied_at: None,
        error: None,
        revision: None,
    };
    match old {
        Some(reported) => InstrRow { status: reported.status, applied_at: reported.applied_at, error: reported.error, ..posted },
        None => posted,
    }
}

/// The download-list row after a target reported on one instruction,
/// merged with the row already there (see [`posted_row`]). Until the
/// master's row arrives, the post time shown is the apply time.
pub fn reported_row(target: &TargetName, o: &InstrOutcome, old: Option<InstrRow>) -> InstrRow {
    let mut row = old.unwrap_or_else(|| InstrRow {
        id: o.id,
        target: target.clone(),
        op: o.op.as_str().to_owned(),
        job: None,
        posted_at: o.applied_at,
        status: InstrStatus::Pending,
        applied_at: None,
        error: None,
        revision: None,
    });
    row.status = if o.error.is_some() { InstrStatus::Failed } else { InstrStatus::Applied };
    row.applied_at = Some(o.applied_at);
    row.error.clone_from(&o.error);
    row
}

/// A poll report with the server's receive time (immune to target clock skew).
#[derive(Debug, Clone)]
pub struct LastPoll {
    pub report: PollReport,
    pub received_at: DateTime<Utc>,
}

/// Handles to every stream and bucket, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub js: Context,
    pub subjects: Subjects,
    pub options: StoreOptions,
    pub targets: kv::Store,
    pub jobs: kv::Store,
    pub groups: kv::Store,
    pub jobstatus: kv::Store,
    pub instructions: kv::Store,
    /// The run index (`muster-runs`, key = run id), for `run show`.
    pub runs: kv::Store,
    /// `MUSTER_DESIRED`, for Direct Gets and compare-and-set publishes.
    pub desired: stream::Stream<()>,
}

pub(crate) fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: match spec.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        max_age: spec.max_age,
        max_messages_per_subject: spec.max_msgs_per_subject,
        max_bytes: spec.max_bytes,
        discard: if spec.discard_new { stream::DiscardPolicy::New } else { stream::DiscardPolicy::Old },
        duplicate_window: spec.duplicate_window,
        allow_direct: spec.allow_direct,
        max_message_size: spec.max_msg_size,
        max_consumers: spec.max_consumers,
        num_replicas: spec.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The `async-nats` form of a consumer spec.
pub fn consumer_config(spec: &ConsumerSpec) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(spec.durable_name.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending.unwrap_or_default(),
        num_replicas: spec.replicas,
        ..Default::default()
    }
}

impl Store {
    /// Creates or updates every stream and bucket. Idempotent: a second master
    /// starting beside the first changes nothing.
    ///
    /// # Errors
    /// When JetStream refuses a stream or bucket (e.g. JetStream disabled).
    pub async fn open(js: &Context, subjects: &Subjects, options: &StoreOptions) -> anyhow::Result<Store> {
        // Concurrently: a master (re)starting is serving sooner.
        futures::future::try_join_all(
            [
                streams::desired_stream(subjects, options),
                streams::results_stream(subjects, options),
                streams::polls_stream(subjects, options),
                streams::output_stream(subjects, options),
                streams::kept_stream(subjects, options),
                streams::events_stream(subjects, options),
            ]
            .map(|spec| async move {
                js.create_or_update_stream(stream_config(&spec)).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", spec.name))
            }),
        )
        .await?;
        let results = js.get_stream(subjects.results_stream()).await?;
        // Create or update: a new version's settings (e.g. ack wait) apply.
        results
            .create_consumer(consumer_config(&streams::master_consumer(subjects, options)))
            .await
            .map_err(|e| anyhow::anyhow!("consumer {}: {e}", streams::MASTER_CONSUMER))?;

        let bucket = |b: Bucket| {
            let js = js.clone();
            let name = subjects.bucket(b);
            let options = options.clone();
            async move {
                let config = kv::Config {
                    bucket: name.clone(),
                    history: 1,
                    num_replicas: options.replicas,
                    max_value_size: muster_shared::MAX_BODY_BYTES as i32,
                    // The download list and the run index age out with history.
                    max_age: match b {
                        Bucket::Instructions | Bucket::Runs => options.history_retention,
                        _ => Duration::ZERO,
                    },
                    ..Default::default()
                };
                match js.get_key_value(&name).await {
                    Ok(store) => Ok(store),
                    Err(_) => js.create_key_value(config).await.map_err(|e| anyhow::anyhow!("bucket {name}: {e}")),
                }
            }
        };
        let (targets, jobs, groups, jobstatus, instructions, runs) = tokio::try_join!(
            bucket(Bucket::Targets),
            bucket(Bucket::Jobs),
            bucket(Bucket::Groups),
            bucket(Bucket::JobStatus),
            bucket(Bucket::Instructions),
            bucket(Bucket::Runs),
        )?;
        Ok(Store {
            js: js.clone(),
            subjects: subjects.clone(),
            options: options.clone(),
            targets,
            jobs,
            groups,
            jobstatus,
            instructions,
            runs,
            desired: js
                .get_stream_no_info(subjects.desired_stream())
                .await
                .map_err(|e| anyhow::anyhow!("stream {}: {e}", subjects.desired_stream()))?,
        })
    }

    // ---- generic KV helpers ---------------------------------------------------

    /// Reads and decodes one record, with its revision.
    pub async fn read<T: DeserializeOwned>(kv: &kv::Store, key: &str) -> Result<Current<T>, StoreError> {
        let entry = kv.entry(key).await.map_err(|e| StoreError::nats("reading KV", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&e.value).map_err(|source| StoreError::Corrupt {
                    key: key.to_owned(),
                    record: None,
                    source,
                })?;
                Ok(Some((value, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Every record of a bucket, decoded; corrupt ones are logged and skipped.
    ///
    /// One ordered consumer reads the latest value of every key in a single
    /// pass (not a key listing followed by one get per key), and is deleted
    /// right after, so frequent scans do not leave consumers behind.
    pub async fn scan<T: DeserializeOwned>(kv: &kv::Store) -> Result<Vec<T>, StoreError> {
        Ok(Self::scan_entries(kv, "").await?.into_iter().map(|(_, v)| v).collect())
    }

    /// Like [`Store::scan`], with each record's key, for the keys that start
    /// with `key_prefix` (whole tokens, e.g. `web01.`; empty for all).
    pub async fn scan_entries<T: DeserializeOwned>(kv: &kv::Store, key_prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        let found = Self::scan_filtered(kv, format!("{}{key_prefix}>", kv.prefix)).await?;
        Ok(found.into_iter().map(|(key, value, _)| (key, value)).collect())
    }

    /// Every record under `filter` (a subject of the bucket's stream), with
    /// its key and revision, read by one ordered consumer (deliver last per
    /// subject).
    ///
    /// One filter per consumer: a consumer with many filters
    /// (`filter_subjects`) reading last-per-subject made nats-server 2.15
    /// intersect its whole subject tree with the filters for each message
    /// (41% of its CPU when it read a batch of targets' rows that way), so
    /// several targets' rows are read by several of these, concurrently.
    pub async fn scan_filtered<T: DeserializeOwned>(kv: &kv::Store, filter: String) -> Result<Vec<(String, T, u64)>, StoreError> {
        let found = Self::scan_checked::<T>(kv, filter).await?;
        Ok(found
            .into_iter()
            .filter_map(|(key, value, revision)| match value {
                Ok(v) => Some((key, v, revision)),
                Err(e) => {
                    tracing::warn!(key, error = %e, "skipping unreadable record");
                    None
                }
            })
            .collect())
    }

    /// Every record of a bucket, each decoded or with why it does not
    /// decode: what listings show, so that a corrupt record is seen (and
    /// can be deleted) instead of skipped.
    pub async fn scan_all_checked<T: DeserializeOwned>(kv: &kv::Store) -> Result<Vec<(String, Result<T, String>)>, StoreError> {
        let found = Self::scan_checked::<T>(kv, format!("{}>", kv.prefix)).await?;
        Ok(found.into_iter().map(|(key, value, _)| (key, value.map_err(|e| e.to_string()))).collect())
    }

    /// [`Store::scan_filtered`], keeping records that do not decode.
    async fn scan_checked<T: DeserializeOwned>(
        kv: &kv::Store,
        filter: String,
    ) -> Result<Vec<(String, Result<T, serde_json::Error>, u64)>, StoreError> {
        const READING: &str = "reading a bucket";
        // An empty bucket (no groups yet, say) costs one info request, not a
        // consumer created and deleted.
        let mut stream = kv.stream.clone();
        if stream.info().await.map_err(|e| StoreError::nats(READING, e))?.state.messages == 0 {
            return Ok(Vec::new());
        }
        let consumer = kv
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::nats(READING, e))?;
        let name = consumer.cached_info().name.clone();
        let mut out = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(|e| StoreError::nats(READING, e))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| StoreError::nats(READING, e))?;
                let (pending, revision) = m.info().map(|i| (i.pending, i.stream_sequence)).unwrap_or((0, 0));
                let key = m.subject.as_str().strip_prefix(kv.prefix.as_str()).unwrap_or_default().to_owned();
                let deleted = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                if !deleted {
                    out.push((key, serde_json::from_slice(&m.payload), revision));
                }
                if pending == 0 {
                    break;
                }
            }
        }
        kv.stream.delete_consumer(&name).await.ok();
        Ok(out)
    }

    /// Read-modify-write with compare-and-set, retried on conflict.
    /// `f` gets the current value (if any) and returns the new one, or `None`
    /// to delete. Returns what was written.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when other writers kept winning; NATS errors.
    pub async fn modify<T, F>(kv: &kv::Store, key: &str, mut f: F) -> Result<Option<T>, StoreError>
    where
        T: Clone + Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        Self::try_modify(kv, key, |current| Ok::<_, StoreError>(f(current))).await
    }

    /// [`Store::modify`] where `f` may refuse the change: its error aborts
    /// the write and is returned as it is.
    ///
    /// # Errors
    /// `f`'s error, or a [`StoreError`] converted into `E`.
    pub async fn try_modify<T, E, F>(kv: &kv::Store, key: &str, mut f: F) -> Result<Option<T>, E>
    where
        T: Clone + Serialize + DeserializeOwned,
        E: From<StoreError>,
        F: FnMut(Option<T>) -> Result<Option<T>, E>,
    {
        let mut current = Self::read::<T>(kv, key).await?;
        Self::compare_and_set::<T, E, _>(kv, key, &mut current, |value| {
            Ok(match f(value.cloned())? {
                Some(next) => Change::Put(next),
                None => Change::Delete,
            })
        })
        .await?;
        Ok(current.map(|(value, _)| value))
    }

    /// The one compare-and-set loop: `decide` gets what `current` says the
    /// key holds and chooses a [`Change`], which is written only if the key
    /// is still at `current`'s revision. When another writer got there
    /// first, the key is read again and `decide` asked again.
    ///
    /// `current` is the caller's knowledge of the key (read, or cached from
    /// an earlier write: a right guess costs no read); it is kept up to date,
    /// and holds what the key holds once this returns `Ok`.
    ///
    /// # Errors
    /// `decide`'s error; [`StoreError::Conflict`] after 32 lost races; NATS
    /// errors.
    pub async fn compare_and_set<T, E, F>(kv: &kv::Store, key: &str, current: &mut Current<T>, mut decide: F) -> Result<(), E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError>,
        F: FnMut(Option<&T>) -> Result<Change<T>, E>,
    {
        let writing = || format!("writing '{key}'");
        for _ in 0..CAS_ATTEMPTS {
            let revision = current.as_ref().map(|(_, r)| *r);
            match (decide(current.as_ref().map(|(v, _)| v))?, revision) {
                (Change::Keep, _) | (Change::Delete, None) => return Ok(()),
                (Change::Put(value), revision) => {
                    let body = bytes::Bytes::from(serde_json::to_vec(&value).expect("records serialise"));
                    let written = match revision {
                        Some(revision) => match kv.update(key, body, revision).await {
                            Ok(revision) => Some(revision),
                            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                            Err(e) => return Err(StoreError::nats(writing(), e).into()),
                        },
                        None => match kv.create(key, body).await {
                            Ok(revision) => Some(revision),
                            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                            Err(e) => return Err(StoreError::nats(writing(), e).into()),
                        },
                    };
                    if let Some(revision) = written {
                        *current = Some((value, revision));
                        return Ok(());
                    }
                }
                (Change::Delete, Some(revision)) => match kv.delete_expect_revision(key, Some(revision)).await {
                    Ok(()) => {
                        *current = None;
                        return Ok(());
                    }
                    Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(StoreError::nats(writing(), e).into()),
                },
            }
            // Someone else wrote in between: read again and decide again.
            *current = Self::read(kv, key).await?;
        }
        Err(StoreError::Conflict { key: key.to_owned() }.into())
    }

    /// Writes `value` whatever the key holds.
    ///
    /// # Errors
    /// NATS errors.
    pub async fn put<T: Serialize>(kv: &kv::Store, key: &str, value: &T) -> Result<(), StoreError> {
        kv.put(key, serde_json::to_vec(value).expect("serialise").into())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::nats(format!("writing '{key}'"), e))
    }

    /// Deletes a key (a delete marker: readers see nothing there).
    ///
    /// # Errors
    /// NATS errors.
    pub async fn delete(kv: &kv::Store, key: &str) -> Result<(), StoreError> {
        kv.delete(key).await.map_err(|e| StoreError::nats(format!("deleting '{key}'"), e))
    }

    // ---- targets -----------------------------------------------------------------

    /// An enlisted target's record.
    ///
    /// # Errors
    /// [`Missing::Target`] when it is not enlisted.
    pub async fn target(&self, name: &TargetName) -> Result<TargetRecord, StoreError> {
        Self::read(&self.targets, name.as_str())
            .await
            .map_err(|e| e.about(Missing::Target(name.clone())))?
            .map(|(t, _)| t)
            .ok_or_else(|| StoreError::NotFound(Missing::Target(name.clone())))
    }

    /// Fails with [`Missing::Target`] for the first name that is not enlisted.
    pub async fn require_enlisted(&self, names: &[TargetName]) -> Result<(), StoreError> {
        // Checked concurrently (thousands of targets in one assign), and the
        // first missing name in the caller's order is the one reported.
        let checks: Vec<Result<TargetRecord, StoreError>> = futures::stream::iter(names.to_vec())
            .map(|n| {
                let store = self.clone();
                async move { store.target(&n).await }
            })
            .buffered(256)
            .collect()
            .await;
        checks.into_iter().try_for_each(|c| c.map(|_| ()))
    }

    pub async fn all_targets(&self) -> Result<Vec<TargetRecord>, StoreError> {
        let mut all: Vec<TargetRecord> = Self::scan(&self.targets).await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Every download-list row, of one target or all, in posting order.
    pub async fn instr_rows(&self, target: Option<&TargetName>) -> Result<Vec<InstrRow>, StoreError> {
        let prefix = target.map(|t| format!("{t}.")).unwrap_or_default();
        let mut out: Vec<InstrRow> = Self::scan_entries(&self.instructions, &prefix).await?.into_iter().map(|(_, r)| r).collect();
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// A target's download-list rows with their revisions, in posting order.
    pub async fn instr_rows_with_revisions(&self, target: &TargetName) -> Result<Vec<(InstrRow, u64)>, StoreError> {
        let filter = format!("{}{target}.>", self.instructions.prefix);
        let mut rows: Vec<(InstrRow, u64)> = Self::scan_filtered(&self.instructions, filter)
            .await?
            .into_iter()
            .map(|(_, row, revision)| (row, revision))
            .collect();
        rows.sort_by_key(|(r, _)| r.id);
        Ok(rows)
    }

    /// Marks a target's pending download-list rows `dropped` (forced
    /// defection: nobody will read them). Returns how many were dropped.
    pub async fn drop_pending(&self, target: &TargetName) -> Result<u64, StoreError> {
        let mut dropped = 0;
        for row in self.instr_rows(Some(target)).await? {
            if row.status != InstrStatus::Pending {
                continue;
            }
            Self::modify(&self.instructions, &Self::instr_key(target, row.id), |old: Option<InstrRow>| {
                // A row the target reported on meanwhile keeps its outcome.
                old.map(|mut r| {
                    if r.status == InstrStatus::Pending {
                        r.status = InstrStatus::Dropped;
                    }
                    r
                })
            })
            .await?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// A target's published manifest, read by Direct Get (`None`: none, or
    /// one that does not decode).
    ///
    /// # Errors
    /// NATS errors reading the stream.
    pub async fn manifest(&self, target: &TargetName) -> Result<Option<muster_shared::desired::Manifest>, StoreError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self.desired.direct_get_last_for_subject(self.subjects.state(target)).await {
            Ok(m) => Ok(muster_shared::msg::decode(&m.payload).ok()),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::nats(format!("reading the manifest of '{target}'"), e)),
        }
    }

    /// Removes every job document of a target from `MUSTER_DESIRED`.
    pub async fn purge_job_docs(&self, target: &TargetName) -> Result<(), StoreError> {
        self.desired
            .purge()
            .filter(self.subjects.job_docs_of(target))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::nats(format!("purging the job documents of '{target}'"), e))
    }

    /// Removes a job's documents from every target (`MUSTER_DESIRED`).
    pub async fn purge_job_docs_everywhere(&self, job_id: Uuid) -> Result<(), StoreError> {
        self.desired
            .purge()
            .filter(self.subjects.job_doc_everywhere(job_id))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::nats(format!("purging the documents of job {job_id}"), e))
    }

    /// The latest poll report of every target that ever polled, from one
    /// read of the polls stream (last message per subject), for lists of
    /// many targets.
    ///
    /// # Errors
    /// NATS errors reading the stream.
    pub async fn last_polls(&self) -> Result<HashMap<TargetName, LastPoll>, StoreError> {
        const READING: &str = "reading the poll reports";
        let stream = self.js.get_stream_no_info(self.subjects.polls_stream()).await.map_err(|e| StoreError::nats(READING, e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subjects.poll_all(),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::nats(READING, e))?;
        let name = consumer.cached_info().name.clone();
        let mut out = HashMap::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(|e| StoreError::nats(READING, e))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| StoreError::nats(READING, e))?;
                let Ok(info) = m.info() else { break };
                let (pending, published) = (info.pending, info.published);
                let on_subject = self.subjects.target_of(m.subject.as_str()).unwrap_or_default();
                // The subject is the proof of who sent it; the body only a claim.
                if let Some(report) =
                    serde_json::from_slice::<PollReport>(&m.payload).ok().filter(|r| r.target.as_str() == on_subject)
                {
                    let received_at = DateTime::from_timestamp_nanos(published.unix_timestamp_nanos() as i64);
                    out.insert(report.target.clone(), LastPoll { report, received_at });
                }
                if pending == 0 {
                    break;
                }
            }
        }
        // Gone now rather than at the server's inactivity timeout.
        stream.delete_consumer(&name).await.ok();
        Ok(out)
    }

    /// The latest poll report of a target, if it ever polled.
    pub async fn last_poll(&self, name: &TargetName) -> Option<LastPoll> {
        let stream = self.js.get_stream_no_info(self.subjects.polls_stream()).await.ok()?;
        let msg = stream.direct_get_last_for_subject(self.subjects.poll(name)).await.ok()?;
        let report: PollReport = serde_json::from_slice(&msg.payload).ok()?;
        let received_at = DateTime::from_timestamp_nanos(msg.time.unix_timestamp_nanos() as i64);
        Some(LastPoll { report, received_at })
    }

    // ---- jobs and groups -------------------------------------------------------------

    /// A job's record, with its KV revision.
    ///
    /// # Errors
    /// [`Missing::Job`] when there is none.
    pub async fn job(&self, name: &JobName) -> Result<(JobRecord, u64), StoreError> {
        Self::read::<JobRecord>(&self.jobs, name.as_str())
            .await
            .map_err(|e| e.about(Missing::Job(name.clone())))?
            .filter(|(j, _)| j.deleted_at.is_none())
            .ok_or_else(|| StoreError::NotFound(Missing::Job(name.clone())))
    }

    /// Deletes a job if it is still at `revision`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it changed since.
    pub async fn delete_job(&self, name: &JobName, revision: u64) -> Result<(), StoreError> {
        match self.jobs.delete_expect_revision(name.as_str(), Some(revision)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Err(StoreError::Conflict { key: name.to_string() }),
            Err(e) => Err(StoreError::nats(format!("deleting job '{name}'"), e)),
        }
    }

    /// Every job, in name order; jobs being deleted (tombstones) are not
    /// listed.
    pub async fn all_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut all: Vec<JobRecord> =
            Self::scan::<JobRecord>(&self.jobs).await?.into_iter().filter(|j| j.deleted_at.is_none()).collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(all)
    }

    /// A group's record.
    ///
    /// # Errors
    /// [`Missing::Group`] when there is none.
    pub async fn group(&self, name: &GroupName) -> Result<GroupRecord, StoreError> {
        Self::read(&self.groups, name.as_str())
            .await
            .map_err(|e| e.about(Missing::Group(name.clone())))?
            .map(|(g, _)| g)
            .ok_or_else(|| StoreError::NotFound(Missing::Group(name.clone())))
    }

    pub async fn all_groups(&self) -> Result<HashMap<GroupName, GroupRecord>, StoreError> {
        Ok(Self::scan::<GroupRecord>(&self.groups).await?.into_iter().map(|g| (g.name.clone(), g)).collect())
    }

    /// Every target a job reaches: its own targets plus its groups' members.
    pub fn concerned(job: &JobRecord, groups: &HashMap<GroupName, GroupRecord>) -> BTreeSet<TargetName> {
        let mut out = job.targets.clone();
        for g in &job.groups {
            if let Some(group) = groups.get(g) {
                out.extend(group.members.iter().cloned());
            }
        }
        out
    }

    /// The `muster-jobstatus` key of a job on a target.
    pub fn status_key(job_id: Uuid, target: &TargetName) -> String {
        format!("{job_id}.{target}")
    }

    /// The `muster-instructions` key of an instruction.
    pub fn instr_key(target: &TargetName, id: Uuid) -> String {
        format!("{target}.{id}")
    }
}

/// Re-exported for callers that build their own JetStream context.
pub use jetstream::new as jetstream_context;

/// A store on a real nats-server, for unit tests that need JetStream.
#[cfg(test)]
pub(crate) mod testing {
    use muster_shared::streams::StoreOptions;
    use muster_shared::subject::Subjects;
    use muster_tests::NatsServer;

    use super::Store;

    /// A store on its own nats-server, killed (and its files removed) on drop.
    #[derive(Debug)]
    pub(crate) struct TestStore {
        pub store: Store,
        server: NatsServer,
        _dir: tempfile::TempDir,
    }

    impl TestStore {
        /// The server's URL, for a second client (another master replica).
        pub fn url(&self) -> String {
            self.server.url()
        }
    }

    /// Starts a nats-server on a free port with a temporary store, and opens
    /// Muster's streams and buckets on it.
    pub(crate) async fn open() -> TestStore {
        let (dir, server) = tokio::task::spawn_blocking(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let server = NatsServer::start(dir.path());
            (dir, server)
        })
        .await
        .expect("starting nats-server");
        let client = async_nats::connect(server.url()).await.expect("connecting to the test server");
        let js = async_nats::jetstream::new(client);
        let store = Store::open(&js, &Subjects::default(), &StoreOptions::default()).await.expect("opening the store");
        TestStore { store, server, _dir: dir }
    }

    /// Writes `value` at `key` of `bucket` from another connection, as
    /// another master replica would, and returns once it is stored. Blocks:
    /// it is meant to be called between a read and a compare-and-set.
    pub(crate) fn write_elsewhere(url: &str, bucket: &str, key: &str, value: &serde_json::Value) {
        let body = serde_json::to_vec(value).expect("JSON");
        let (url, bucket, key) = (url.to_owned(), bucket.to_owned(), key.to_owned());
        std::thread::spawn(move || {
            muster_tests::block_on(async move {
                let client = async_nats::connect(url).await.expect("second client");
                let kv = async_nats::jetstream::new(client).get_key_value(bucket).await.expect("bucket");
                kv.put(key, body.into()).await.expect("the other writer's put");
            });
        })
        .join()
        .expect("the other writer");
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use muster_shared::msg::{InstructionKind, InstructionOp};
    use muster_shared::subject::Bucket;
    use serde_json::{json, Value};

    use super::testing::{open, write_elsewhere};
    use super::*;

    fn bucket(store: &Store) -> String {
        store.subjects.bucket(Bucket::JobStatus)
    }

    #[tokio::test]
    async fn modify_retries_after_a_conflicting_write() {
        let t = open().await;
        let kv = &t.store.jobstatus;
        Store::put(kv, "k", &json!(["first"])).await.unwrap();
        let mut seen = Vec::new();
        let written = Store::modify(kv, "k", |old: Option<Value>| {
            seen.push(old.clone());
            if seen.len() == 1 {
                // Another replica writes between this read and this write.
                write_elsewhere(&t.url(), &bucket(&t.store), "k", &json!(["other"]));
            }
            let mut list = old.unwrap_or_else(|| json!([]));
            list.as_array_mut().unwrap().push(json!("mine"));
            Some(list)
        })
        .await
        .unwrap();
        assert_eq!(seen, [Some(json!(["first"])), Some(json!(["other"]))], "decided again on the other write");
        assert_eq!(written, Some(json!(["other", "mine"])));
        assert_eq!(Store::read::<Value>(kv, "k").await.unwrap().map(|(v, _)| v), written, "nothing was lost");
    }

    #[tokio::test]
    async fn modify_creates_once_when_another_writer_creates_first() {
        let t = open().await;
        let kv = &t.store.jobstatus;
        let mut calls = 0;
        let written = Store::modify(kv, "new", |old: Option<Value>| {
            calls += 1;
            if calls == 1 {
                assert_eq!(old, None);
                write_elsewhere(&t.url(), &bucket(&t.store), "new", &json!(1));
            }
            Some(json!(old.and_then(|v| v.as_i64()).unwrap_or(0) + 10))
        })
        .await
        .unwrap();
        assert_eq!((calls, written), (2, Some(json!(11))));
    }

    #[tokio::test]
    async fn modify_gives_up_with_a_conflict_when_every_write_loses() {
        let t = open().await;
        let kv = &t.store.jobstatus;
        Store::put(kv, "hot", &json!(0)).await.unwrap();
        let mut calls = 0;
        let result = Store::modify(kv, "hot", |_: Option<Value>| {
            calls += 1;
            write_elsewhere(&t.url(), &bucket(&t.store), "hot", &json!(calls));
            Some(json!("mine"))
        })
        .await;
        assert!(matches!(result, Err(StoreError::Conflict { ref key }) if key == "hot"), "{result:?}");
        assert_eq!(calls, CAS_ATTEMPTS);
    }

    #[tokio::test]
    async fn try_modify_returns_the_refusal_and_writes_nothing() {
        let t = open().await;
        let kv = &t.store.jobstatus;
        Store::put(kv, "k", &json!("kept")).await.unwrap();
        let refused = Store::try_modify(kv, "k", |_: Option<Value>| Err(Refused("no".to_owned()))).await;
        assert_eq!(refused, Err(Refused("no".to_owned())));
        assert_eq!(Store::read::<Value>(kv, "k").await.unwrap().map(|(v, _)| v), Some(json!("kept")));
        // `None` deletes.
        assert_eq!(Store::modify(kv, "k", |_: Option<Value>| None).await.unwrap(), None);
        assert_eq!(Store::read::<Value>(kv, "k").await.unwrap(), None);
    }

    /// An error type of a caller's own, as the API's is.
    #[derive(Debug, PartialEq)]
    struct Refused(String);

    impl From<StoreError> for Refused {
        fn from(e: StoreError) -> Self {
            Refused(e.to_string())
        }
    }

    #[tokio::test]
    async fn compare_and_set_from_a_stale_revision_reads_again() {
        let t = open().await;
        let kv = &t.store.jobstatus;
        let first = kv.put("k", serde_json::to_vec(&json!("a")).unwrap().into()).await.unwrap();
        Store::put(kv, "k", &json!("b")).await.unwrap();
        // What a cache would hold: the value before the other write.
        let mut current: Current<Value> = Some((json!("a"), first));
        let mut seen = Vec::new();
        Store::compare_and_set::<_, StoreError, _>(kv, "k", &mut current, |have| {
            seen.push(have.cloned());
            Ok(Change::Put(json!(format!("{}!", have.and_then(Value::as_str).unwrap_or_default()))))
        })
        .await
        .unwrap();
        assert_eq!(seen, [Some(json!("a")), Some(json!("b"))]);
        let stored = Store::read::<Value>(kv, "k").await.unwrap();
        assert_eq!(stored, current, "the cache holds what was written, at its revision");
        assert_eq!(stored.map(|(v, _)| v), Some(json!("b!")));

        // Keep writes nothing: the revision stays.
        let before = current.clone();
        Store::compare_and_set::<_, StoreError, _>(kv, "k", &mut current, |_| Ok(Change::Keep)).await.unwrap();
        assert_eq!(current, before);
        assert_eq!(Store::read::<Value>(kv, "k").await.unwrap(), before);
    }

    #[tokio::test]
    async fn missing_records_are_told_apart_by_kind() {
        let t = open().await;
        let web01 = TargetName::new("web01").unwrap();
        assert!(matches!(t.store.target(&web01).await, Err(StoreError::NotFound(Missing::Target(ref n))) if *n == web01));
        let job = JobName::new("backup").unwrap();
        assert!(matches!(t.store.job(&job).await, Err(StoreError::NotFound(Missing::Job(_)))));
        assert!(matches!(t.store.group(&GroupName::new("web").unwrap()).await, Err(StoreError::NotFound(Missing::Group(_)))));
    }

    #[tokio::test]
    async fn deleting_a_job_that_changed_is_a_conflict() {
        let t = open().await;
        let name = JobName::new("backup").unwrap();
        let spec = JobSpec::from_commands(name.clone(), &["true".to_owned()]);
        let record = JobRecord::new(Uuid::new_v4(), spec, Utc::now());
        Store::put(&t.store.jobs, name.as_str(), &record).await.unwrap();
        let (_, stale) = t.store.job(&name).await.unwrap();
        Store::put(&t.store.jobs, name.as_str(), &record).await.unwrap();
        assert!(matches!(t.store.delete_job(&name, stale).await, Err(StoreError::Conflict { .. })));
        let (_, fresh) = t.store.job(&name).await.unwrap();
        t.store.delete_job(&name, fresh).await.unwrap();
        assert!(matches!(t.store.job(&name).await, Err(StoreError::NotFound(_))));
    }

    fn start(target: &TargetName) -> Instruction {
        let op = InstructionOp::StartJob { job_id: Uuid::nil(), job: JobName::new("backup").unwrap(), run_id: Uuid::now_v7() };
        Instruction { v: 1, id: Uuid::now_v7(), target: target.clone(), posted_at: Utc::now(), op }
    }

    #[test]
    fn a_download_list_row_merges_both_writers_in_either_order() {
        let target = TargetName::new("web01").unwrap();
        let i = start(&target);
        let applied_at = i.posted_at + Duration::seconds(5);
        let applied = InstrOutcome { id: i.id, op: InstructionKind::StartJob, applied_at, error: None };
        let expected = InstrRow {
            id: i.id,
            target: target.clone(),
            op: "start_job".into(),
            job: Some(JobName::new("backup").unwrap()),
            posted_at: i.posted_at,
            status: InstrStatus::Applied,
            applied_at: Some(applied.applied_at),
            error: None,
            revision: None,
        };
        let master_first = reported_row(&target, &applied, Some(posted_row(&i, None)));
        let target_first = posted_row(&i, Some(reported_row(&target, &applied, None)));
        assert_eq!(master_first, expected);
        assert_eq!(target_first, expected);
        assert_eq!(posted_row(&i, None).status, InstrStatus::Pending);
    }

    #[test]
    fn a_failure_report_keeps_its_error_whichever_writer_was_first() {
        let target = TargetName::new("web01").unwrap();
        let i = start(&target);
        let failed =
            InstrOutcome { id: i.id, op: InstructionKind::StartJob, applied_at: i.posted_at, error: Some("no such job".into()) };
        for row in [
            reported_row(&target, &failed, Some(posted_row(&i, None))),
            posted_row(&i, Some(reported_row(&target, &failed, None))),
        ] {
            assert_eq!((row.status, row.error.as_deref()), (InstrStatus::Failed, Some("no such job")));
        }
    }
}
