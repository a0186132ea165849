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
//! `<prefix>.result.<t>.>`, `<prefix>.poll.<t>`, `<prefix>.output.<t>.*`,
//! `<prefix>.kept.<t>.>` (JetStream's PubAck is the service's answer) and
//! `<prefix>.api.agent.<t>.>` — and exports its
//! control subject to the Muster account. A request crossing an import gets
//! a reply subject the server makes up (`_R_.…`) and maps back into the
//! requester's account: an answer aimed anywhere lands in the target's own
//! account, where nothing listens. Nothing is imported as a stream.
//!
//! The viewer ([`viewer_account`]) is confined the same way: its account
//! imports the read half of the API (`<prefix>.api.read.>`), the service
//! ping, and Direct Gets: the run index's entries (the key in the API
//! subject), the results stream's body form, through which history is read
//! in batches (several answers to one request, so that import's answers
//! are a stream), and the next message of a run in `MUSTER_OUTPUT` and
//! `MUSTER_KEPT` (`run logs` without `--follow`, `run output`). Each is
//! answered into the viewer's own account. A Direct Get only reads:
//! nothing in its body can write anywhere. It gets no consumer and no stream
//! info: a consumer's configuration (its deliver
//! subject, its name) travels in the request body, where no permission can
//! confine it; a push consumer would deliver into the Muster account's
//! subjects (the buckets), and a create naming the master's consumer would
//! change it.
//! Nor does it follow live output (`run logs --follow`): that takes a
//! consumer.
//! The admin half of the API (`<prefix>.api.admin.>`) it neither imports
//! nor may publish, so the server refuses such a request with a
//! permissions violation, which `musterctl` reports as such.

use crate::api::Access;
use crate::name::TargetName;
use crate::subject::{Bucket, Subjects};

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
/// applied records), poll reports, live and kept output, call the agent API about
/// itself, and hear its own control subject and replies.
pub fn target(s: &Subjects, t: &TargetName) -> Permissions {
    Permissions {
        publish: vec![
            s.direct_get_state(t),
            s.direct_get_job_docs(t),
            s.results_of(t),
            s.poll(t),
            s.agent_api(t, ">"),
            s.output_of(t),
            s.kept_of(t),
        ],
        subscribe: vec![format!("{}.>", Subjects::inbox_prefix(t)), s.control(t)],
        allow_responses: true,
    }
}

/// The Muster account: JetStream, the master, the operators.
pub fn muster_account(s: &Subjects) -> String {
    s.prefix().to_owned()
}

/// How many answers one request to an exported service gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responses {
    /// One (the server forgets the reply mapping after it).
    Single,
    /// Several: a big API reply in parts, every master answering a ping.
    Stream,
}

/// A service the Muster account exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub subject: String,
    pub responses: Responses,
}

/// What the Muster account exports as services, one wildcard pattern per
/// kind; each target's account imports its own part of each, the viewer's
/// the read side.
pub fn muster_exports(s: &Subjects) -> Vec<Export> {
    let single = [
        s.direct_get_state_all(),
        s.direct_get_job_docs_all(),
        s.results_of_any(),
        s.poll_all(),
        s.agent_api_pattern(">"),
        s.output_all(),
        s.kept_all(),
    ]
    .into_iter()
    .chain(viewer_single(s));
    let stream = [s.api_all(Access::Read), s.service_ping(), viewer_results(s)];
    single
        .map(|subject| Export { subject, responses: Responses::Single })
        .chain(stream.into_iter().map(|subject| Export { subject, responses: Responses::Stream }))
        .collect()
}

/// A restricted identity's own NATS account (a target's, the viewer's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `<prefix>-target-<t>`, `<prefix>-viewer`.
    pub name: String,
    /// Services imported from the Muster account: requests go in, answers
    /// come back through the server's response mapping.
    pub imports: Vec<String>,
    /// Services exported to the Muster account: a target's control subject.
    pub exports: Vec<String>,
    /// The identity's user in it, as limited as without the account.
    pub permissions: Permissions,
}

/// The account of target `t`: its imports are exactly the subjects its user
/// may publish to.
pub fn target_account(s: &Subjects, t: &TargetName) -> Account {
    let permissions = target(s, t);
    Account {
        name: format!("{}-target-{t}", s.prefix()),
        imports: permissions.publish.clone(),
        exports: vec![s.control(t)],
        permissions,
    }
}

/// The viewer's Direct Gets with one answer: a run-index entry (the key in
/// the API subject), and the next message of a run's subjects in the
/// live-output and kept-output streams (`run logs` without `--follow`,
/// `run output`; the body form names only messages of the stream in its
/// API subject, all of which a viewer may read).
fn viewer_single(s: &Subjects) -> Vec<String> {
    let body_form = |stream: String| format!("{}.DIRECT.GET.{stream}", crate::subject::JS_API_PREFIX);
    vec![
        Subjects::direct_get(&s.bucket_stream(Bucket::Runs), &s.bucket_key(Bucket::Runs, ">")),
        body_form(s.output_stream()),
        body_form(s.kept_stream()),
    ]
}

/// The viewer's read of history: Direct Gets on the results stream, the
/// request in the body (a record by sequence, the last or next on a
/// subject filter, or a batch of them, answered by several messages and an
/// end-of-batch status). The body names only messages of that stream.
fn viewer_results(s: &Subjects) -> String {
    format!("{}.DIRECT.GET.{}", crate::subject::JS_API_PREFIX, s.results_stream())
}

/// The JetStream reads the viewer makes, all Direct Gets (read-only by
/// construction). Nothing else of JetStream: not `STREAM.INFO`, which
/// nats-server answers for the requesting account, not the exporting one,
/// and no consumer.
fn viewer_jetstream(s: &Subjects) -> Vec<String> {
    let mut reads = viewer_single(s);
    reads.push(viewer_results(s));
    reads
}

/// The viewer: the read half of the API, the service ping, and the Direct
/// Gets of history, `run show`, `run logs` and `run output`; replies on its
/// own inboxes. Nothing that changes state, and no consumer (see the module's documentation).
pub fn viewer(s: &Subjects) -> Permissions {
    let mut publish = vec![s.api_all(Access::Read), s.service_ping()];
    publish.extend(viewer_jetstream(s));
    Permissions { publish, subscribe: vec!["_INBOX.>".to_owned()], allow_responses: false }
}

/// The viewer's account, `<prefix>-viewer`: it imports exactly what its
/// user may publish, and exports nothing.
pub fn viewer_account(s: &Subjects) -> Account {
    let permissions = viewer(s);
    Account { name: format!("{}-viewer", s.prefix()), imports: permissions.publish.clone(), exports: Vec::new(), permissions }
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
        let exports: Vec<String> = muster_exports(&s).into_iter().map(|e| e.subject).collect();
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
            for refused in [s.api(crate::api::Op::JobCreate), "$KV.muster-jobs.x".to_owned(), s.control(&a), s.state(&a)] {
                assert!(!allowed(std::slice::from_ref(export), &refused), "{export} exports {refused}");
            }
        }
    }

    #[test]
    fn the_viewer_reads_and_changes_nothing_and_its_imports_are_exported() {
        use crate::api::Op;
        let s = Subjects::default();
        let acc = viewer_account(&s);
        assert_eq!(acc.name, "muster-viewer");
        assert!(acc.exports.is_empty());
        assert_eq!(acc.imports, acc.permissions.publish);
        let exports = muster_exports(&s);
        for import in &acc.imports {
            assert!(exports.iter().any(|e| subset(import, &e.subject)), "{import} is in no export");
        }
        for &op in Op::ALL {
            assert_eq!(allowed(&acc.permissions.publish, &s.api(op)), op.access() == Access::Read, "{op:?}");
        }
        let t = TargetName::new("web01").unwrap();
        for refused in [
            "$KV.muster-jobs.x".to_owned(),
            "$JS.API.CONSUMER.CREATE.MUSTER_RESULTS".to_owned(),
            "$JS.API.CONSUMER.CREATE.MUSTER_RESULTS.x.muster.result.>".to_owned(),
            "$JS.API.CONSUMER.DELETE.MUSTER_RESULTS.master".to_owned(),
            "$JS.API.STREAM.PURGE.MUSTER_RESULTS".to_owned(),
            "$JS.API.STREAM.INFO.MUSTER_RESULTS".to_owned(),
            "$JS.API.DIRECT.GET.KV_muster-jobs.$KV.muster-jobs.x".to_owned(),
            "$JS.API.DIRECT.GET.KV_muster-targets.$KV.muster-targets.web01".to_owned(),
            s.control(&t),
            s.agent_api(&t, "enlist"),
            s.results_of(&t),
            s.output(&t, uuid::Uuid::nil()),
            format!("$JS.API.CONSUMER.CREATE.{}", s.output_stream()),
        ] {
            assert!(!allowed(&acc.permissions.publish, &refused), "{refused} must be refused");
        }
        // Stored output, by Direct Get; not followed (no consumer).
        for stream in [s.output_stream(), s.kept_stream()] {
            assert!(allowed(&acc.permissions.publish, &format!("$JS.API.DIRECT.GET.{stream}")), "{stream}");
        }
        assert!(!acc.permissions.allow_responses);
        // Several answers: the API's parts, every master's ping, a batch of
        // history records; nothing a target imports.
        let several = [s.api_all(Access::Read), s.service_ping(), "$JS.API.DIRECT.GET.MUSTER_RESULTS".to_owned()];
        for e in exports.iter().filter(|e| e.responses == Responses::Stream) {
            assert!(several.contains(&e.subject), "{e:?}");
        }
        assert!(allowed(&acc.imports, "$JS.API.DIRECT.GET.MUSTER_RESULTS"));
        assert!(!allowed(&acc.imports, "$JS.API.DIRECT.GET.MUSTER_DESIRED"));
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
        assert!(allowed(&p.publish, &s.output(&a, job)));
        assert!(allowed(&p.publish, &s.kept(&a, job, 0)));
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
            s.output(&b, job),
            s.kept(&b, job, 0),
            format!("$JS.API.STREAM.INFO.{}", s.output_stream()),
            format!("$JS.API.STREAM.PURGE.{}", s.kept_stream()),
            s.agent_api(&b, "enlist"),
            s.api(crate::api::Op::JobCreate),
            s.api(crate::api::Op::TargetList),
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
