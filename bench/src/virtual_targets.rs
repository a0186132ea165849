//! Virtual targets on the agent's real delivery path, many per connection,
//! so the benchmark reaches 100,000 targets without 100,000 processes.
//!
//! A virtual target answers its control request (`muster.target.<t>.control`)
//! after a poll as the agent polls: a Direct Get of its own manifest in the
//! API-subject form (`$JS.API.DIRECT.GET.<stream>.muster.target.<t>.state`,
//! the form a per-target permission can restrict), a Direct Get of each job
//! document whose revision changed, then its poll report on
//! `muster.poll.<t>`. When a manifest revision is new to it, it also
//! publishes its [`AppliedRecord`], as the agent does. No consumer is
//! created or used.
//!
//! Starts are answered with a real run: the virtual target publishes the
//! run's final record (`succeeded`, no steps) under the start's run id with
//! the agent's de-duplication id, so `job start --wait` and job status see a
//! finished run. Nothing is executed.
//!
//! The fleet shares [`CONNECTIONS`] connections: each answers a share of
//! the control requests (one queue group on `muster.target.*.control`), and
//! target `i`'s timed polls go through connection `i % CONNECTIONS`.
//!
//! What a virtual target holds (applied revision, job revisions, handled
//! starts) lives in one map in memory: one entry per target, bounded by the
//! fleet's size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream::Stream};
use async_nats::HeaderMap;
use futures::StreamExt as _;
use muster_shared::desired::{Applied, AppliedRecord, JobDoc, JobRef, Manifest, StartVerdict};
use muster_shared::msg::{self, ControlReply, Outcome, PollReport, RunRecord, Trigger};
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;
use uuid::Uuid;

/// Connections the whole fleet shares.
pub const CONNECTIONS: usize = 4;

/// Job documents one poll fetches at once, as the agent bounds them.
const DOCS_IN_FLIGHT: usize = 16;

/// The `i`th virtual target: `v00000`, `v00001`, ... (six digits past 99,999).
pub fn virtual_name(i: usize) -> TargetName {
    TargetName::new(format!("v{i:05}")).expect("a valid name")
}

/// What one virtual target holds, as the agent keeps it in `agent.json`.
#[derive(Debug, Clone, Default)]
struct Held {
    applied: Option<Applied>,
    /// Job id → the revision held.
    jobs: BTreeMap<Uuid, u64>,
    /// Run ids of starts already answered (forgotten when the manifest no
    /// longer lists them).
    starts: HashSet<Uuid>,
}

/// One connection's side of the path.
#[derive(Clone)]
struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Without its info: the agent has no STREAM.INFO grant.
    desired: Stream<()>,
}

/// The fleet: a few connections, each with a share of the control
/// requests (one queue group), and every target's held state.
pub struct VirtualTargets {
    poller: Poller,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Polls any virtual target, as its poll timer fires; cheap to clone.
#[derive(Clone)]
pub struct Poller {
    links: Vec<Link>,
    subjects: Subjects,
    held: Arc<Mutex<HashMap<TargetName, Held>>>,
}

impl Poller {
    /// One poll of target `i` (on its connection); returns how long it took.
    pub async fn poll(&self, i: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        poll(&self.links[i % self.links.len()], &self.subjects, &self.held, &virtual_name(i)).await?;
        Ok(start.elapsed())
    }
}

impl Drop for VirtualTargets {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl VirtualTargets {
    /// Connects [`CONNECTIONS`] clients to `url` and answers every control
    /// request to a target named `v…`.
    pub async fn start(url: &str, subjects: Subjects) -> anyhow::Result<VirtualTargets> {
        let held: Arc<Mutex<HashMap<TargetName, Held>>> = Arc::default();
        let mut links = Vec::with_capacity(CONNECTIONS);
        let mut tasks = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let client = async_nats::connect(url).await?;
            let js = jetstream::new(client.clone());
            // No STREAM.INFO: the agent's permissions do not grant it.
            let desired = js.get_stream_no_info(subjects.desired_stream()).await?;
            let link = Link { client: client.clone(), js, desired };
            let mut sub =
                client.queue_subscribe(format!("{}.target.*.control", subjects.prefix()), "muster-bench".into()).await?;
            client.flush().await?;
            let (l, s, h) = (link.clone(), subjects.clone(), held.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let Some(name) = s.target_of(&m.subject).and_then(|t| TargetName::new(t).ok()) else {
                        continue;
                    };
                    if !name.as_str().starts_with('v') {
                        continue;
                    }
                    let (l, s, h) = (l.clone(), s.clone(), h.clone());
                    tokio::spawn(async move {
                        let report = match poll(&l, &s, &h, &name).await {
                            Ok(r) => r,
                            Err(e) => {
                                // Unanswered: the master's force-poll fails
                                // and the stage reports it.
                                eprintln!("muster-bench: virtual target {name}: poll failed: {e:#}");
                                return;
                            }
                        };
                        if let Some(reply) = m.reply {
                            l.client.publish(reply, msg::encode(&ControlReply::report(report)).into()).await.ok();
                        }
                    });
                }
            }));
            links.push(link);
        }
        Ok(VirtualTargets { poller: Poller { links, subjects, held }, tasks })
    }

    pub fn poller(&self) -> Poller {
        self.poller.clone()
    }

    /// How many virtual targets hold job `job_id`.
    pub fn holding(&self, job_id: Uuid) -> usize {
        self.poller.held.lock().expect("held").values().filter(|h| h.jobs.contains_key(&job_id)).count()
    }
}

/// A poll of `name`: read the manifest, apply what is new, report.
async fn poll(
    link: &Link,
    subjects: &Subjects,
    held: &Mutex<HashMap<TargetName, Held>>,
    name: &TargetName,
) -> anyhow::Result<PollReport> {
    let mut mine = held.lock().expect("held").get(name).cloned().unwrap_or_default();
    // Not found: not enlisted (yet); the report says it holds nothing.
    if let Ok(m) = link.desired.direct_get_last_for_subject(subjects.state(name)).await {
        let manifest: Manifest = msg::decode(&m.payload).context("manifest")?;
        manifest.validate(name).context("manifest refused")?;
        if manifest.is_news_to(mine.applied.as_ref()) {
            apply(link, subjects, name, &manifest, &mut mine).await?;
        }
    }
    let report = PollReport {
        v: 1,
        target: name.clone(),
        polled_at: chrono::Utc::now(),
        agent_version: "bench".into(),
        instance: Uuid::nil(),
        poll_interval_secs: 60,
        applied: 0,
        failed: 0,
        jobs: u32::try_from(mine.jobs.len()).unwrap_or(u32::MAX),
        running: vec![],
        spooled: 0,
        clock_skew_ms: None,
        timezone: String::new(),
        bad_instructions: 0,
        bad_control: 0,
        applied_revision: mine.applied,
    };
    held.lock().expect("held").insert(name.clone(), mine);
    // The agent publishes its report and does not wait for the ack to answer.
    let (js, subject, body) = (link.js.clone(), subjects.poll(name), msg::encode(&report));
    tokio::spawn(async move {
        if let Ok(ack) = js.publish(subject, body.into()).await {
            ack.await.ok();
        }
    });
    Ok(report)
}

/// Applies a new manifest revision: fetch changed job documents, drop
/// unlisted jobs, answer new starts, then record the applied revision.
async fn apply(link: &Link, subjects: &Subjects, name: &TargetName, manifest: &Manifest, mine: &mut Held) -> anyhow::Result<()> {
    let changes = manifest.job_changes(&mine.jobs);
    let fetch: Vec<JobRef> = changes.fetch.into_iter().cloned().collect();
    let docs: Vec<(Uuid, u64)> = futures::stream::iter(fetch)
        .map(|listed| async move {
            let m = link
                .desired
                .direct_get_last_for_subject(subjects.job_doc(name, listed.id))
                .await
                .map_err(|e| anyhow::anyhow!("job document {}: {e}", listed.id))?;
            let doc: JobDoc = msg::decode(&m.payload).context("job document")?;
            doc.check(name, &listed)?;
            Ok::<_, anyhow::Error>((listed.id, doc.job.revision))
        })
        .buffer_unordered(DOCS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    for id in changes.remove {
        mine.jobs.remove(&id);
    }
    mine.jobs.extend(docs);

    let now = chrono::Utc::now();
    let listed: HashSet<Uuid> = manifest.starts.iter().map(|s| s.run_id).collect();
    mine.starts.retain(|id| listed.contains(id));
    for start in &manifest.starts {
        if !mine.starts.insert(start.run_id) {
            continue;
        }
        let outcome = match start.verdict(now) {
            StartVerdict::Run => Outcome::Succeeded,
            StartVerdict::Expired => Outcome::Expired,
        };
        let record = RunRecord {
            params: Default::default(),
            v: 1,
            run_id: start.run_id,
            job_id: start.job_id,
            job: start.job.clone(),
            target: name.clone(),
            trigger: Trigger::Manual,
            outcome,
            started_at: now,
            finished_at: Some(now),
            message: String::new(),
            steps: vec![],
        };
        publish(link, subjects.result_run(name, start.job_id), record.msg_id(), msg::encode(&record));
    }
    mine.applied = Some(manifest.applied());
    let record =
        AppliedRecord { v: 1, target: name.clone(), applied: manifest.applied(), at: now, refused: None, errors: vec![] };
    publish(link, subjects.result_applied(name), record.msg_id(), msg::encode(&record));
    Ok(())
}

/// Publishes a result with its de-duplication id, in the background (the
/// agent spools results and flushes them apart from the poll).
fn publish(link: &Link, subject: String, msg_id: String, body: Vec<u8>) {
    let js = link.js.clone();
    tokio::spawn(async move {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        if let Ok(ack) = js.publish_with_headers(subject, headers, body.into()).await {
            ack.await.ok();
        }
    });
}
