//! What a target may publish and subscribe to, as nats-server permissions.
//!
//! Identity is the subject: every subject a target uses carries its own name
//! (its desired state, its results, its poll report, its agent API, its
//! control subject, its inbox prefix), so these lists are all that keeps
//! target A out of B's jobs and results and out of the admin API. The agent
//! needs nothing else; `musterctl auth nats-config` writes them into the
//! nats-server accounts it generates, and the end-to-end tests run a target
//! under them.
//!
//! [`target`] is the set for delivery by desired state: a target reads its
//! own manifest and job documents by Direct Get, with the subject in the
//! API subject, and nothing else of `MUSTER_DESIRED` — not another
//! target's, not the body form of Direct Get (whose subject no permission
//! can confine), not `STREAM.INFO` — and nothing of `MUSTER_ASSIGN` (no
//! consumer, no ack subject: nothing per target on the server).
//!
//! Permissions alone do not confine replies: nats-server checks the subject
//! a client publishes to, never the reply subject of its request, and
//! whoever answers (JetStream, the master) publishes with its own rights.
//! So each target also gets an account of its own ([`target_account`]),
//! which imports from the Muster account ([`muster_exports`]) only its own
//! handful of subjects, as services — the two Direct Get subjects,
//! `<prefix>.result.<t>.>`, `<prefix>.poll.<t>` (JetStream's PubAck is the
//! service's answer) and `<prefix>.api.agent.<t>.>` — and exports its
//! control subject to the Muster account. A request crossing an import gets
//! a reply subject the server makes up (`_R_.…`) and maps back into the
//! requester's account: an answer aimed anywhere lands in the target's own
//! account, where nothing listens. Nothing is imported as a stream.

use crate::name::TargetName;
use crate::subject::Subjects;

/// A client's allowed subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (a target answers force-polls on the
    /// requester's inbox, which it cannot otherwise publish to).
    pub allow_responses: bool,
}

/// The least a target agent needs with desired state: read its own manifest
/// and job documents by Direct Get, publish its own results (run records,
/// applied records) and poll reports, call the agent API about itself, and
/// hear its own control subject and replies.
pub fn target(s: &Subjects, t: &TargetName) -> Permissions {
    Permissions {
        publish: vec![s.direct_get_state(t), s.direct_get_job_docs(t), s.results_of(t), s.poll(t), s.agent_api(t, ">")],
        subscribe: vec![format!("{}.>", Subjects::inbox_prefix(t)), s.control(t)],
        allow_responses: true,
    }
}

/// The Muster account: JetStream, the master, the operators.
pub fn muster_account(s: &Subjects) -> String {
    s.prefix().to_owned()
}

/// What the Muster account exports as services, one wildcard pattern per
/// kind; each target's account imports its own part of each.
pub fn muster_exports(s: &Subjects) -> Vec<String> {
    vec![s.direct_get_state_all(), s.direct_get_job_docs_all(), s.results_of_any(), s.poll_all(), s.agent_api_pattern(">")]
}

/// A target's own NATS account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAccount {
    /// `<prefix>-target-<t>`.
    pub name: String,
    /// Services imported from the Muster account: requests go in, answers
    /// come back through the server's response mapping.
    pub imports: Vec<String>,
    /// Services exported to the Muster account: the control subject.
    pub exports: Vec<String>,
    /// The target's user in it, as limited as without the account.
    pub permissions: Permissions,
}

/// The account of target `t`: its imports are exactly the subjects its user
/// may publish to.
pub fn target_account(s: &Subjects, t: &TargetName) -> TargetAccount {
    let permissions = target(s, t);
    TargetAccount {
        name: format!("{}-target-{t}", s.prefix()),
        imports: permissions.publish.clone(),
        exports: vec![s.control(t)],
        permissions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_a_target_may_use_carries_its_name() {
        let s = Subjects::default();
        let t = TargetName::new("web01").unwrap();
        let p = target(&s, &t);
        for subject in p.publish.iter().chain(&p.subscribe) {
            assert!(subject.contains("web01"), "{subject} does not name the target");
            assert!(
                !subject.contains("ASSIGN") && !subject.contains(".assign"),
                "{subject}: nothing of the previous design's queue"
            );
        }
        assert!(p.publish.contains(&"muster.result.web01.>".to_owned()));
        assert!(p.subscribe.contains(&"muster.target.web01.control".to_owned()));
    }

    #[test]
    fn a_target_account_imports_only_its_own_subjects_and_each_import_is_exported() {
        let s = Subjects::default();
        let (a, b) = (TargetName::new("web01").unwrap(), TargetName::new("web02").unwrap());
        let acc = target_account(&s, &a);
        assert_eq!(acc.name, "muster-target-web01");
        assert_ne!(acc.name, muster_account(&s));
        assert_eq!(acc.exports, [s.control(&a)]);
        let exports = muster_exports(&s);
        for import in &acc.imports {
            assert!(import.contains("web01"), "{import}");
            // The server accepts an import only inside an export.
            assert!(exports.iter().any(|e| subset(import, e)), "{import} is in no export of {exports:?}");
        }
        // Nothing of another target's, nothing of the admin API or the buckets.
        let other = target_account(&s, &b);
        for import in &acc.imports {
            for theirs in &other.imports {
                assert!(!subset(import, theirs) && !subset(theirs, import), "{import} overlaps {theirs}");
            }
        }
        for export in &exports {
            for refused in [s.api("job.create"), "$KV.muster-jobs.x".to_owned(), s.control(&a), s.state(&a)] {
                assert!(!allowed(std::slice::from_ref(export), &refused), "{export} exports {refused}");
            }
        }
    }

    /// Every subject `pattern` matches, `of` matches too (wildcards read as
    /// literal tokens, which is enough for these patterns).
    fn subset(pattern: &str, of: &str) -> bool {
        crate::subject::matches(of, pattern)
    }

    fn allowed(list: &[String], subject: &str) -> bool {
        list.iter().any(|p| crate::subject::matches(p, subject))
    }

    #[test]
    fn a_target_reads_only_its_own_desired_state() {
        let s = Subjects::default();
        let (a, b) = (TargetName::new("web01").unwrap(), TargetName::new("web02").unwrap());
        let job = uuid::Uuid::now_v7();
        let p = target(&s, &a);
        // Its own documents, by the confinable form of Direct Get.
        assert!(allowed(&p.publish, &s.direct_get_state(&a)));
        assert!(allowed(&p.publish, &s.direct_get_job_doc(&a, job)));
        // Nothing of another target's, and no form a permission cannot confine.
        for refused in [
            s.direct_get_state(&b),
            s.direct_get_job_doc(&b, job),
            format!("$JS.API.DIRECT.GET.{}", s.desired_stream()),
            format!("$JS.API.STREAM.INFO.{}", s.desired_stream()),
            format!("$JS.API.CONSUMER.CREATE.{}", s.desired_stream()),
            format!("$JS.API.STREAM.MSG.GET.{}", s.desired_stream()),
            s.state(&a),
            s.job_doc(&a, job),
            s.result_run(&b, job),
            s.poll(&b),
            s.agent_api(&b, "enlist"),
            s.api("job.create"),
        ] {
            assert!(!allowed(&p.publish, &refused), "{refused} must be refused");
        }
        assert!(!allowed(&p.subscribe, &s.control(&b)));
        assert!(!allowed(&p.subscribe, "_INBOX.x"));
        // Every pattern names the target; the only wildcards stay inside its own subjects.
        for subject in p.publish.iter().chain(&p.subscribe) {
            assert!(subject.contains("web01"), "{subject} does not name the target");
            assert!(!subject.starts_with('>') && !subject.starts_with('*'), "{subject}");
            let before_wildcard = subject.split(['*', '>']).next().unwrap_or_default();
            assert!(before_wildcard.contains("web01"), "{subject} is broader than one target");
        }
        assert!(p.allow_responses);
        // No consumer and no ack subject: nothing per target on the server.
        assert!(p.publish.iter().all(|x| !x.contains("CONSUMER") && !x.starts_with("$JS.ACK")));
    }
}
