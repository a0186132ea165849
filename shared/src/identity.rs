//! Identity is the subject: a record a target uploads may stand only on the
//! subject it names.
//!
//! nats-server's permissions decide who may publish on
//! `muster.result.<t>.…`, so the subject is the proof of who sent a record;
//! the body's own `target` (and a run record's `job_id`) are only claims.
//! Every reader of `MUSTER_RESULTS` — the master's ingest, `musterctl
//! history`, `job start --wait` — checks the claim against the proof here,
//! in one place, so a target can never write into another target's history
//! or download list by naming it in a body.

use crate::desired::AppliedRecord;
use crate::msg::{InstrRecord, RunRecord};
use crate::name::TargetName;
use crate::subject::Subjects;

/// Which kind of record contradicted its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Run,
    Instructions,
    Applied,
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordKind::Run => "run record",
            RecordKind::Instructions => "instruction record",
            RecordKind::Applied => "applied record",
        })
    }
}

/// A record whose body contradicts the subject it came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The body names another target than the subject carries (or the
    /// subject carries none).
    #[error("{kind} names target '{named}' but came on target '{on_subject}''s subject")]
    OtherTarget { kind: RecordKind, named: TargetName, on_subject: String },
    /// The target matches, but the subject is not the one this record
    /// belongs on (a run record for another job, a record on the wrong kind
    /// of subject).
    #[error("{kind} belongs on {expected} but came on {subject}")]
    WrongSubject { kind: RecordKind, expected: String, subject: String },
}

/// Whether a run record may stand on `subject`: its body must name the
/// target and the job the subject carries.
///
/// # Errors
/// [`IdentityError`], naming both sides; fit for the log.
pub fn check_run(subjects: &Subjects, subject: &str, r: &RunRecord) -> Result<(), IdentityError> {
    check(subjects, subject, RecordKind::Run, &r.target, subjects.result_run(&r.target, r.job_id))
}

/// Whether an instruction record may stand on `subject`: its body must name
/// the target the subject carries.
///
/// # Errors
/// [`IdentityError`], naming both sides; fit for the log.
pub fn check_instr(subjects: &Subjects, subject: &str, r: &InstrRecord) -> Result<(), IdentityError> {
    check(subjects, subject, RecordKind::Instructions, &r.target, subjects.result_instr(&r.target))
}

/// Whether an applied record may stand on `subject`: its body must name
/// the target the subject carries.
///
/// # Errors
/// [`IdentityError`], naming both sides; fit for the log.
pub fn check_applied(subjects: &Subjects, subject: &str, r: &AppliedRecord) -> Result<(), IdentityError> {
    check(subjects, subject, RecordKind::Applied, &r.target, subjects.result_applied(&r.target))
}

fn check(
    subjects: &Subjects,
    subject: &str,
    kind: RecordKind,
    named: &TargetName,
    expected: String,
) -> Result<(), IdentityError> {
    let on_subject = subjects.target_of(subject).unwrap_or_default();
    if named.as_str() != on_subject {
        return Err(IdentityError::OtherTarget { kind, named: named.clone(), on_subject: on_subject.to_owned() });
    }
    if subject != expected {
        return Err(IdentityError::WrongSubject { kind, expected, subject: subject.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::msg::{Outcome, Trigger};
    use crate::name::JobName;

    fn run(target: &str) -> RunRecord {
        RunRecord {
            params: Default::default(),
            v: 1,
            run_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            job: JobName::new("j").unwrap(),
            target: TargetName::new(target).unwrap(),
            trigger: Trigger::Manual,
            outcome: Outcome::Succeeded,
            started_at: Utc::now(),
            finished_at: None,
            message: String::new(),
            steps: Vec::new(),
        }
    }

    #[test]
    fn a_run_record_must_name_its_subjects_target_and_job() {
        let s = Subjects::default();
        let r = run("a");
        let b = TargetName::new("b").unwrap();
        assert_eq!(check_run(&s, &s.result_run(&r.target, r.job_id), &r), Ok(()));

        let other_target = check_run(&s, &s.result_run(&b, r.job_id), &r).unwrap_err();
        assert!(
            matches!(&other_target, IdentityError::OtherTarget { kind: RecordKind::Run, on_subject, .. } if on_subject == "b")
        );
        assert_eq!(other_target.to_string(), "run record names target 'a' but came on target 'b''s subject");

        let other_job = check_run(&s, &s.result_run(&r.target, Uuid::now_v7()), &r).unwrap_err();
        assert!(matches!(other_job, IdentityError::WrongSubject { kind: RecordKind::Run, .. }), "{other_job}");
        // A run record on the instructions subject is not a run record.
        assert!(matches!(check_run(&s, &s.result_instr(&r.target), &r), Err(IdentityError::WrongSubject { .. })));
        // Nor on a subject outside the installation.
        assert!(matches!(check_run(&s, "elsewhere.result.a.run.x", &r), Err(IdentityError::OtherTarget { .. })));
    }

    #[test]
    fn an_instruction_record_must_name_its_subjects_target() {
        let s = Subjects::default();
        let a = TargetName::new("a").unwrap();
        let b = TargetName::new("b").unwrap();
        let r = InstrRecord { v: 1, target: a.clone(), outcomes: Vec::new() };
        assert_eq!(check_instr(&s, &s.result_instr(&a), &r), Ok(()));
        let forged = check_instr(&s, &s.result_instr(&b), &r).unwrap_err();
        assert!(matches!(forged, IdentityError::OtherTarget { kind: RecordKind::Instructions, .. }), "{forged}");
        assert!(matches!(check_instr(&s, &s.result_run(&a, Uuid::nil()), &r), Err(IdentityError::WrongSubject { .. })));
    }

    #[test]
    fn an_applied_record_must_name_its_subjects_target() {
        let s = Subjects::default();
        let a = TargetName::new("a").unwrap();
        let b = TargetName::new("b").unwrap();
        let r = AppliedRecord {
            v: 1,
            target: a.clone(),
            applied: crate::desired::Applied { epoch: Uuid::nil(), revision: crate::desired::Revision(3), changes: 3 },
            at: Utc::now(),
            refused: None,
            errors: Vec::new(),
        };
        assert_eq!(check_applied(&s, &s.result_applied(&a), &r), Ok(()));
        assert!(matches!(
            check_applied(&s, &s.result_applied(&b), &r),
            Err(IdentityError::OtherTarget { kind: RecordKind::Applied, .. })
        ));
        assert!(matches!(check_applied(&s, &s.result_instr(&a), &r), Err(IdentityError::WrongSubject { .. })));
    }
}
