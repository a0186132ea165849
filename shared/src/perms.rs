//! What a target may publish and subscribe to, as nats-server permissions.
//!
//! Identity is the subject: every subject a target uses carries its own name
//! (its consumer, its results, its poll report, its agent API, its control
//! subject, its inbox prefix), so these lists are all that keeps target A out
//! of B's instructions and results and out of the admin API. The agent needs
//! nothing else; `musterctl auth nats-config` writes them into a nats-server
//! authorization block, and the end-to-end tests run a target under them.

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

/// The least a target agent needs: fetch from and ack its own consumer,
/// publish its own results and poll reports, call the agent API about
/// itself, and hear its own control subject and replies.
pub fn target(s: &Subjects, t: &TargetName) -> Permissions {
    let assign = s.assign_stream();
    Permissions {
        publish: vec![
            format!("$JS.API.CONSUMER.INFO.{assign}.{t}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{assign}.{t}"),
            format!("$JS.ACK.{assign}.{t}.>"),
            s.results_of(t),
            s.poll(t),
            s.agent_api(t, ">"),
        ],
        subscribe: vec![format!("{}.>", Subjects::inbox_prefix(t)), s.control(t)],
        allow_responses: true,
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
            assert!(!subject.contains('*') && !subject.starts_with('>'), "{subject} is broader than one target");
        }
        assert!(p.publish.contains(&"muster.result.web01.>".to_owned()));
        assert!(p.subscribe.contains(&"muster.target.web01.control".to_owned()));
    }
}
