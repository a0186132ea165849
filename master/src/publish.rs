//! Publishing desired state: the only writer to `MUSTER_DESIRED`.
//!
//! Why this shape (`docs/DESIGN.md`, "Publishing"): every change derives the
//! targets' manifests again from the records (`desired.rs`) instead of
//! queueing what changed, so publishing is idempotent and a crash is
//! repaired by publishing again (reconcile). For one target, in order:
//! read its manifest, derive, write the job documents whose revision is
//! new, publish the successor manifest, delete the documents it no longer
//! lists, then stamp the download-list rows with the revision. Documents
//! and manifest are each a compare-and-set on their subject's last sequence
//! (`Nats-Expected-Last-Subject-Sequence`), so master replicas need no lock
//! and a revision never goes down; within one master a keyed mutex keeps
//! one publish per target at a time, so it never races itself.
//!
//! Many targets are published concurrently (at most [`PUBLISH_WINDOW`] at
//! once), each target's own steps in order. What the master keeps in memory
//! is bounded and does not grow per idle target: the per-target locks exist
//! only while a publish holds them, and the cache of last-published
//! manifests (which saves a read on the next change) has a memory budget
//! and drops what was not used for [`CACHE_TTL`]; a stale cache entry costs
//! one failed compare-and-set and a read, never a wrong write.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use muster_shared::api::{InstrRow, InstrStatus};
use muster_shared::desired::{self, ClockRef, JobDoc, Manifest, ManifestError, Revision, SizeError, StartEntry, StopEntry};
use muster_shared::job::JobDef;
use muster_shared::msg;
use muster_shared::name::{GroupName, JobName, TargetName};
use muster_shared::{KIND_HEADER, PROTOCOL_VERSION};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::desired::derive_one;
use crate::store::{Change, GroupRecord, JobRecord, Store, StoreError, TargetRecord};

/// Targets published at once. Each has at most one publish awaiting its
/// ack, which keeps the JetStream context under its limit of acks in flight.
pub const PUBLISH_WINDOW: usize = 1000;

/// Memory the manifest cache may hold (about 8,000 targets with a few jobs
/// each, by [`Seen::cost`]).
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// How long a cached manifest is kept unused: long enough for a burst of
/// changes to one target (an assign, then a start), short enough that an
/// idle fleet holds nothing here.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// Compare-and-set attempts per target before giving up (reconcile retries).
const ATTEMPTS: usize = 16;

/// What a change adds to a target's manifest besides its derived half.
#[derive(Debug, Clone, Default)]
pub struct Post {
    pub starts: Vec<StartEntry>,
    pub stops: Vec<StopEntry>,
    pub clock: Option<ClockRef>,
    /// Rewrite every document and publish a new revision even when nothing
    /// differs (`target resync`; starts and stops stay).
    pub force: bool,
    /// Take out what no longer waits ([`Manifest::prune`]); the expiry sweep.
    pub prune: bool,
    /// The download-list rows this change posted to the target.
    pub rows: Vec<Row>,
    /// Run ids whose first record arrived: their start entries leave the
    /// manifest (a start is never run twice). An id the manifest does not
    /// list changes nothing.
    pub answered: Vec<Uuid>,
}

impl Post {
    /// A change to the derived half only (assign, update, membership...).
    pub fn derived(rows: Vec<Row>) -> Post {
        Post { rows, ..Post::default() }
    }

    fn adds_nothing(&self) -> bool {
        self.starts.is_empty() && self.stops.is_empty() && self.clock.is_none() && !self.force && !self.prune
    }
}

/// One download-list row: a change posted to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// UUIDv7 (posting order). While instructions are still posted too, the
    /// instruction's id, so both designs share one row.
    pub id: Uuid,
    pub op: String,
    pub job: Option<JobName>,
}

/// What a publish did to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The manifest already said all this (or the target is unknown and has
    /// none): nothing written.
    Unchanged(Option<Revision>),
    /// A new revision; starts the prune took out (to be recorded `expired`).
    Written { revision: Revision, pruned: Vec<StartEntry> },
}

impl Published {
    pub fn revision(&self) -> Option<Revision> {
        match self {
            Published::Unchanged(r) => *r,
            Published::Written { revision, .. } => Some(*revision),
        }
    }
}

/// Why a target's publish failed. Reconcile repairs the derived half; the
/// caller decides what to tell about the owned half (a start not posted).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("target '{target}': {source}")]
    Manifest {
        target: TargetName,
        #[source]
        source: ManifestError,
    },
    #[error("target '{target}': manifest too big: {source}")]
    TooBig {
        target: TargetName,
        #[source]
        source: SizeError,
    },
    #[error("target '{target}': its manifest kept changing under us")]
    Conflict { target: TargetName },
}

/// The records a derive reads, read once for a batch of targets (each
/// target's own record is read fresh by its publish).
///
/// A snapshot can be overtaken by a concurrent change, whose own publish
/// may land first; the later, staler publish would then undo it. So a
/// snapshot remembers where the jobs and groups buckets were when it was
/// taken ([`Records::overtaken`]); a batch published from an overtaken
/// snapshot makes reconcile run again, on fresh records.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// Every job, tombstones included (derive skips them).
    pub jobs: Vec<JobRecord>,
    pub groups: HashMap<GroupName, GroupRecord>,
    marks: (u64, u64),
}

impl Records {
    /// # Errors
    /// NATS errors reading the buckets.
    pub async fn read(store: &Store) -> Result<Records, StoreError> {
        let marks = Self::marks(store).await?;
        let (jobs, groups) = tokio::try_join!(Store::scan::<JobRecord>(&store.jobs), store.all_groups())?;
        Ok(Records { jobs, groups, marks })
    }

    /// Whether a job or group was written since this snapshot was taken.
    ///
    /// # Errors
    /// NATS errors reading the buckets' state.
    pub async fn overtaken(&self, store: &Store) -> Result<bool, StoreError> {
        Ok(Self::marks(store).await? != self.marks)
    }

    async fn marks(store: &Store) -> Result<(u64, u64), StoreError> {
        let last = |kv: &async_nats::jetstream::kv::Store| {
            let stream = kv.stream.clone();
            async move {
                stream
                    .get_info()
                    .await
                    .map(|i| i.state.last_sequence)
                    .map_err(|e| StoreError::nats("reading a bucket's state", e))
            }
        };
        tokio::try_join!(last(&store.jobs), last(&store.groups))
    }
}

/// A manifest as last seen: its sequence on the stream, and the sequence of
/// each job document this master wrote or read since.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    manifest: Option<Manifest>,
    docs: HashMap<Uuid, u64>,
    /// Its encoded size; [`Seen::cost`] is what it holds in memory.
    bytes: usize,
}

impl Seen {
    /// Memory an entry holds, estimated from above: the map slot (key and
    /// value, at the map's lowest load), the decoded manifest (twice its
    /// JSON: names and ids are kept as owned strings and vectors), and the
    /// document sequences.
    fn cost(&self) -> usize {
        2 * std::mem::size_of::<(TargetName, Entry)>() + 2 * self.bytes + 2 * self.docs.len() * std::mem::size_of::<(Uuid, u64)>()
    }
}

/// A cached manifest and when it was last used.
#[derive(Debug)]
struct Entry {
    seen: Seen,
    used: Instant,
}

/// The last-published manifests, which save a read when a target changes
/// again soon: an assign and then a start, or a burst of edits. Bounded in
/// memory ([`CACHE_BYTES`], counted by [`Seen::cost`]) and in time: an
/// entry unused for [`CACHE_TTL`] goes, so a fleet that sits idle holds
/// nothing here however many targets it has.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<TargetName, Entry>,
    bytes: usize,
}

impl Cache {
    fn get(&mut self, t: &TargetName, now: Instant) -> Option<Seen> {
        let fresh = self.entries.get(t).is_some_and(|e| now.duration_since(e.used) < CACHE_TTL);
        if !fresh {
            self.forget(t);
            return None;
        }
        self.entries.get(t).map(|e| e.seen.clone())
    }

    fn put(&mut self, t: &TargetName, seen: Seen, now: Instant) {
        self.forget(t);
        let cost = seen.cost();
        if cost > CACHE_BYTES / 4 {
            return;
        }
        if self.bytes + cost > CACHE_BYTES {
            self.expire(now);
        }
        while self.bytes + cost > CACHE_BYTES {
            let Some(victim) = self.entries.keys().next().cloned() else {
                break;
            };
            self.forget(&victim);
        }
        self.bytes += cost;
        self.entries.insert(t.clone(), Entry { seen, used: now });
    }

    fn forget(&mut self, t: &TargetName) {
        if let Some(old) = self.entries.remove(t) {
            self.bytes -= old.seen.cost();
        }
    }

    /// Drops the entries unused for [`CACHE_TTL`], and gives back the map's
    /// room when it is mostly empty (a map never shrinks by itself).
    fn expire(&mut self, now: Instant) {
        let before = self.entries.len();
        self.entries.retain(|_, e| now.duration_since(e.used) < CACHE_TTL);
        if self.entries.len() < before {
            self.bytes = self.entries.values().map(|e| e.seen.cost()).sum();
        }
        if self.entries.capacity() > 4 * self.entries.len() + 64 {
            self.entries.shrink_to_fit();
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// The last records read, reused while the jobs and groups buckets have
    /// not moved (two stream-info requests instead of two scans: enlisting
    /// many targets reads them once), and when they were last used: like
    /// the cache, dropped after [`CACHE_TTL`] unused.
    records: Mutex<Option<(Arc<Records>, Instant)>>,
    locks: Mutex<HashMap<TargetName, Arc<tokio::sync::Mutex<()>>>>,
    cache: Mutex<Cache>,
    dirty: AtomicBool,
    wake: Notify,
}

/// Publishes desired state; cheap to clone (one per master process).
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

/// Holds a target's lock; the lock's map entry goes with the last holder.
struct Held<'a> {
    inner: &'a Inner,
    target: TargetName,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut locks = self.inner.locks.lock().expect("lock map");
        // Ours and the map's: nobody else waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.target);
        }
    }
}

impl Publisher {
    pub fn new(store: Store) -> Publisher {
        Publisher {
            inner: Arc::new(Inner {
                store,
                records: Mutex::new(None),
                locks: Mutex::new(HashMap::new()),
                cache: Mutex::new(Cache::default()),
                dirty: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Says a publish failed, so reconcile runs again.
    pub fn mark_dirty(&self) {
        self.inner.dirty.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// Waits until a publish failed since the last call, and clears the mark.
    pub async fn wait_dirty(&self) {
        loop {
            if self.inner.dirty.swap(false, Ordering::SeqCst) {
                return;
            }
            self.inner.wake.notified().await;
        }
    }

    /// Publishes each `(target, post)`, many targets at once, each in order.
    /// Records are read once for all. A failure fails only its target; it
    /// is logged and makes reconcile run again.
    ///
    /// # Errors
    /// Only when the records cannot be read (nothing was published).
    pub async fn publish_many(
        &self,
        items: Vec<(TargetName, Post)>,
    ) -> Result<Vec<(TargetName, Result<Published, PublishError>)>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.records().await?;
        let done = self.publish_with(items, records.clone()).await;
        if records.overtaken(&self.inner.store).await.unwrap_or(true) {
            // A concurrent change may have published first: check all again.
            self.mark_dirty();
        }
        Ok(done)
    }

    /// The jobs and groups as they are now: the last snapshot while neither
    /// bucket moved since it was taken, else a fresh one.
    ///
    /// # Errors
    /// NATS errors reading the buckets.
    pub async fn records(&self) -> Result<Arc<Records>, StoreError> {
        let store = &self.inner.store;
        let marks = Records::marks(store).await?;
        if let Some((r, used)) = self.inner.records.lock().expect("records").as_mut() {
            if r.marks == marks {
                *used = Instant::now();
                return Ok(r.clone());
            }
        }
        let fresh = Arc::new(Records::read(store).await?);
        *self.inner.records.lock().expect("records") = Some((fresh.clone(), Instant::now()));
        Ok(fresh)
    }

    /// [`Publisher::publish_many`] with records already read (reconcile).
    pub async fn publish_with(
        &self,
        items: Vec<(TargetName, Post)>,
        records: Arc<Records>,
    ) -> Vec<(TargetName, Result<Published, PublishError>)> {
        futures::stream::iter(items)
            .map(|(t, post)| {
                // Owned, not borrowed: the futures must be `Send` for every
                // lifetime, which a spawned API handler needs.
                let (this, records) = (self.clone(), records.clone());
                async move {
                    let result = this.publish(&t, &post, &records).await;
                    if let Err(e) = &result {
                        tracing::warn!(target = %t, error = %e, "publishing desired state failed; reconcile will retry");
                        this.mark_dirty();
                    }
                    (t, result)
                }
            })
            .buffer_unordered(PUBLISH_WINDOW)
            .collect()
            .await
    }

    async fn lock(&self, t: &TargetName) -> (Held<'_>, tokio::sync::OwnedMutexGuard<()>) {
        let lock = self.inner.locks.lock().expect("lock map").entry(t.clone()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        (Held { inner: &self.inner, target: t.clone(), lock }, guard)
    }

    /// Publishes one target (the protocol in the module docs).
    ///
    /// # Errors
    /// See [`PublishError`].
    pub async fn publish(&self, t: &TargetName, post: &Post, records: &Records) -> Result<Published, PublishError> {
        // The guard is dropped before the map entry's holder.
        let (_held, _guard) = self.lock(t).await;
        let store = &self.inner.store;
        let mut fresh_records: Option<Records> = None;
        let mut seen = self.inner.cache.lock().expect("cache").get(t, Instant::now());
        for attempt in 0..ATTEMPTS {
            let mut cur = match seen.take() {
                Some(s) => s,
                None => self.read_manifest(t, attempt > 0).await?,
            };
            if attempt > 0 && fresh_records.is_none() {
                // Someone else published meanwhile: decide again on fresh records.
                fresh_records = Some(Records::read(store).await?);
            }
            let records = fresh_records.as_ref().unwrap_or(records);
            let record = Store::read::<TargetRecord>(&store.targets, t.as_str()).await?.map(|(r, _)| r);
            let derived = derive_one(record.as_ref(), t, &records.jobs, &records.groups);
            let now = Utc::now();
            let mut next = match &cur.manifest {
                None if record.is_none() => return Ok(Published::Unchanged(None)),
                None => Manifest::first(t.clone(), Uuid::new_v4(), derived, now),
                Some(m) => {
                    let answers = m.starts.iter().any(|s| post.answered.contains(&s.run_id));
                    if post.adds_nothing() && !answers && m.derived().digest() == derived.digest() {
                        let revision = m.revision;
                        self.remember(t, cur);
                        return Ok(Published::Unchanged(Some(revision)));
                    }
                    m.successor(derived, now)
                }
            };
            let manifest_err = |source| PublishError::Manifest { target: t.clone(), source };
            for run_id in &post.answered {
                next.remove_start(*run_id);
            }
            for s in &post.starts {
                next.add_start(s.clone()).map_err(manifest_err)?;
            }
            for s in &post.stops {
                next.add_stop(s.clone()).map_err(manifest_err)?;
            }
            if let Some(c) = post.clock {
                next.clock = Some(c);
            }
            let mut pruned = Vec::new();
            if post.prune {
                let out = next.prune(now, None);
                let unchanged = cur.manifest.as_ref().filter(|m| {
                    out.starts.is_empty()
                        && out.stops == 0
                        && m.derived().digest() == next.derived().digest()
                        && post.starts.is_empty()
                        && post.stops.is_empty()
                        && post.clock.is_none()
                        && post.answered.is_empty()
                        && !post.force
                });
                if let Some(revision) = unchanged.map(|m| m.revision) {
                    self.remember(t, cur);
                    return Ok(Published::Unchanged(Some(revision)));
                }
                pruned = out.starts;
            }
            next.changes += post.rows.len() as u64;
            let body = Bytes::from(msg::encode(&next));
            desired::check_size(&body).map_err(|source| PublishError::TooBig { target: t.clone(), source })?;

            // Documents first, so a manifest never names one that is not there.
            let listed: HashMap<Uuid, u64> =
                cur.manifest.iter().flat_map(|m| m.jobs.iter().map(|j| (j.id, j.revision))).collect();
            let by_id: HashMap<Uuid, &JobRecord> = records.jobs.iter().map(|j| (j.id, j)).collect();
            for j in &next.jobs {
                let was = listed.get(&j.id).copied();
                if !post.force && was.is_some_and(|r| r >= j.revision) {
                    continue;
                }
                let Some(record) = by_id.get(&j.id) else {
                    continue;
                };
                let expected = cur.docs.get(&j.id).copied().or(if was.is_none() { Some(0) } else { None });
                let seq = self.write_doc(t, record.def(), expected, post.force).await?;
                cur.docs.insert(j.id, seq);
            }
            // The exact sequences of the documents that go, read before the
            // manifest: one re-written later (a re-assign) is not removed.
            let kept: BTreeSet<Uuid> = next.jobs.iter().map(|j| j.id).collect();
            let mut gone = Vec::new();
            for id in listed.keys().filter(|id| !kept.contains(id)) {
                let seq = match cur.docs.get(id) {
                    Some(seq) => Some(*seq),
                    None => self.read(&store.subjects.job_doc(t, *id), false).await?.map(|(seq, _)| seq),
                };
                if let Some(seq) = seq {
                    gone.push((*id, seq));
                }
            }

            let mut headers = HeaderMap::new();
            headers.insert(KIND_HEADER, desired::KIND_MANIFEST);
            headers.insert(
                desired::SUMMARY_HEADER,
                String::from_utf8(msg::encode(&next.summary())).expect("JSON is UTF-8").as_str(),
            );
            match self.cas_publish(store.subjects.state(t), headers, body.clone(), cur.seq).await? {
                None => {
                    self.inner.cache.lock().expect("cache").forget(t);
                    continue;
                }
                Some(seq) => {
                    for (id, doc_seq) in gone {
                        self.delete_doc(doc_seq).await?;
                        cur.docs.remove(&id);
                    }
                    let revision = next.revision;
                    self.write_rows(t, &post.rows, revision, &next).await?;
                    cur.seq = seq;
                    cur.bytes = body.len();
                    cur.manifest = Some(next);
                    self.remember(t, cur);
                    return Ok(Published::Written { revision, pruned });
                }
            }
        }
        Err(PublishError::Conflict { target: t.clone() })
    }

    fn remember(&self, t: &TargetName, seen: Seen) {
        self.inner.cache.lock().expect("cache").put(t, seen, Instant::now());
    }

    /// Drops the cached manifests, and the records snapshot, that nobody
    /// used for [`CACHE_TTL`]; reconcile calls this between its passes, so
    /// an idle master's caches empty.
    pub fn expire_cache(&self) {
        self.expire_at(Instant::now());
    }

    fn expire_at(&self, now: Instant) {
        self.inner.cache.lock().expect("cache").expire(now);
        let mut records = self.inner.records.lock().expect("records");
        if records.as_ref().is_some_and(|(_, used)| now.duration_since(*used) >= CACHE_TTL) {
            *records = None;
        }
    }

    /// A target's manifest and its sequence (0: none). After a conflict the
    /// read goes to the stream leader, not a replica that may lag.
    async fn read_manifest(&self, t: &TargetName, leader: bool) -> Result<Seen, StoreError> {
        let Some((seq, payload)) = self.read(&self.inner.store.subjects.state(t), leader).await? else {
            return Ok(Seen { seq: 0, manifest: None, docs: HashMap::new(), bytes: 0 });
        };
        let manifest = match msg::decode::<Manifest>(&payload) {
            Ok(m) if &m.target == t => Some(m),
            // Unreadable or not this target's: replaced by a new lineage.
            Ok(_) | Err(_) => {
                tracing::warn!(target = %t, seq, "unreadable manifest; publishing a new one over it");
                None
            }
        };
        Ok(Seen { seq, manifest, docs: HashMap::new(), bytes: payload.len() })
    }

    /// The last message on `subject`: its sequence and body.
    async fn read(&self, subject: &str, leader: bool) -> Result<Option<(u64, Bytes)>, StoreError> {
        let stream = &self.inner.store.desired;
        if leader {
            return match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Some((m.sequence, m.payload))),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(StoreError::nats(format!("reading '{subject}'"), e)),
            };
        }
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some((m.sequence, m.payload))),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::nats(format!("reading '{subject}'"), e)),
        }
    }

    /// Publishes `body` if `subject`'s last sequence is `expected` (0: no
    /// message yet). `None` when another writer got there first.
    async fn cas_publish(
        &self,
        subject: String,
        mut headers: HeaderMap,
        body: Bytes,
        expected: u64,
    ) -> Result<Option<u64>, StoreError> {
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        let what = || format!("publishing '{subject}'");
        let ack = self
            .inner
            .store
            .js
            .publish_with_headers(subject.clone(), headers, body)
            .await
            .map_err(|e| StoreError::nats(what(), e))?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(StoreError::nats(what(), e)),
        }
    }

    /// Writes a job's document unless the stored one is already at its
    /// revision or later (a revision never goes down); `force` rewrites it
    /// anyway. `expected` is the sequence believed current (`None`: read it).
    async fn write_doc(&self, t: &TargetName, job: JobDef, mut expected: Option<u64>, force: bool) -> Result<u64, StoreError> {
        let subject = self.inner.store.subjects.job_doc(t, job.id);
        let (id, revision) = (job.id, job.revision);
        let body = Bytes::from(msg::encode(&JobDoc { v: PROTOCOL_VERSION, target: t.clone(), job }));
        for attempt in 0..ATTEMPTS {
            let seq = match expected.take() {
                Some(seq) => seq,
                None => match self.read(&subject, attempt > 0).await? {
                    None => 0,
                    Some((seq, stored)) => {
                        let stored_revision = msg::decode::<JobDoc>(&stored).ok().map(|d| d.job.revision);
                        if !force && stored_revision.is_some_and(|r| r >= revision) {
                            return Ok(seq);
                        }
                        seq
                    }
                },
            };
            let mut headers = HeaderMap::new();
            headers.insert(KIND_HEADER, desired::KIND_JOB);
            if let Some(seq) = self.cas_publish(subject.clone(), headers, body.clone(), seq).await? {
                return Ok(seq);
            }
        }
        Err(StoreError::Conflict { key: format!("{t}.job.{id}") })
    }

    /// Deletes one document by its sequence; one already gone is no error.
    async fn delete_doc(&self, seq: u64) -> Result<(), StoreError> {
        use async_nats::jetstream::stream::DeleteMessageErrorKind;
        use async_nats::jetstream::ErrorCode;
        match self.inner.store.desired.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                DeleteMessageErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                        || j.error_code() == ErrorCode::NO_MESSAGE_FOUND
                        || j.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED =>
                {
                    Ok(())
                }
                _ => Err(StoreError::nats("deleting a job document", e)),
            },
        }
    }

    /// Stamps each row with the revision that carried it; a row not written
    /// yet is written pending.
    async fn write_rows(&self, t: &TargetName, rows: &[Row], revision: Revision, m: &Manifest) -> Result<(), StoreError> {
        let posted_at = m.published_at;
        let writes = rows.iter().cloned().map(|r| {
            let (store, t) = (self.inner.store.clone(), t.clone());
            async move {
                // A row is new (its id was just made): created in one
                // write, read only if it exists after all.
                Store::compare_and_set(&store.instructions, &Store::instr_key(&t, r.id), &mut None, |old: Option<&InstrRow>| {
                    let mut row = old.cloned().unwrap_or_else(|| InstrRow {
                        id: r.id,
                        target: t.clone(),
                        op: r.op.clone(),
                        job: r.job.clone(),
                        posted_at,
                        status: InstrStatus::Pending,
                        applied_at: None,
                        error: None,
                        revision: None,
                    });
                    row.revision = Some(revision);
                    Ok::<_, StoreError>(Change::Put(row))
                })
                .await
            }
        });
        let results: Vec<_> = futures::stream::iter(writes).buffer_unordered(64).collect().await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use muster_shared::desired::{ManifestSummary, DEFAULT_EXPIRY};
    use muster_shared::job::JobSpec;

    use super::*;
    use crate::store::testing::open;

    fn t(n: &str) -> TargetName {
        TargetName::new(n).unwrap()
    }

    async fn enlist(store: &Store, n: &str) {
        let record = TargetRecord::new(t(n), 60, Utc::now());
        Store::put(&store.targets, n, &record).await.unwrap();
    }

    async fn put_job(store: &Store, name: &str, revision: u64, targets: &[&str]) -> JobRecord {
        let job_name = JobName::new(name).unwrap();
        let old = Store::read::<JobRecord>(&store.jobs, name).await.unwrap().map(|(j, _)| j);
        let record = JobRecord {
            revision,
            targets: targets.iter().map(|n| t(n)).collect::<BTreeSet<_>>(),
            ..JobRecord::new(
                old.map_or_else(Uuid::new_v4, |j| j.id),
                JobSpec::from_commands(job_name, &["true".to_owned()]),
                Utc::now(),
            )
        };
        Store::put(&store.jobs, name, &record).await.unwrap();
        record
    }

    /// The manifest as a target reads it, and its summary header.
    async fn manifest(store: &Store, n: &str) -> (Manifest, ManifestSummary) {
        let m = store.desired.direct_get_last_for_subject(store.subjects.state(&t(n))).await.unwrap();
        let summary = serde_json::from_str(m.headers.get(desired::SUMMARY_HEADER).unwrap().as_str()).unwrap();
        (msg::decode(&m.payload).unwrap(), summary)
    }

    async fn doc(store: &Store, n: &str, id: Uuid) -> Option<JobDoc> {
        match store.desired.direct_get_last_for_subject(store.subjects.job_doc(&t(n), id)).await {
            Ok(m) => Some(msg::decode(&m.payload).unwrap()),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
            Err(e) => panic!("{e}"),
        }
    }

    async fn one(p: &Publisher, n: &str, post: Post) -> Published {
        let records = Records::read(p.store()).await.unwrap();
        p.publish(&t(n), &post, &records).await.unwrap()
    }

    #[test]
    fn the_cache_stays_within_its_memory_budget() {
        let mut cache = Cache::default();
        let now = Instant::now();
        let seen = |bytes| Seen { seq: 1, manifest: None, docs: HashMap::new(), bytes };
        let tenth = CACHE_BYTES / 20 - std::mem::size_of::<(TargetName, Entry)>();
        assert_eq!(seen(tenth).cost(), CACHE_BYTES / 10);
        for n in 0..100 {
            cache.put(&t(&format!("t{n}")), seen(tenth), now);
            assert!(cache.bytes <= CACHE_BYTES);
        }
        assert_eq!(cache.entries.len(), 10);
        cache.put(&t("huge"), seen(CACHE_BYTES), now);
        assert!(cache.get(&t("huge"), now).is_none(), "too big to keep");
        cache.put(&t("t99"), seen(1), now);
        assert_eq!(cache.get(&t("t99"), now).unwrap().bytes, 1, "replaced, not added");
        assert_eq!(cache.bytes, cache.entries.values().map(|e| e.seen.cost()).sum::<usize>());
    }

    #[test]
    fn an_idle_fleet_leaves_nothing_in_the_cache() {
        let mut cache = Cache::default();
        let start = Instant::now();
        let seen = Seen { seq: 1, manifest: None, docs: HashMap::new(), bytes: 200 };
        for n in 0..5000 {
            cache.put(&t(&format!("t{n}")), seen.clone(), start);
        }
        let busy = start + CACHE_TTL / 2;
        cache.put(&t("busy"), seen.clone(), busy);
        assert!(cache.get(&t("t1"), busy).is_some(), "used again soon: kept");
        let later = start + CACHE_TTL;
        assert!(cache.get(&t("t2"), later).is_none(), "unused for the whole TTL: gone");
        cache.expire(later);
        assert_eq!(cache.entries.keys().map(TargetName::as_str).collect::<Vec<_>>(), ["busy"]);
        assert_eq!(cache.bytes, seen.cost());
        assert!(cache.entries.capacity() < 100, "the map's room is given back: {}", cache.entries.capacity());
        cache.expire(busy + CACHE_TTL);
        assert_eq!((cache.entries.len(), cache.bytes), (0, 0));
    }

    #[tokio::test]
    async fn a_change_publishes_documents_then_a_manifest_one_revision_up() {
        let ts = open().await;
        let store = &ts.store;
        let p = Publisher::new(store.clone());
        assert_eq!(one(&p, "web01", Post::default()).await, Published::Unchanged(None), "not enlisted: nothing");
        enlist(store, "web01").await;
        assert_eq!(one(&p, "web01", Post::default()).await.revision(), Some(Revision(1)));
        assert_eq!(one(&p, "web01", Post::default()).await, Published::Unchanged(Some(Revision(1))), "idempotent");

        let job = put_job(store, "backup", 1, &["web01"]).await;
        let row = Row { id: Uuid::now_v7(), op: "upsert_job".into(), job: Some(job.spec.name.clone()) };
        assert_eq!(one(&p, "web01", Post::derived(vec![row.clone()])).await.revision(), Some(Revision(2)));
        let (m, summary) = manifest(store, "web01").await;
        assert_eq!((m.revision, m.changes, m.jobs.len()), (Revision(2), 1, 1));
        assert_eq!(summary, m.summary(), "the header says what the body says");
        assert_eq!(doc(store, "web01", job.id).await.unwrap().job, job.def());
        let (stored, _) =
            Store::read::<InstrRow>(&store.instructions, &Store::instr_key(&t("web01"), row.id)).await.unwrap().unwrap();
        assert_eq!((stored.revision, stored.status), (Some(Revision(2)), InstrStatus::Pending));

        // An update rewrites the document; an unassign removes it.
        put_job(store, "backup", 2, &["web01"]).await;
        one(&p, "web01", Post::default()).await;
        assert_eq!(doc(store, "web01", job.id).await.unwrap().job.revision, 2);
        put_job(store, "backup", 2, &[]).await;
        assert_eq!(one(&p, "web01", Post::default()).await.revision(), Some(Revision(4)));
        assert!(manifest(store, "web01").await.0.jobs.is_empty());
        assert_eq!(doc(store, "web01", job.id).await, None, "removed by its sequence");

        // A start is carried; resync is a new revision with the same content.
        let start = StartEntry::new(Uuid::now_v7(), job.id, job.spec.name.clone(), Utc::now(), DEFAULT_EXPIRY).unwrap();
        one(&p, "web01", Post { starts: vec![start.clone()], ..Post::default() }).await;
        let (m, _) = manifest(store, "web01").await;
        assert_eq!(m.starts[0].revision, Revision(5));
        let forced = one(&p, "web01", Post { force: true, ..Post::default() }).await;
        assert_eq!(forced.revision(), Some(Revision(6)));
        let (m, _) = manifest(store, "web01").await;
        assert_eq!(m.starts.iter().map(|s| s.run_id).collect::<Vec<_>>(), [start.run_id], "resync keeps what waits");
    }

    #[tokio::test]
    async fn a_stale_cache_or_another_replica_costs_a_retry_never_a_lost_write() {
        let ts = open().await;
        let store = &ts.store;
        enlist(store, "web01").await;
        let (a, b) = (Publisher::new(store.clone()), Publisher::new(store.clone()));
        one(&a, "web01", Post::default()).await;
        // Another replica publishes: `a`'s cache is now behind.
        let job = put_job(store, "backup", 1, &["web01"]).await;
        assert_eq!(one(&b, "web01", Post::default()).await.revision(), Some(Revision(2)));
        put_job(store, "backup", 1, &[]).await;
        let other = put_job(store, "other", 1, &["web01"]).await;
        assert_eq!(one(&a, "web01", Post::default()).await.revision(), Some(Revision(3)), "conflict, re-read, publish");
        let (m, _) = manifest(store, "web01").await;
        assert_eq!(m.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [other.id]);
        assert_eq!(doc(store, "web01", job.id).await, None, "the document b wrote, a removed");
        // A document ahead of its manifest (a crash between the two) is kept, not rewritten.
        assert_eq!(doc(store, "web01", other.id).await.unwrap().job.revision, 1);

        // Many targets at once, each in order.
        for n in ["t1", "t2", "t3"] {
            enlist(store, n).await;
        }
        put_job(store, "fan", 1, &["t1", "t2", "t3"]).await;
        let done = a.publish_many(["t1", "t2", "t3"].iter().map(|n| (t(n), Post::default())).collect()).await.unwrap();
        assert!(done.iter().all(|(_, r)| r.as_ref().unwrap().revision() == Some(Revision(1))), "{done:?}");
        assert!(a.inner.locks.lock().unwrap().is_empty(), "no lock outlives its publish");
    }

    #[tokio::test]
    async fn an_idle_publisher_keeps_neither_manifests_nor_records() {
        let ts = open().await;
        let store = &ts.store;
        let p = Publisher::new(store.clone());
        for n in ["t1", "t2"] {
            enlist(store, n).await;
        }
        put_job(store, "j", 1, &["t1", "t2"]).await;
        p.publish_many(["t1", "t2"].iter().map(|n| (t(n), Post::default())).collect()).await.unwrap();
        assert_eq!(p.inner.cache.lock().unwrap().entries.len(), 2);
        assert!(p.inner.records.lock().unwrap().is_some());
        p.expire_at(Instant::now() + CACHE_TTL / 2);
        assert_eq!(p.inner.cache.lock().unwrap().entries.len(), 2, "used lately: kept");
        p.expire_at(Instant::now() + CACHE_TTL);
        assert_eq!(p.inner.cache.lock().unwrap().bytes, 0);
        assert!(p.inner.cache.lock().unwrap().entries.is_empty());
        assert!(p.inner.records.lock().unwrap().is_none());
        // Nothing cached is no harm: the next change reads what it needs.
        put_job(store, "j", 2, &["t1"]).await;
        let done = p.publish_many(vec![(t("t1"), Post::default())]).await.unwrap();
        assert_eq!(done[0].1.as_ref().unwrap().revision(), Some(Revision(2)));
    }
}
