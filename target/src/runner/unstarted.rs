//! Runs that could not start, recorded instead of only logged.
//!
//! Why: when the disk is full, a schedule fire or a start cannot write its
//! run marker, so no run begins; that must show in history ("what happened
//! to every fire"), not only in the agent's log. Each becomes a `failed`
//! run record that says why. On that same full disk the spool usually
//! cannot take the record either, so it is held here and written once
//! there is room again, with backoff:
//! - schedule fires are held one per job, counting the fires it stands for
//!   (a 1-second schedule on a full disk holds one record, not thousands);
//! - manual starts and execs one per start, each answered under its own
//!   run id (their number is bounded by the manifest's pending starts).
//!
//! Held records live in memory only: an agent stopped before there was
//! room logs what it drops.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use muster_shared::msg::{RunRecord, Trigger};
use uuid::Uuid;

/// What a held record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// Every schedule fire of this job that could not start.
    Fires(Uuid),
    /// This one start (its run id).
    Start(Uuid),
}

#[derive(Debug)]
struct Held {
    /// The first fire's record (its run id and start time).
    record: RunRecord,
    fires: u32,
    last: DateTime<Utc>,
}

/// The records of runs that could not start and are not spooled yet.
#[derive(Debug, Default)]
pub(super) struct Unstarted {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    held: BTreeMap<Key, Held>,
    /// A task is writing them out; a new one must not be started.
    retrying: bool,
}

impl Unstarted {
    /// Holds `record` (a run that could not start). Returns whether the
    /// caller must start the task that writes held records out.
    pub(super) fn hold(&self, record: RunRecord) -> bool {
        let key = match record.trigger {
            Trigger::Schedule { .. } | Trigger::OnStart => Key::Fires(record.job_id),
            Trigger::Manual | Trigger::Exec => Key::Start(record.run_id),
        };
        let mut inner = self.inner.lock().expect("unstarted lock");
        let now = record.started_at;
        inner.held.entry(key).and_modify(|h| (h.fires, h.last) = (h.fires + 1, now)).or_insert(Held {
            record,
            fires: 1,
            last: now,
        });
        !std::mem::replace(&mut inner.retrying, true)
    }

    /// The records to write now, each with what it stands for in its
    /// message.
    pub(super) fn records(&self) -> Vec<RunRecord> {
        let inner = self.inner.lock().expect("unstarted lock");
        inner
            .held
            .values()
            .map(|h| {
                let mut r = h.record.clone();
                if h.fires > 1 {
                    r.message = format!("{} ({} fires from {} to {} could not start)", r.message, h.fires, r.started_at, h.last);
                }
                r
            })
            .collect()
    }

    /// Forgets a record once it is spooled. Returns whether none is left, in
    /// which case the writing task ends (a later hold starts another).
    pub(super) fn written(&self, run_id: Uuid) -> bool {
        let mut inner = self.inner.lock().expect("unstarted lock");
        inner.held.retain(|_, h| h.record.run_id != run_id);
        self.end_if_empty(&mut inner)
    }

    /// Whether none is held; if so, the writing task ends.
    pub(super) fn done(&self) -> bool {
        let mut inner = self.inner.lock().expect("unstarted lock");
        self.end_if_empty(&mut inner)
    }

    fn end_if_empty(&self, inner: &mut Inner) -> bool {
        let empty = inner.held.is_empty();
        if empty {
            inner.retrying = false;
        }
        empty
    }

    /// How many records are held.
    pub(super) fn len(&self) -> usize {
        self.inner.lock().expect("unstarted lock").held.len()
    }
}
