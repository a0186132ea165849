//! Streams, buckets and the records the master keeps in them.
//!
//! All master state lives in JetStream, never in process memory, so master
//! replicas are interchangeable and a `kill -9` loses nothing. Records that
//! several replicas may change at once are updated with compare-and-set on
//! the KV revision ([`Store::modify`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use muster_shared::api::{ApiError, ErrorCode};
use muster_shared::job::{JobDef, JobSpec};
use muster_shared::msg::PollReport;
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
}

impl JobRecord {
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

/// The download list's rows are wire types: `musterctl instructions` shows them as stored.
pub use muster_shared::api::{InstrRow, InstrStatus};

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
}

fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: match spec.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        max_age: spec.max_age,
        max_messages_per_subject: spec.max_msgs_per_subject,
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

/// Maps any NATS error to an `internal` API error that says what failed.
pub fn nats_err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

impl Store {
    /// Creates or updates every stream and bucket. Idempotent: a second master
    /// starting beside the first changes nothing.
    ///
    /// # Errors
    /// When JetStream refuses a stream or bucket (e.g. JetStream disabled).
    pub async fn open(js: &Context, subjects: &Subjects, options: &StoreOptions) -> anyhow::Result<Store> {
        for spec in [
            streams::assign_stream(subjects, options),
            streams::results_stream(subjects, options),
            streams::polls_stream(subjects, options),
        ] {
            js.create_or_update_stream(stream_config(&spec))
                .await
                .map_err(|e| anyhow::anyhow!("stream {}: {e}", spec.name))?;
        }
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
                    // The download list and job status age out with history.
                    max_age: match b {
                        Bucket::Instructions => options.history_retention,
                        _ => Duration::ZERO,
                    },
                    ..Default::default()
                };
                match js.get_key_value(&name).await {
                    Ok(store) => Ok(store),
                    Err(_) => js
                        .create_key_value(config)
                        .await
                        .map_err(|e| anyhow::anyhow!("bucket {name}: {e}")),
                }
            }
        };
        Ok(Store {
            js: js.clone(),
            subjects: subjects.clone(),
            options: options.clone(),
            targets: bucket(Bucket::Targets).await?,
            jobs: bucket(Bucket::Jobs).await?,
            groups: bucket(Bucket::Groups).await?,
            jobstatus: bucket(Bucket::JobStatus).await?,
            instructions: bucket(Bucket::Instructions).await?,
        })
    }

    // ---- generic KV helpers ---------------------------------------------------

    /// Reads and decodes one record, with its revision.
    pub async fn read<T: DeserializeOwned>(kv: &kv::Store, key: &str) -> Result<Option<(T, u64)>, ApiError> {
        let entry = kv.entry(key).await.map_err(|e| nats_err("reading KV")(&e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let value = serde_json::from_slice(&e.value)
                    .map_err(|err| ApiError::internal(format!("record '{key}' is corrupt: {err}")))?;
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
    pub async fn scan<T: DeserializeOwned>(kv: &kv::Store) -> Result<Vec<T>, ApiError> {
        Ok(Self::scan_entries(kv, "").await?.into_iter().map(|(_, v)| v).collect())
    }

    /// Like [`Store::scan`], with each record's key, for the keys that start
    /// with `key_prefix` (whole tokens, e.g. `web01.`; empty for all).
    pub async fn scan_entries<T: DeserializeOwned>(kv: &kv::Store, key_prefix: &str) -> Result<Vec<(String, T)>, ApiError> {
        let err = nats_err("reading a bucket");
        // An empty bucket (no groups yet, say) costs one info request, not a
        // consumer created and deleted.
        let mut stream = kv.stream.clone();
        if stream.info().await.map_err(|e| err(&e))?.state.messages == 0 {
            return Ok(Vec::new());
        }
        let consumer = kv
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{}{key_prefix}>", kv.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let name = consumer.cached_info().name.clone();
        let mut out = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| err(&e))?;
                let pending = m.info().map(|i| i.pending).unwrap_or(0);
                let key = m.subject.as_str().strip_prefix(kv.prefix.as_str()).unwrap_or_default().to_owned();
                let deleted = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                if !deleted {
                    match serde_json::from_slice(&m.payload) {
                        Ok(v) => out.push((key, v)),
                        Err(e) => tracing::warn!(key, error = %e, "skipping unreadable record"),
                    }
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
    /// `f` gets the current value (if any) and returns the new one, `None` to
    /// delete, or an error to abort. Returns what was written.
    pub async fn modify<T, F>(kv: &kv::Store, key: &str, mut f: F) -> Result<Option<T>, ApiError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Option<T>, ApiError>,
    {
        for _ in 0..32 {
            let current = Self::read::<T>(kv, key).await?;
            let revision = current.as_ref().map(|(_, r)| *r);
            let next = f(current.map(|(v, _)| v))?;
            let written = match (&next, revision) {
                (Some(v), Some(rev)) => kv.update(key, serde_json::to_vec(v).expect("serialise").into(), rev).await.map(|_| ()).map_err(|e| e.to_string()),
                (Some(v), None) => kv.create(key, serde_json::to_vec(v).expect("serialise").into()).await.map(|_| ()).map_err(|e| e.to_string()),
                (None, Some(rev)) => kv.delete_expect_revision(key, Some(rev)).await.map_err(|e| e.to_string()),
                (None, None) => Ok(()),
            };
            match written {
                Ok(()) => return Ok(next),
                // Someone else wrote in between: read again and retry.
                Err(e) if e.contains("wrong last sequence") || e.contains("exists") || e.contains("10071") => continue,
                Err(e) => return Err(ApiError::internal(format!("writing '{key}': {e}"))),
            }
        }
        Err(ApiError::new(ErrorCode::Conflict, format!("'{key}' kept changing under us; try again")))
    }

    pub async fn put<T: Serialize>(kv: &kv::Store, key: &str, value: &T) -> Result<(), ApiError> {
        kv.put(key, serde_json::to_vec(value).expect("serialise").into())
            .await
            .map(|_| ())
            .map_err(|e| ApiError::internal(format!("writing '{key}': {e}")))
    }

    // ---- targets -----------------------------------------------------------------

    pub async fn target(&self, name: &TargetName) -> Result<TargetRecord, ApiError> {
        Self::read(&self.targets, name.as_str()).await?.map(|(t, _)| t).ok_or_else(|| ApiError::not_enlisted(name))
    }

    /// Fails with `not_enlisted` for the first name that is not enlisted.
    pub async fn require_enlisted(&self, names: &[TargetName]) -> Result<(), ApiError> {
        // Checked concurrently (thousands of targets in one assign), and the
        // first missing name in the caller's order is the one reported.
        let checks: Vec<Result<TargetRecord, ApiError>> = futures::stream::iter(names.to_vec())
            .map(|n| {
                let store = self.clone();
                async move { store.target(&n).await }
            })
            .buffered(256)
            .collect()
            .await;
        checks.into_iter().try_for_each(|c| c.map(|_| ()))
    }

    pub async fn all_targets(&self) -> Result<Vec<TargetRecord>, ApiError> {
        let mut all: Vec<TargetRecord> = Self::scan(&self.targets).await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Creates (or updates) a target's durable consumer on `MUSTER_ASSIGN`.
    pub async fn ensure_target_consumer(&self, name: &TargetName) -> Result<(), ApiError> {
        let spec = streams::target_consumer(&self.subjects, name, &self.options);
        self.js
            .create_consumer_on_stream(consumer_config(&spec), self.subjects.assign_stream())
            .await
            .map(|_| ())
            .map_err(|e| nats_err("creating the target's consumer")(&e))
    }

    pub async fn delete_target_consumer(&self, name: &TargetName) -> Result<(), ApiError> {
        match self.js.delete_consumer_from_stream(name.as_str(), self.subjects.assign_stream()).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(nats_err("deleting the target's consumer")(&e)),
        }
    }

    /// Instructions posted for `name` and not yet acked (SQL Server's
    /// "unread instructions").
    pub async fn unread(&self, name: &TargetName) -> u64 {
        let Ok(stream) = self.js.get_stream_no_info(self.subjects.assign_stream()).await else { return 0 };
        match stream.consumer_info(name.as_str()).await {
            Ok(info) => info.num_pending + info.num_ack_pending as u64,
            Err(_) => 0,
        }
    }

    /// Every download-list row, of one target or all, in posting order.
    pub async fn instr_rows(&self, target: Option<&TargetName>) -> Result<Vec<InstrRow>, ApiError> {
        let prefix = target.map(|t| format!("{t}.")).unwrap_or_default();
        let mut out: Vec<InstrRow> = Self::scan_entries(&self.instructions, &prefix).await?.into_iter().map(|(_, r)| r).collect();
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Removes a target's queued instructions from `MUSTER_ASSIGN` and marks
    /// their rows `dropped` (resync, forced defection). Returns how many rows
    /// were dropped.
    pub async fn drop_pending(&self, target: &TargetName) -> Result<u64, ApiError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.assign_stream())
            .await
            .map_err(|e| nats_err("opening the instruction stream")(&e))?;
        stream
            .purge()
            .filter(self.subjects.assign(target))
            .await
            .map_err(|e| nats_err("purging the target's instructions")(&e))?;
        let mut dropped = 0;
        for row in self.instr_rows(Some(target)).await? {
            if row.status != InstrStatus::Pending {
                continue;
            }
            Self::modify(&self.instructions, &Self::instr_key(target, row.id), |old: Option<InstrRow>| {
                // A row the target reported on meanwhile keeps its outcome.
                Ok(old.map(|mut r| {
                    if r.status == InstrStatus::Pending {
                        r.status = InstrStatus::Dropped;
                    }
                    r
                }))
            })
            .await?;
            dropped += 1;
        }
        Ok(dropped)
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

    pub async fn job(&self, name: &JobName) -> Result<(JobRecord, u64), ApiError> {
        Self::read(&self.jobs, name.as_str())
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job is named '{name}' (see `musterctl job list`)")))
    }

    pub async fn all_jobs(&self) -> Result<Vec<JobRecord>, ApiError> {
        let mut all: Vec<JobRecord> = Self::scan(&self.jobs).await?;
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(all)
    }

    pub async fn all_groups(&self) -> Result<HashMap<GroupName, GroupRecord>, ApiError> {
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
