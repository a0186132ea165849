//! Deriving each target's desired state from the master's records.
//!
//! Why a pure function: the derived half of a manifest (jobs, poll interval,
//! defected) must be computable at any time from the records alone, so a
//! master killed between a record write and a publish is repaired by
//! deriving again and comparing digests (reconcile), never by replaying
//! what it meant to post. Publishing (`publish.rs`) and reconcile
//! (`reconcile.rs`) both call this, so they cannot disagree.

use std::collections::{BTreeMap, HashMap, HashSet};

use muster_shared::desired::{DerivedState, JobRef};
use muster_shared::name::{GroupName, TargetName};

use crate::store::{GroupRecord, JobRecord, Store, TargetRecord};

/// The state of a target the records no longer know (deleted after a
/// defection): defected, holding nothing, so a returning agent stays out.
pub fn gone() -> DerivedState {
    DerivedState::new(Vec::new(), None, true)
}

/// One target's derived state: the jobs that reach it (own assignment or a
/// group it belongs to; tombstoned jobs reach nobody), the interval set by
/// `set-poll`, and whether it defected. `None` for a target with no record
/// is [`gone`].
pub fn derive_one(
    target: Option<&TargetRecord>,
    name: &TargetName,
    jobs: &[JobRecord],
    groups: &HashMap<GroupName, GroupRecord>,
) -> DerivedState {
    let Some(t) = target else { return gone() };
    if t.defected_at.is_some() {
        return DerivedState::new(Vec::new(), t.poll_set_secs, true);
    }
    let refs = jobs.iter().filter(|j| j.deleted_at.is_none() && reaches(j, name, groups)).map(job_ref).collect();
    DerivedState::new(refs, t.poll_set_secs, false)
}

/// Every enlisted target's derived state, in one pass over the jobs (not
/// one per target): what reconcile compares with the published summaries.
pub fn derive(
    targets: &[TargetRecord],
    jobs: &[JobRecord],
    groups: &HashMap<GroupName, GroupRecord>,
) -> BTreeMap<TargetName, DerivedState> {
    let known: HashSet<&TargetName> = targets.iter().map(|r| &r.name).collect();
    let mut reach: HashMap<TargetName, Vec<JobRef>> = HashMap::new();
    for j in jobs.iter().filter(|j| j.deleted_at.is_none()) {
        for t in Store::concerned(j, groups) {
            if known.contains(&t) {
                reach.entry(t).or_default().push(job_ref(j));
            }
        }
    }
    targets
        .iter()
        .map(|t| {
            let state = if t.defected_at.is_some() {
                DerivedState::new(Vec::new(), t.poll_set_secs, true)
            } else {
                DerivedState::new(reach.remove(&t.name).unwrap_or_default(), t.poll_set_secs, false)
            };
            (t.name.clone(), state)
        })
        .collect()
}

fn reaches(j: &JobRecord, t: &TargetName, groups: &HashMap<GroupName, GroupRecord>) -> bool {
    j.targets.contains(t) || j.groups.iter().any(|g| groups.get(g).is_some_and(|g| g.members.contains(t)))
}

fn job_ref(j: &JobRecord) -> JobRef {
    JobRef { id: j.id, name: j.spec.name.clone(), revision: j.revision }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::Utc;
    use muster_shared::job::JobSpec;
    use muster_shared::name::JobName;
    use uuid::Uuid;

    use super::*;

    fn t(n: &str) -> TargetName {
        TargetName::new(n).unwrap()
    }

    fn target(n: &str) -> TargetRecord {
        TargetRecord::new(t(n), 60, Utc::now())
    }

    fn job(n: u128, name: &str, targets: &[&str], groups: &[&str]) -> JobRecord {
        JobRecord {
            revision: 2,
            targets: targets.iter().map(|n| t(n)).collect(),
            groups: groups.iter().map(|g| GroupName::new(*g).unwrap()).collect(),
            ..JobRecord::new(
                Uuid::from_u128(n),
                JobSpec::from_commands(JobName::new(name).unwrap(), &["true".to_owned()]),
                Utc::now(),
            )
        }
    }

    fn groups(list: &[(&str, &[&str])]) -> HashMap<GroupName, GroupRecord> {
        list.iter()
            .map(|(g, members)| {
                let name = GroupName::new(*g).unwrap();
                let members: BTreeSet<TargetName> = members.iter().map(|n| t(n)).collect();
                (name.clone(), GroupRecord { name, members, created_at: Utc::now() })
            })
            .collect()
    }

    fn ids(d: &DerivedState) -> Vec<u128> {
        d.jobs.iter().map(|j| j.id.as_u128()).collect()
    }

    #[test]
    fn a_target_gets_its_own_jobs_and_its_groups_jobs_once() {
        let g = groups(&[("web", &["a", "b"]), ("db", &["b"])]);
        let jobs = vec![
            job(3, "own", &["a"], &[]),
            job(1, "web", &[], &["web"]),
            job(2, "both", &["b"], &["web", "db"]),
            job(4, "nobody", &[], &["empty"]),
        ];
        let all = derive(&[target("a"), target("b"), target("c")], &jobs, &g);
        assert_eq!(ids(&all[&t("a")]), [1, 2, 3], "sorted by id");
        assert_eq!(ids(&all[&t("b")]), [1, 2], "a job reached twice is listed once");
        assert!(all[&t("c")].jobs.is_empty());
        assert_eq!(all[&t("a")].jobs[0].revision, 2);
        for name in ["a", "b", "c"] {
            let one = derive_one(Some(&target(name)), &t(name), &jobs, &g);
            assert_eq!(one, all[&t(name)], "one target or all: the same answer");
        }
    }

    #[test]
    fn tombstones_defection_and_set_poll_are_derived() {
        let g = groups(&[]);
        let mut deleted = job(1, "gone", &["a"], &[]);
        deleted.deleted_at = Some(Utc::now());
        let jobs = vec![deleted, job(2, "kept", &["a", "d"], &[])];
        let mut a = target("a");
        a.poll_set_secs = Some(300);
        let mut d = target("d");
        d.defected_at = Some(Utc::now());
        let all = derive(&[a.clone(), d.clone()], &jobs, &g);
        assert_eq!(ids(&all[&t("a")]), [2], "a tombstoned job reaches nobody");
        assert_eq!(all[&t("a")].poll_interval_secs, Some(300));
        assert!(all[&t("d")].defected && all[&t("d")].jobs.is_empty());
        assert_eq!(derive_one(Some(&d), &t("d"), &jobs, &g), all[&t("d")]);
        assert_eq!(derive_one(None, &t("x"), &jobs, &g), gone(), "no record: gone");
        assert!(!all.contains_key(&t("x")));
        assert_eq!(derive_one(Some(&target("b")), &t("b"), &jobs, &g).poll_interval_secs, None, "the agent's own interval");
    }
}
