//! Desired state: what a target must hold, published by the master on
//! `MUSTER_DESIRED` and read by the target with Direct Get.
//!
//! Why documents instead of a queue: a durable consumer per target costs the
//! server per target (10,000 targets took 49–89 s to enlist and 717 MB), while
//! one small document per target, read by a Direct Get whose API subject
//! carries the target's name, costs next to nothing while idle and can be
//! confined by a subject permission (`docs/DESIGN.md`, "Delivery").
//!
//! A target has one [`Manifest`] (`muster.target.<t>.state`) and one
//! [`JobDoc`] per assigned job (`muster.target.<t>.job.<job-id>`). The
//! manifest names the jobs with their revisions, so a poll that finds the
//! same revision costs one request and a changed one fetches only the jobs
//! whose revision moved. The manifest has two halves:
//!
//! - the *derived* half ([`DerivedState`]: jobs, poll interval, defected),
//!   which the master computes from its records at any time; its
//!   [`Digest`] is what reconcile compares, so a crash between a record
//!   write and a publish is repaired without replaying anything;
//! - the *owned* half (starts, stops, clock reference): one-shot commands
//!   whose only home is the manifest, each with an expiry, removed by the
//!   master once answered.
//!
//! Everything here is pure: time is passed in (`now`), so expiry is tested
//! without clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{JobDef, JobSpec, Step};
use crate::name::{JobName, TargetName};
use crate::{MAX_BODY_BYTES, PROTOCOL_VERSION};

fn v() -> u32 {
    PROTOCOL_VERSION
}

// ---- limits and defaults ---------------------------------------------------------

/// Most jobs one target holds. With the other limits, the largest manifest
/// stays under [`MAX_BODY_BYTES`] (a unit test builds the worst case).
pub const MAX_JOBS_PER_TARGET: usize = 1000;

/// Most starts waiting in one manifest. A start leaves once its run record
/// arrives, or [`PRUNE_GRACE`] after it expired.
pub const MAX_PENDING_STARTS: usize = 1000;

/// Most stops waiting in one manifest.
pub const MAX_PENDING_STOPS: usize = 1000;

/// How long a start or stop may wait for its target (`job start --expires`).
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);

/// Shortest expiry accepted: less than a force-poll round is a typo.
pub const MIN_EXPIRY: Duration = Duration::from_secs(10);

/// Longest expiry accepted: a start posted a week ago is not what anyone
/// expects to run now.
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long after its expiry an unread start stays in the manifest before
/// the master removes it and records it `expired` itself. Until then only
/// the target decides; the grace covers a target clock that is behind.
pub const PRUNE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Most `musterctl exec` starts waiting in one manifest (they count among
/// [`MAX_PENDING_STARTS`] too): each carries its command line, so they are
/// bounded apart to keep the largest manifest under [`MAX_BODY_BYTES`].
pub const MAX_PENDING_EXECS: usize = 32;

/// Longest command line an exec carries: its argv as JSON, escapes and all
/// (what it adds to the manifest).
pub const MAX_EXEC_BYTES: usize = 4096;

/// The name every exec run is recorded under. Job names are letters,
/// digits, `-` and `_`, and the master refuses to create a job of this
/// name ([`is_reserved_job_name`]), so no user job is ever confused with it;
/// each exec has a job id of its own, so its runs are found by that id.
pub const EXEC_JOB_NAME: &str = "_exec";

/// Whether a job name belongs to Muster ([`EXEC_JOB_NAME`]) and cannot be
/// created by users.
pub fn is_reserved_job_name(name: &JobName) -> bool {
    name.as_str() == EXEC_JOB_NAME
}

/// Header on every manifest message: its [`ManifestSummary`] as JSON, so the
/// master can compare 100,000 manifests with a headers-only read.
pub const SUMMARY_HEADER: &str = "Muster-Summary";

/// `Muster-Kind` values of the documents on `MUSTER_DESIRED`.
pub const KIND_MANIFEST: &str = "manifest";
pub const KIND_JOB: &str = "job";

// ---- revisions ---------------------------------------------------------------------

/// A manifest's revision: +1 on every publish that changes it. Within one
/// epoch it only grows (each publish is a compare-and-set on the subject's
/// last sequence), so a target ignores a lower one (a replica that lags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// Nothing applied yet.
    pub const ZERO: Revision = Revision(0);

    #[must_use]
    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a target holds, as it reports it (poll report, [`AppliedRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Applied {
    /// The manifest lineage: a new one starts only if the desired-state
    /// stream was lost and rebuilt.
    pub epoch: Uuid,
    pub revision: Revision,
    /// The manifest's [`Manifest::changes`]: unread = published − applied.
    pub changes: u64,
}

// ---- the manifest ------------------------------------------------------------------

/// A target's manifest, on `muster.target.<t>.state` (one message kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default = "v")]
    pub v: u32,
    /// Must equal the subject's target; a target refuses anything else.
    pub target: TargetName,
    /// Chosen when the target's first manifest is published, then carried.
    pub epoch: Uuid,
    pub revision: Revision,
    /// Download-list rows posted to this target up to this revision.
    pub changes: u64,
    pub published_at: DateTime<Utc>,
    /// Jobs the target must hold, sorted by id; the rest from this master go.
    #[serde(default)]
    pub jobs: Vec<JobRef>,
    #[serde(default)]
    pub starts: Vec<StartEntry>,
    #[serde(default)]
    pub stops: Vec<StopEntry>,
    /// `None`: the agent's own configured interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_secs: Option<u64>,
    /// The latest `sync-time`; a target measures its skew on a new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockRef>,
    /// The target has left this master: it drops the master's jobs, does not
    /// enlist itself again, and keeps reading this manifest to learn when an
    /// operator enlists it again.
    #[serde(default)]
    pub defected: bool,
}

/// One job the target must hold, at least at this revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub id: Uuid,
    pub name: JobName,
    /// The job's [`JobDef::revision`].
    pub revision: u64,
}

/// Run a job once, as `run_id`, unless expired when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEntry {
    /// UUIDv7, chosen by the master: the run's identity everywhere.
    pub run_id: Uuid,
    pub job_id: Uuid,
    pub job: JobName,
    /// The manifest revision that first carried it.
    pub revision: Revision,
    pub posted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `musterctl exec`: the command to run instead of a held job. The
    /// target runs it once as a one-step job under `job_id` (one per exec,
    /// chosen by the master) and [`EXEC_JOB_NAME`], and stores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCommand>,
    /// The job's parameters for this run, resolved by the master (defaults
    /// filled in); the step gets them as `MUSTER_PARAM_<NAME>`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: crate::params::Values,
    /// Its secret parameter values, sealed for the target's key only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::sealed::Sealed>,
}

/// The one-off command of an exec start: an argv, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    /// The run is stopped (recorded `timed_out`) after this long.
    pub timeout_secs: u64,
}

/// A refused exec command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("give the command to run after `--`")]
    Empty,
    #[error("the command line is {len} bytes; the limit is {MAX_EXEC_BYTES}")]
    TooLong { len: usize },
    #[error("the timeout must be from 1 s to {} s", MAX_EXPIRY.as_secs())]
    Timeout,
}

impl ExecCommand {
    /// # Errors
    /// [`ExecError`] for an empty or too long command line, or a timeout
    /// outside 1 s..=[`MAX_EXPIRY`].
    pub fn check(&self) -> Result<(), ExecError> {
        if self.argv.first().is_none_or(String::is_empty) {
            return Err(ExecError::Empty);
        }
        let len = serde_json::to_vec(&self.argv).expect("strings serialise").len();
        if len > MAX_EXEC_BYTES {
            return Err(ExecError::TooLong { len });
        }
        if !(1..=MAX_EXPIRY.as_secs()).contains(&self.timeout_secs) {
            return Err(ExecError::Timeout);
        }
        Ok(())
    }

    /// The one-step job the target runs for it, never stored.
    pub fn job(&self, job_id: Uuid) -> JobDef {
        let mut spec = JobSpec::from_commands(exec_job_name(), &[]);
        spec.steps.push(Step { argv: Some(self.argv.clone()), ..Step::default() });
        spec.timeout_secs = Some(self.timeout_secs);
        spec.normalize();
        JobDef { id: job_id, revision: 0, spec }
    }
}

/// [`EXEC_JOB_NAME`] as a job name.
pub fn exec_job_name() -> JobName {
    JobName::new(EXEC_JOB_NAME).expect("a valid name")
}

/// Stop the job's runs that began before `posted_at` (30 s allowed for
/// clock skew, as a queued stop always did), unless expired when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopEntry {
    /// UUIDv7: a target handles each stop once.
    pub id: Uuid,
    pub job_id: Uuid,
    pub job: JobName,
    /// The manifest revision that first carried it; the master removes the
    /// entry once the target applied that revision.
    pub revision: Revision,
    pub posted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The master's clock at `sync-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockRef {
    pub id: Uuid,
    pub master_time: DateTime<Utc>,
}

/// What a target may do with a start it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartVerdict {
    /// Run it (once: the caller also checks that the run id is new).
    Run,
    /// Record it `expired` under its run id; never run it.
    Expired,
}

impl StartEntry {
    /// A start posted at `now`, waiting at most `expires_in`; its revision is
    /// set when it is added to a manifest ([`Manifest::add_start`]).
    ///
    /// # Errors
    /// [`ExpiryError`] when `expires_in` is outside [`MIN_EXPIRY`]..=[`MAX_EXPIRY`].
    pub fn new(
        run_id: Uuid,
        job_id: Uuid,
        job: JobName,
        now: DateTime<Utc>,
        expires_in: Duration,
    ) -> Result<StartEntry, ExpiryError> {
        let expires_at = now + check_expiry(expires_in)?;
        Ok(StartEntry {
            run_id,
            job_id,
            job,
            revision: Revision::ZERO,
            posted_at: now,
            expires_at,
            exec: None,
            params: Default::default(),
            sealed: None,
        })
    }

    /// Why its run happens: an exec, or a manual start.
    pub fn trigger(&self) -> crate::msg::Trigger {
        if self.exec.is_some() {
            crate::msg::Trigger::Exec
        } else {
            crate::msg::Trigger::Manual
        }
    }

    /// The target's decision, by its own clock.
    pub fn verdict(&self, now: DateTime<Utc>) -> StartVerdict {
        if now < self.expires_at {
            StartVerdict::Run
        } else {
            StartVerdict::Expired
        }
    }

    /// Whether the master may remove it unanswered and record it `expired`.
    pub fn prunable(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at + grace()
    }
}

impl StopEntry {
    /// A stop posted at `now`; its revision is set by [`Manifest::add_stop`].
    ///
    /// # Errors
    /// As [`StartEntry::new`].
    pub fn new(id: Uuid, job_id: Uuid, job: JobName, now: DateTime<Utc>, expires_in: Duration) -> Result<StopEntry, ExpiryError> {
        let expires_at = now + check_expiry(expires_in)?;
        Ok(StopEntry { id, job_id, job, revision: Revision::ZERO, posted_at: now, expires_at })
    }

    /// Whether a target reading it at `now` still acts on it.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }
}

fn grace() -> chrono::Duration {
    chrono::Duration::from_std(PRUNE_GRACE).expect("a day fits")
}

/// Checks a requested expiry and converts it for date arithmetic.
///
/// # Errors
/// [`ExpiryError`] outside [`MIN_EXPIRY`]..=[`MAX_EXPIRY`].
pub fn check_expiry(expires_in: Duration) -> Result<chrono::Duration, ExpiryError> {
    if !(MIN_EXPIRY..=MAX_EXPIRY).contains(&expires_in) {
        return Err(ExpiryError { secs: expires_in.as_secs() });
    }
    Ok(chrono::Duration::from_std(expires_in).expect("at most a week"))
}

/// A refused `--expires`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expiry of {secs} s is outside {}..={} s", MIN_EXPIRY.as_secs(), MAX_EXPIRY.as_secs())]
pub struct ExpiryError {
    pub secs: u64,
}

/// The half of a manifest the master derives from its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedState {
    /// Sorted by id ([`DerivedState::new`] sorts).
    pub jobs: Vec<JobRef>,
    pub poll_interval_secs: Option<u64>,
    pub defected: bool,
}

impl DerivedState {
    /// Sorts the jobs by id, so equal states serialise (and digest) equally.
    /// A defected target holds no jobs.
    pub fn new(mut jobs: Vec<JobRef>, poll_interval_secs: Option<u64>, defected: bool) -> DerivedState {
        if defected {
            jobs.clear();
        }
        jobs.sort_by_key(|j| j.id);
        DerivedState { jobs, poll_interval_secs, defected }
    }

    /// A stable fingerprint: FNV-1a over the canonical JSON. Stable across
    /// Rust versions and master replicas (a unit test pins a value); a
    /// change to it only makes the next reconcile republish everything once.
    pub fn digest(&self) -> Digest {
        let mut jobs: Vec<&JobRef> = self.jobs.iter().collect();
        jobs.sort_by_key(|j| j.id);
        #[derive(Serialize)]
        struct Canonical<'a> {
            jobs: Vec<(&'a Uuid, &'a JobName, u64)>,
            poll_interval_secs: Option<u64>,
            defected: bool,
        }
        let canonical = Canonical {
            jobs: jobs.iter().map(|j| (&j.id, &j.name, j.revision)).collect(),
            poll_interval_secs: self.poll_interval_secs,
            defected: self.defected,
        };
        Digest(fnv1a64(&serde_json::to_vec(&canonical).expect("serialises")))
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Fingerprint of a [`DerivedState`], written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub u64);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Digest {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Digest)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the master keeps in [`SUMMARY_HEADER`]: enough to reconcile, count
/// unread changes and find due expiries without reading bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSummary {
    pub epoch: Uuid,
    pub revision: Revision,
    pub changes: u64,
    pub digest: Digest,
    /// When [`Manifest::prune`] would next remove something; absent when
    /// nothing waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime<Utc>>,
}

/// Which job documents a poll must fetch, and which local jobs go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobChanges<'a> {
    /// Listed jobs the target lacks, or holds at a lower revision.
    pub fetch: Vec<&'a JobRef>,
    /// Jobs from this master the target holds and the manifest does not list.
    pub remove: Vec<Uuid>,
}

/// What [`Manifest::prune`] took out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Starts never answered, long expired: the master records each `expired`.
    pub starts: Vec<StartEntry>,
    /// Stops applied by the target, or expired.
    pub stops: usize,
}

impl Manifest {
    /// A target's first manifest (revision 1). `epoch` is new (`Uuid::new_v4`).
    pub fn first(target: TargetName, epoch: Uuid, derived: DerivedState, now: DateTime<Utc>) -> Manifest {
        Manifest {
            v: PROTOCOL_VERSION,
            target,
            epoch,
            revision: Revision(1),
            changes: 0,
            published_at: now,
            jobs: derived.jobs,
            starts: Vec::new(),
            stops: Vec::new(),
            poll_interval_secs: derived.poll_interval_secs,
            clock: None,
            defected: derived.defected,
        }
    }

    /// The next revision: the derived half replaced, the owned half carried
    /// (dropped when the target defected), the revision one higher. The
    /// caller adds what the change posts (starts, `changes`).
    #[must_use]
    pub fn successor(&self, derived: DerivedState, now: DateTime<Utc>) -> Manifest {
        let defected = derived.defected;
        Manifest {
            v: PROTOCOL_VERSION,
            target: self.target.clone(),
            epoch: self.epoch,
            revision: self.revision.next(),
            changes: self.changes,
            published_at: now,
            jobs: derived.jobs,
            starts: if defected { Vec::new() } else { self.starts.clone() },
            stops: if defected { Vec::new() } else { self.stops.clone() },
            poll_interval_secs: derived.poll_interval_secs,
            clock: self.clock,
            defected,
        }
    }

    pub fn derived(&self) -> DerivedState {
        DerivedState::new(self.jobs.clone(), self.poll_interval_secs, self.defected)
    }

    pub fn applied(&self) -> Applied {
        Applied { epoch: self.epoch, revision: self.revision, changes: self.changes }
    }

    pub fn summary(&self) -> ManifestSummary {
        ManifestSummary {
            epoch: self.epoch,
            revision: self.revision,
            changes: self.changes,
            digest: self.derived().digest(),
            due: self.due(),
        }
    }

    /// When [`Manifest::prune`] would next remove an unanswered entry.
    pub fn due(&self) -> Option<DateTime<Utc>> {
        let starts = self.starts.iter().map(|s| s.expires_at + grace());
        let stops = self.stops.iter().map(|s| s.expires_at);
        starts.chain(stops).min()
    }

    /// Whether a target holding `held` must apply this manifest: another
    /// epoch, or a higher revision. A lower revision is a lagging replica.
    pub fn is_news_to(&self, held: Option<&Applied>) -> bool {
        match held {
            None => true,
            Some(h) => h.epoch != self.epoch || self.revision > h.revision,
        }
    }

    /// The job documents to fetch and the local jobs to remove, given the
    /// revision of every job from this master the target holds.
    pub fn job_changes<'a>(&'a self, held: &BTreeMap<Uuid, u64>) -> JobChanges<'a> {
        let listed: BTreeSet<Uuid> = self.jobs.iter().map(|j| j.id).collect();
        JobChanges {
            fetch: self.jobs.iter().filter(|j| held.get(&j.id).is_none_or(|rev| *rev < j.revision)).collect(),
            remove: held.keys().filter(|id| !listed.contains(id)).copied().collect(),
        }
    }

    /// Adds a start, stamped with this manifest's revision.
    ///
    /// # Errors
    /// [`ManifestError::TooMany`] at [`MAX_PENDING_STARTS`];
    /// [`ManifestError::Duplicate`] for a run id already waiting;
    /// [`ManifestError::Defected`] on a defected target.
    pub fn add_start(&mut self, mut start: StartEntry) -> Result<(), ManifestError> {
        if self.defected {
            return Err(ManifestError::Defected);
        }
        if self.starts.len() >= MAX_PENDING_STARTS {
            return Err(ManifestError::TooMany { what: "pending starts", count: self.starts.len() + 1, max: MAX_PENDING_STARTS });
        }
        if self.starts.iter().any(|s| s.run_id == start.run_id) {
            return Err(ManifestError::Duplicate { what: "run id", id: start.run_id });
        }
        if let Some(exec) = &start.exec {
            let execs = self.starts.iter().filter(|s| s.exec.is_some()).count();
            if execs >= MAX_PENDING_EXECS {
                return Err(ManifestError::TooMany { what: "pending execs", count: execs + 1, max: MAX_PENDING_EXECS });
            }
            exec.check().map_err(|e| ManifestError::BadExec { id: start.run_id, error: e })?;
        }
        start.revision = self.revision;
        self.starts.push(start);
        Ok(())
    }

    /// Adds a stop, stamped with this manifest's revision.
    ///
    /// # Errors
    /// As [`Manifest::add_start`], with [`MAX_PENDING_STOPS`].
    pub fn add_stop(&mut self, mut stop: StopEntry) -> Result<(), ManifestError> {
        if self.defected {
            return Err(ManifestError::Defected);
        }
        if self.stops.len() >= MAX_PENDING_STOPS {
            return Err(ManifestError::TooMany { what: "pending stops", count: self.stops.len() + 1, max: MAX_PENDING_STOPS });
        }
        if self.stops.iter().any(|s| s.id == stop.id) {
            return Err(ManifestError::Duplicate { what: "stop id", id: stop.id });
        }
        stop.revision = self.revision;
        self.stops.push(stop);
        Ok(())
    }

    /// Removes the start answered by a run record with this run id.
    pub fn remove_start(&mut self, run_id: Uuid) -> Option<StartEntry> {
        let at = self.starts.iter().position(|s| s.run_id == run_id)?;
        Some(self.starts.remove(at))
    }

    /// Removes what no longer waits: starts unanswered [`PRUNE_GRACE`] past
    /// their expiry (returned, to be recorded `expired`), stops the target
    /// applied (`applied` at or above their revision, same epoch) or that
    /// expired.
    pub fn prune(&mut self, now: DateTime<Utc>, applied: Option<&Applied>) -> Pruned {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.starts).into_iter().partition(|s| s.prunable(now));
        self.starts = kept;
        let seen = |s: &StopEntry| applied.is_some_and(|a| a.epoch == self.epoch && a.revision >= s.revision);
        let before = self.stops.len();
        let stops = std::mem::take(&mut self.stops);
        self.stops = stops.into_iter().filter(|s| s.is_live(now) && !seen(s)).collect();
        Pruned { starts: gone, stops: before - self.stops.len() }
    }

    /// Checks what a target must check before applying anything.
    ///
    /// # Errors
    /// The first [`ManifestError`] found.
    pub fn validate(&self, target: &TargetName) -> Result<(), ManifestError> {
        if &self.target != target {
            return Err(ManifestError::OtherTarget { named: self.target.clone(), expected: target.clone() });
        }
        if self.revision == Revision::ZERO {
            return Err(ManifestError::NoRevision);
        }
        for (what, count, max) in [
            ("jobs", self.jobs.len(), MAX_JOBS_PER_TARGET),
            ("pending starts", self.starts.len(), MAX_PENDING_STARTS),
            ("pending stops", self.stops.len(), MAX_PENDING_STOPS),
            ("pending execs", self.starts.iter().filter(|s| s.exec.is_some()).count(), MAX_PENDING_EXECS),
        ] {
            if count > max {
                return Err(ManifestError::TooMany { what, count, max });
            }
        }
        if self.defected && !(self.jobs.is_empty() && self.starts.is_empty() && self.stops.is_empty()) {
            return Err(ManifestError::DefectedWithWork);
        }
        if self.poll_interval_secs == Some(0) {
            return Err(ManifestError::ZeroPollInterval);
        }
        unique("job id", self.jobs.iter().map(|j| j.id))?;
        unique("run id", self.starts.iter().map(|s| s.run_id))?;
        for s in &self.starts {
            if let Some(e) = s.exec.as_ref().and_then(|exec| exec.check().err()) {
                return Err(ManifestError::BadExec { id: s.run_id, error: e });
            }
        }
        unique("stop id", self.stops.iter().map(|s| s.id))?;
        let windows = self.starts.iter().map(|s| (s.run_id, s.posted_at, s.expires_at));
        let windows = windows.chain(self.stops.iter().map(|s| (s.id, s.posted_at, s.expires_at)));
        for (id, posted, expires) in windows {
            if expires <= posted {
                return Err(ManifestError::BadExpiry { id });
            }
        }
        Ok(())
    }
}

fn unique(what: &'static str, ids: impl Iterator<Item = Uuid>) -> Result<(), ManifestError> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(ManifestError::Duplicate { what, id });
        }
    }
    Ok(())
}

/// Why a manifest is refused (by the target) or a change to it (by the master).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest names target '{named}', not '{expected}'")]
    OtherTarget { named: TargetName, expected: TargetName },
    #[error("manifest has revision 0")]
    NoRevision,
    #[error("{count} {what} is over the limit of {max} per target")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("{what} {id} appears twice")]
    Duplicate { what: &'static str, id: Uuid },
    #[error("entry {id} expires before it was posted")]
    BadExpiry { id: Uuid },
    #[error("a defected target's manifest lists jobs, starts or stops")]
    DefectedWithWork,
    #[error("the target has defected; enlist it again first")]
    Defected,
    #[error("poll interval 0")]
    ZeroPollInterval,
    #[error("exec start {id}: {error}")]
    BadExec { id: Uuid, error: ExecError },
}

// ---- job documents ---------------------------------------------------------------

/// One job of one target, on `muster.target.<t>.job.<job-id>`: a copy per
/// target, so a target can read only jobs assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDoc {
    #[serde(default = "v")]
    pub v: u32,
    pub target: TargetName,
    pub job: JobDef,
}

impl JobDoc {
    /// Checks a fetched document against the manifest's entry for it.
    ///
    /// # Errors
    /// [`DocError::Stale`] (transient: retry at the next poll) when it is
    /// older than listed; [`DocError::Invalid`] (reported, the target keeps
    /// its previous copy) otherwise.
    pub fn check(&self, target: &TargetName, listed: &JobRef) -> Result<(), DocError> {
        if &self.target != target {
            return Err(DocError::Invalid(format!("document names target '{}', not '{target}'", self.target)));
        }
        if self.job.id != listed.id {
            return Err(DocError::Invalid(format!("document holds job {}, not {}", self.job.id, listed.id)));
        }
        if self.job.revision < listed.revision {
            return Err(DocError::Stale { have: self.job.revision, listed: listed.revision });
        }
        self.job.spec.validate().map_err(|e| DocError::Invalid(format!("job refused: {e}")))
    }
}

/// Why a job document was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// Missing or older than the manifest says (a lagging replica): not an
    /// error to report, the poll's revision is simply not applied yet.
    #[error("job document is at revision {have}, the manifest lists {listed}")]
    Stale { have: u64, listed: u64 },
    #[error("{0}")]
    Invalid(String),
}

// ---- what the target reports -------------------------------------------------------

/// The outcome of applying one manifest revision, on `muster.result.<t>.applied`.
/// Published only when a poll applied or refused a new revision, so idle
/// polls add nothing to the results stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    #[serde(default = "v")]
    pub v: u32,
    pub target: TargetName,
    /// The revision this record is about.
    pub applied: Applied,
    pub at: DateTime<Utc>,
    /// Set when the whole manifest was refused; the target kept its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Jobs that could not be applied (each keeps the target's previous copy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<JobError>,
}

impl AppliedRecord {
    /// The JetStream de-duplication id: one record per target and revision.
    pub fn msg_id(&self) -> String {
        format!("applied-{}-{}-{}", self.target, self.applied.epoch, self.applied.revision)
    }
}

/// A job a target could not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub job_id: Uuid,
    pub job: JobName,
    pub error: String,
}

/// Whether an encoded document fits the desired-state stream.
///
/// # Errors
/// The size and the limit.
pub fn check_size(encoded: &[u8]) -> Result<(), SizeError> {
    if encoded.len() > MAX_BODY_BYTES {
        return Err(SizeError { len: encoded.len() });
    }
    Ok(())
}

/// A document over [`MAX_BODY_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("document of {len} bytes is over the {MAX_BODY_BYTES}-byte limit")]
pub struct SizeError {
    pub len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;
    use crate::msg::{decode, encode};

    fn t(name: &str) -> TargetName {
        TargetName::new(name).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn job(n: usize, name_len: usize, revision: u64) -> JobRef {
        let name = format!("{n:0>width$}", width = name_len);
        JobRef { id: Uuid::from_u128(n as u128 + 1), name: JobName::new(name).unwrap(), revision }
    }

    fn manifest() -> Manifest {
        let jobs = (0..3).map(|n| job(n, 8, 2)).collect();
        Manifest::first(t("web01"), Uuid::from_u128(7), DerivedState::new(jobs, Some(60), false), at("2026-12-01T10:00:00Z"))
    }

    #[test]
    fn round_trip_through_decode() {
        let now = at("2026-12-01T10:00:00Z");
        let mut m = manifest();
        let j = m.jobs[0].clone();
        m.add_start(StartEntry::new(Uuid::now_v7(), j.id, j.name.clone(), now, DEFAULT_EXPIRY).unwrap()).unwrap();
        m.add_stop(StopEntry::new(Uuid::now_v7(), j.id, j.name, now, DEFAULT_EXPIRY).unwrap()).unwrap();
        m.clock = Some(ClockRef { id: Uuid::now_v7(), master_time: now });
        let back: Manifest = decode(&encode(&m)).unwrap();
        assert_eq!(back, m);
        assert!(String::from_utf8(encode(&m)).unwrap().starts_with(r#"{"v":1,"#));

        let doc = JobDoc {
            v: PROTOCOL_VERSION,
            target: t("web01"),
            job: JobDef {
                id: Uuid::now_v7(),
                revision: 3,
                spec: JobSpec::from_commands(JobName::new("j").unwrap(), &["true".into()]),
            },
        };
        assert_eq!(decode::<JobDoc>(&encode(&doc)).unwrap(), doc);

        let rec = AppliedRecord { v: 1, target: t("web01"), applied: m.applied(), at: now, refused: None, errors: Vec::new() };
        assert_eq!(decode::<AppliedRecord>(&encode(&rec)).unwrap(), rec);
        assert_eq!(rec.msg_id(), format!("applied-web01-{}-1", Uuid::from_u128(7)));
        let summary = m.summary();
        assert_eq!(serde_json::from_slice::<ManifestSummary>(&encode(&summary)).unwrap(), summary);
    }

    #[test]
    fn unknown_versions_and_shapes_are_refused() {
        assert!(decode::<Manifest>(br#"{"v":2,"target":"web01"}"#).is_err());
        assert!(decode::<Manifest>(br#"{"v":1,"target":"a.b","epoch":"00000000-0000-0000-0000-000000000000","revision":1,"changes":0,"published_at":"2026-12-01T00:00:00Z"}"#).is_err());
        let minimal: Manifest = decode(br#"{"v":1,"target":"web01","epoch":"00000000-0000-0000-0000-000000000000","revision":1,"changes":0,"published_at":"2026-12-01T00:00:00Z"}"#).unwrap();
        assert!(minimal.jobs.is_empty() && !minimal.defected && minimal.poll_interval_secs.is_none());
    }

    #[test]
    fn the_largest_manifest_fits_one_message() {
        let now = at("2026-12-01T10:00:00.123456789Z");
        let long = 64;
        let jobs: Vec<JobRef> = (0..MAX_JOBS_PER_TARGET).map(|n| job(n, long, u64::MAX)).collect();
        let mut m = Manifest::first(t(&"t".repeat(64)), Uuid::now_v7(), DerivedState::new(jobs, Some(28_800), false), now);
        m.revision = Revision(u64::MAX);
        m.changes = u64::MAX;
        let name = JobName::new("j".repeat(long)).unwrap();
        for n in 0..MAX_PENDING_STARTS {
            let mut s = StartEntry::new(Uuid::now_v7(), Uuid::now_v7(), name.clone(), now, MAX_EXPIRY).unwrap();
            if n < MAX_PENDING_EXECS {
                // The longest command line: `["…"]` is four bytes more than its one argument.
                s.exec = Some(ExecCommand { argv: vec!["x".repeat(MAX_EXEC_BYTES - 4)], timeout_secs: MAX_EXPIRY.as_secs() });
            }
            m.add_start(s).unwrap();
        }
        for _ in 0..MAX_PENDING_STOPS {
            m.add_stop(StopEntry::new(Uuid::now_v7(), Uuid::now_v7(), name.clone(), now, MAX_EXPIRY).unwrap()).unwrap();
        }
        m.clock = Some(ClockRef { id: Uuid::now_v7(), master_time: now });
        m.validate(&m.target.clone()).unwrap();
        let body = encode(&m);
        assert!(check_size(&body).is_ok(), "worst case is {} bytes", body.len());
        // Hundreds of jobs and a few starts, as a busy target has, is far smaller.
        let typical: Vec<JobRef> = (0..500).map(|n| job(n, 20, 40)).collect();
        let typical = Manifest::first(t("web01"), Uuid::now_v7(), DerivedState::new(typical, None, false), now);
        assert!(encode(&typical).len() < 64 * 1024, "{}", encode(&typical).len());
        assert_eq!(check_size(&vec![b' '; MAX_BODY_BYTES + 1]), Err(SizeError { len: MAX_BODY_BYTES + 1 }));
    }

    #[test]
    fn limits_are_enforced_when_adding() {
        let now = at("2026-12-01T10:00:00Z");
        let mut m = manifest();
        let name = m.jobs[0].name.clone();
        for _ in 0..MAX_PENDING_STARTS {
            m.add_start(StartEntry::new(Uuid::now_v7(), m.jobs[0].id, name.clone(), now, DEFAULT_EXPIRY).unwrap()).unwrap();
        }
        let more = StartEntry::new(Uuid::now_v7(), m.jobs[0].id, name.clone(), now, DEFAULT_EXPIRY).unwrap();
        assert!(matches!(m.add_start(more), Err(ManifestError::TooMany { .. })));
        let again = m.starts[0].clone();
        m.starts.pop();
        assert!(matches!(m.add_start(again), Err(ManifestError::Duplicate { .. })));
    }

    #[test]
    fn exec_starts_are_bounded_and_checked() {
        let now = at("2026-12-01T10:00:00Z");
        let mut m = manifest();
        let exec = |argv: Vec<String>, timeout_secs| {
            let mut s = StartEntry::new(Uuid::now_v7(), Uuid::now_v7(), exec_job_name(), now, DEFAULT_EXPIRY).unwrap();
            s.exec = Some(ExecCommand { argv, timeout_secs });
            s
        };
        let ok = || exec(vec!["uptime".into()], 60);
        assert_eq!(ok().trigger(), crate::msg::Trigger::Exec);
        for _ in 0..MAX_PENDING_EXECS {
            m.add_start(ok()).unwrap();
        }
        assert!(matches!(m.add_start(ok()), Err(ManifestError::TooMany { what: "pending execs", .. })));
        m.validate(&t("web01")).unwrap();
        let mut m = manifest();
        for (bad, why) in [
            (exec(vec![], 60), ExecError::Empty),
            (exec(vec![String::new()], 60), ExecError::Empty),
            (
                exec(vec!["\u{1}".repeat(MAX_EXEC_BYTES / 6 + 1)], 60),
                ExecError::TooLong { len: (MAX_EXEC_BYTES / 6 + 1) * 6 + 4 },
            ),
            (exec(vec!["true".into()], 0), ExecError::Timeout),
        ] {
            assert_eq!(m.add_start(bad.clone()), Err(ManifestError::BadExec { id: bad.run_id, error: why }));
            let mut forged = m.clone();
            forged.starts.push(bad);
            assert!(matches!(forged.validate(&t("web01")), Err(ManifestError::BadExec { .. })), "a target checks it too");
        }
        let job = exec(vec!["echo".into(), "a b".into()], 5).exec.unwrap().job(Uuid::from_u128(4));
        assert_eq!((job.id, job.spec.name.as_str(), job.spec.timeout_secs), (Uuid::from_u128(4), EXEC_JOB_NAME, Some(5)));
        assert_eq!(job.spec.steps.len(), 1);
        assert_eq!(job.spec.steps[0].argv, Some(vec!["echo".to_owned(), "a b".to_owned()]));
        job.spec.validate().unwrap();
        assert!(is_reserved_job_name(&exec_job_name()) && !is_reserved_job_name(&JobName::new("exec").unwrap()));
    }

    #[test]
    fn expiry_is_decided_by_the_clock_passed_in() {
        let posted = at("2026-12-01T10:00:00Z");
        let s = StartEntry::new(Uuid::now_v7(), Uuid::now_v7(), JobName::new("j").unwrap(), posted, DEFAULT_EXPIRY).unwrap();
        assert_eq!(s.expires_at, at("2026-12-01T11:00:00Z"));
        assert_eq!(s.verdict(at("2026-12-01T10:59:59Z")), StartVerdict::Run);
        assert_eq!(s.verdict(at("2026-12-01T11:00:00Z")), StartVerdict::Expired, "never run late");
        assert!(!s.prunable(at("2026-12-02T10:59:59Z")), "the target decides during the grace");
        assert!(s.prunable(at("2026-12-02T11:00:00Z")));
        let ten_min =
            StartEntry::new(Uuid::now_v7(), Uuid::now_v7(), JobName::new("j").unwrap(), posted, Duration::from_secs(600))
                .unwrap();
        assert_eq!(ten_min.verdict(at("2026-12-01T10:10:00Z")), StartVerdict::Expired);
        assert_eq!(check_expiry(Duration::from_secs(9)), Err(ExpiryError { secs: 9 }));
        assert!(check_expiry(MAX_EXPIRY + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn prune_removes_answered_and_long_expired_entries_only() {
        let now = at("2026-12-01T10:00:00Z");
        let mut m = manifest();
        let j = m.jobs[0].clone();
        let old = StartEntry::new(Uuid::now_v7(), j.id, j.name.clone(), now, MIN_EXPIRY).unwrap();
        let fresh = StartEntry::new(Uuid::now_v7(), j.id, j.name.clone(), now, DEFAULT_EXPIRY).unwrap();
        m.add_start(old.clone()).unwrap();
        m.add_start(fresh.clone()).unwrap();
        m.add_stop(StopEntry::new(Uuid::now_v7(), j.id, j.name.clone(), now, DEFAULT_EXPIRY).unwrap()).unwrap();
        assert_eq!(m.due(), Some(now + chrono::Duration::hours(1)), "the stop's expiry comes first");

        // A day after the short one expired: it goes, unanswered; the stop is unapplied but expired.
        let later = now + chrono::Duration::seconds(10) + grace();
        let mut n = m.successor(m.derived(), later);
        let pruned = n.prune(later, None);
        assert_eq!(pruned.starts, vec![StartEntry { revision: Revision(1), ..old }]);
        assert_eq!(pruned.stops, 1);
        assert_eq!(n.starts.len(), 1);

        // A stop goes once the target applied its revision, in the same epoch only.
        let mut k = m.clone();
        let other_epoch = Applied { epoch: Uuid::from_u128(8), revision: Revision(5), changes: 0 };
        assert_eq!(k.prune(now, Some(&other_epoch)).stops, 0);
        assert_eq!(k.prune(now, Some(&m.applied())).stops, 1);
        assert_eq!(k.remove_start(fresh.run_id).map(|s| s.run_id), Some(fresh.run_id));
        assert_eq!(k.remove_start(fresh.run_id), None, "a second record changes nothing");
    }

    #[test]
    fn a_poll_fetches_only_what_changed() {
        let m = manifest();
        let mut held = BTreeMap::new();
        assert_eq!(m.job_changes(&held).fetch.len(), 3);
        held.insert(m.jobs[0].id, 2);
        held.insert(m.jobs[1].id, 1);
        held.insert(m.jobs[2].id, 3);
        let gone = Uuid::from_u128(99);
        held.insert(gone, 1);
        let changes = m.job_changes(&held);
        assert_eq!(changes.fetch, vec![&m.jobs[1]], "only the job behind its listed revision");
        assert_eq!(changes.remove, vec![gone]);
    }

    #[test]
    fn a_target_applies_news_and_ignores_a_lagging_replica() {
        let m = manifest();
        assert!(m.is_news_to(None));
        assert!(!m.is_news_to(Some(&m.applied())), "same revision: one request, nothing else");
        let ahead = Applied { revision: Revision(5), ..m.applied() };
        assert!(!m.is_news_to(Some(&ahead)));
        let rebuilt = Applied { epoch: Uuid::from_u128(1), ..ahead };
        assert!(m.is_news_to(Some(&rebuilt)), "a new epoch is always news");
    }

    #[test]
    fn successor_carries_the_owned_half_and_bumps_the_revision() {
        let now = at("2026-12-01T10:00:00Z");
        let mut m = manifest();
        let j = m.jobs[0].clone();
        m.add_start(StartEntry::new(Uuid::now_v7(), j.id, j.name, now, DEFAULT_EXPIRY).unwrap()).unwrap();
        m.clock = Some(ClockRef { id: Uuid::from_u128(3), master_time: now });
        m.changes = 4;
        let n = m.successor(DerivedState::new(Vec::new(), Some(300), false), now);
        assert_eq!((n.revision, n.epoch, n.changes), (Revision(2), m.epoch, 4));
        assert_eq!((n.starts.len(), n.clock), (1, m.clock));
        assert!(n.jobs.is_empty());
        let gone = n.successor(DerivedState::new(m.jobs.clone(), Some(300), true), now);
        assert!(gone.defected && gone.jobs.is_empty() && gone.starts.is_empty());
        gone.validate(&t("web01")).unwrap();
        let mut g = gone.clone();
        let s = StartEntry::new(Uuid::now_v7(), j.id, m.jobs[0].name.clone(), now, DEFAULT_EXPIRY).unwrap();
        assert_eq!(g.add_start(s), Err(ManifestError::Defected));
    }

    #[test]
    fn digest_covers_the_derived_half_only_and_is_stable() {
        let m = manifest();
        let mut n = m.successor(m.derived(), at("2026-12-02T00:00:00Z"));
        n.changes = 9;
        n.clock = Some(ClockRef { id: Uuid::from_u128(1), master_time: n.published_at });
        assert_eq!(n.summary().digest, m.summary().digest, "revision, time, owned half do not count");
        let mut reordered = m.jobs.clone();
        reordered.reverse();
        assert_eq!(
            DerivedState { jobs: reordered, poll_interval_secs: Some(60), defected: false }.digest(),
            m.derived().digest()
        );
        let mut bumped = m.jobs.clone();
        bumped[1].revision += 1;
        assert_ne!(DerivedState::new(bumped, Some(60), false).digest(), m.derived().digest());
        assert_ne!(DerivedState::new(m.jobs.clone(), Some(61), false).digest(), m.derived().digest());
        // Pinned: replicas and versions must agree, or every target is
        // republished once. Change this only on purpose.
        assert_eq!(m.derived().digest().to_string(), "12c272cb67eb72af");
        assert_eq!("00000000000000ff".parse::<Digest>().unwrap(), Digest(255));
    }

    #[test]
    fn validation_refuses_what_a_target_must_not_apply() {
        let m = manifest();
        m.validate(&t("web01")).unwrap();
        assert!(matches!(m.validate(&t("web02")), Err(ManifestError::OtherTarget { .. })));
        let mut dup = m.clone();
        dup.jobs.push(dup.jobs[0].clone());
        assert!(matches!(dup.validate(&t("web01")), Err(ManifestError::Duplicate { what: "job id", .. })));
        let mut zero = m.clone();
        zero.revision = Revision::ZERO;
        assert_eq!(zero.validate(&t("web01")), Err(ManifestError::NoRevision));
        let mut defected = m.clone();
        defected.defected = true;
        assert_eq!(defected.validate(&t("web01")), Err(ManifestError::DefectedWithWork));
        let mut backwards = m.clone();
        let j = m.jobs[0].clone();
        let mut s = StartEntry::new(Uuid::now_v7(), j.id, j.name, m.published_at, DEFAULT_EXPIRY).unwrap();
        s.expires_at = s.posted_at;
        backwards.starts.push(s);
        assert!(matches!(backwards.validate(&t("web01")), Err(ManifestError::BadExpiry { .. })));
        let mut poll = m;
        poll.poll_interval_secs = Some(0);
        assert_eq!(poll.validate(&t("web01")), Err(ManifestError::ZeroPollInterval));
    }

    #[test]
    fn a_job_document_is_checked_against_its_listing() {
        let spec = JobSpec::from_commands(JobName::new("j").unwrap(), &["true".into()]);
        let doc = JobDoc { v: 1, target: t("web01"), job: JobDef { id: Uuid::from_u128(1), revision: 3, spec } };
        let listed = |revision| JobRef { id: Uuid::from_u128(1), name: JobName::new("j").unwrap(), revision };
        assert_eq!(doc.check(&t("web01"), &listed(3)), Ok(()));
        assert_eq!(doc.check(&t("web01"), &listed(2)), Ok(()), "newer than listed: a manifest is on its way");
        assert_eq!(doc.check(&t("web01"), &listed(4)), Err(DocError::Stale { have: 3, listed: 4 }));
        assert!(matches!(doc.check(&t("web02"), &listed(3)), Err(DocError::Invalid(_))));
        let other = JobRef { id: Uuid::from_u128(2), ..listed(3) };
        assert!(matches!(doc.check(&t("web01"), &other), Err(DocError::Invalid(_))));
        let mut bad = doc.clone();
        bad.job.spec.steps.clear();
        assert!(matches!(bad.check(&t("web01"), &listed(3)), Err(DocError::Invalid(e)) if e.contains("at least one step")));
    }
}
