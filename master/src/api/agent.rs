//! What an agent calls about itself: `muster.api.agent.<t>.enlist` and
//! `.defect`.
//!
//! These subjects carry the target's own name, so server permissions can pin
//! each agent to its own; the body must name the same target. One name has
//! one running agent: an agent enlisting with a new instance id is refused
//! while another still answers on the name's control subject.
//!
//! Defection is state, not an event: an agent of a defected target that
//! enlists (a restart, a reinstall) is refused with `defected` and stays
//! out until an operator enlists the target again (`musterctl target
//! enlist`, which is not an agent call and clears it). The master knows a
//! target defected from its record (`defected_at`, until the target applied
//! the defection) or, once the record is gone, from the target's manifest,
//! which stays behind saying `defected`.
//!
//! The master answers an agent only where the agent itself listens
//! ([`Ctx::agent_reply_ok`]): nats-server does not check a request's reply
//! subject against the requester's permissions, and the master publishes
//! its answer with its own rights, so an answer aimed at a bucket, another
//! target or the API would be written there.

use muster_shared::api::{self as wire, ApiError, EnlistRequest, ErrorCode, TargetRef};
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;
use uuid::Uuid;

use super::{body, reply, Ctx};
use crate::store::{Store, TargetRecord};

/// The prefix of the reply subjects nats-server makes up for a request that
/// crossed a service import; the answer is mapped back into the requester's
/// account.
const RESPONSE_MAPPING_PREFIX: &str = "_R_.";

impl Ctx {
    /// Whether the master may handle and answer an agent request whose reply
    /// subject is `reply`: only on the target's own inbox prefix
    /// (`_INBOX_<t>.…`, a target whose user is in the Muster account) or on a
    /// reply subject the server made up for a request from the target's own
    /// account (`_R_.…`, mapped back into that account). Anything else — no
    /// reply, or a reply aimed elsewhere — is neither handled nor answered;
    /// it is logged and counted as a bad request.
    pub(super) fn agent_reply_ok(&self, subject: &str, reply: Option<&str>) -> bool {
        let own_inbox = self
            .config
            .subjects
            .target_of(subject)
            .and_then(|t| TargetName::new(t).ok())
            .map(|t| format!("{}.", Subjects::inbox_prefix(&t)));
        let ok = reply.is_some_and(|r| {
            r.starts_with(RESPONSE_MAPPING_PREFIX) || own_inbox.as_deref().is_some_and(|inbox| r.starts_with(inbox))
        });
        if !ok {
            let bad = self.metrics.bad_message(crate::metrics::Inbound::AgentApi);
            tracing::warn!(
                subject,
                bad,
                reply = reply.unwrap_or_default(),
                "refused an agent request whose reply subject is not the agent's own inbox"
            );
        }
        ok
    }

    /// An agent enlisting itself.
    pub(super) async fn agent_enlist(&self, subject: &str, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        let req: EnlistRequest = body(p)?;
        self.same_target(subject, &req.name)?;
        self.refuse_defected(&req.name).await?;
        if let Some(instance) = req.instance {
            self.refuse_second_agent(&req.name, instance).await?;
        }
        Ok(reply::encode(Ok(self.enlist(req.clone(), req.instance).await?)))
    }

    /// A target defecting itself: the same as `musterctl target defect <t>`.
    pub(super) async fn agent_defect(&self, subject: &str, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        let req: TargetRef = body(p)?;
        self.same_target(subject, &req.name)?;
        Ok(reply::encode(Ok(self.defect(wire::DefectRequest { name: req.name, force: false }).await?)))
    }

    /// Refuses an agent's enlist while its target is defected.
    async fn refuse_defected(&self, name: &TargetName) -> Result<(), ApiError> {
        let defected = match Store::read::<TargetRecord>(&self.store.targets, name.as_str()).await? {
            Some((record, _)) => record.defected_at.is_some(),
            None => self.store.manifest(name).await?.is_some_and(|m| m.defected),
        };
        if defected {
            return Err(ApiError::new(
                ErrorCode::Defected,
                format!(
                    "target '{name}' was defected from this master; it stays out until an operator runs `musterctl target enlist {name}`"
                ),
            ));
        }
        Ok(())
    }

    /// An agent may only speak for the target its subject carries.
    fn same_target(&self, subject: &str, name: &TargetName) -> Result<(), ApiError> {
        let on_subject = self.config.subjects.target_of(subject).unwrap_or_default();
        if on_subject != name.as_str() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("body names target '{name}' but the subject carries '{on_subject}'"),
            ));
        }
        Ok(())
    }

    /// Refuses an agent whose name is already taken by another running agent:
    /// one that still answers on the name's control subject with another
    /// instance id. (A new agent enlists before it serves its own control
    /// subject, so whoever answers is someone else.)
    async fn refuse_second_agent(&self, name: &TargetName, instance: Uuid) -> Result<(), ApiError> {
        let Some((record, _)) = Store::read::<TargetRecord>(&self.store.targets, name.as_str()).await? else {
            return Ok(());
        };
        if record.instance.is_none_or(|i| i == instance) {
            return Ok(());
        }
        match self.force_poll(name).await {
            Ok(report) if report.instance != instance => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "target '{name}' is already enlisted by another running agent (instance {}, agent {}); \
                     stop that agent first, or start this one with another --name",
                    report.instance, report.agent_version
                ),
            )),
            // Nobody answers (the old agent is gone), or it is this very agent.
            _ => Ok(()),
        }
    }
}
