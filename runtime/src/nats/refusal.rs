//! The server's refusal of a publish or subscription for the user's
//! permissions, as a typed value.
//!
//! nats-server does not answer a refused publish: it drops the message and
//! sends the connection `-ERR 'Permissions Violation for Publish to "…"'`,
//! which async-nats hands to the event callback as
//! `ServerError::Other(text)`. Without this, a request a user may not send
//! just waits out its timeout. [`Refusal::from_server_error`] is the one
//! place that reads the server's text; [`Refusals`] carries each refusal
//! from the connection's event callback to whoever waits on a request
//! (`musterctl` ends the request at once with a permissions error, exit 10).

use tokio::sync::broadcast;

/// What the user was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// One permissions violation the server reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the NATS server refused this user {} {subject} (permissions violation: this identity may not do that)", match .action { Action::Publish => "a publish to", Action::Subscribe => "a subscription to" })]
pub struct Refusal {
    pub action: Action,
    pub subject: String,
}

impl Refusal {
    /// The refusal a server error reports, if it is one.
    pub fn from_server_error(e: &async_nats::ServerError) -> Option<Self> {
        let async_nats::ServerError::Other(text) = e else { return None };
        // nats-server: `Permissions Violation for Publish to "subj"`,
        // `… for Subscription to "subj"` (possibly `using queue "q"`).
        let rest = strip_prefix_ignore_case(text, "permissions violation for ")?;
        let (action, rest) = if let Some(r) = strip_prefix_ignore_case(rest, "publish to ") {
            (Action::Publish, r)
        } else {
            (Action::Subscribe, strip_prefix_ignore_case(rest, "subscription to ")?)
        };
        let subject = rest.strip_prefix('"')?.split('"').next()?.to_owned();
        Some(Self { action, subject })
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Refusals on one connection, for any number of waiters.
#[derive(Debug, Clone)]
pub struct Refusals(broadcast::Sender<Refusal>);

impl Default for Refusals {
    fn default() -> Self {
        // A waiter subscribes before it publishes; a few refusals in flight at most.
        Self(broadcast::channel(64).0)
    }
}

impl Refusals {
    /// Called from the connection's event callback.
    pub fn report(&self, e: &async_nats::ServerError) {
        if let Some(r) = Refusal::from_server_error(e) {
            // No waiter: nobody to tell.
            let _ = self.0.send(r);
        }
    }

    /// Refusals from now on (subscribe before the publish they may refuse).
    pub fn watch(&self) -> Watch {
        Watch(self.0.subscribe())
    }
}

/// A subscription to a connection's refusals.
#[derive(Debug)]
pub struct Watch(broadcast::Receiver<Refusal>);

impl Watch {
    /// The next refusal whose subject `wanted` accepts; never returns when
    /// there is none.
    pub async fn next(&mut self, wanted: impl Fn(&str) -> bool) -> Refusal {
        loop {
            match self.0.recv().await {
                Ok(r) if wanted(&r.subject) => return r,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::ServerError;

    use super::*;

    #[test]
    fn the_servers_permission_errors_are_read_and_others_are_not() {
        let publish = ServerError::Other(r#"Permissions Violation for Publish to "muster.api.admin.job.create""#.into());
        assert_eq!(
            Refusal::from_server_error(&publish),
            Some(Refusal { action: Action::Publish, subject: "muster.api.admin.job.create".into() })
        );
        let sub = ServerError::Other(r#"Permissions Violation for Subscription to "_INBOX.x" using queue "q""#.into());
        assert_eq!(Refusal::from_server_error(&sub), Some(Refusal { action: Action::Subscribe, subject: "_INBOX.x".into() }));
        for other in [
            ServerError::AuthorizationViolation,
            ServerError::SlowConsumer(3),
            ServerError::Other("Maximum Payload Violation".into()),
            ServerError::Other("Permissions Violation for Publish with Reply of \"x\"".into()),
        ] {
            assert_eq!(Refusal::from_server_error(&other), None, "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_refusal_of_its_subject() {
        let refusals = Refusals::default();
        let mut watch = refusals.watch();
        refusals.report(&ServerError::Other(r#"Permissions Violation for Publish to "a""#.into()));
        refusals.report(&ServerError::Other(r#"Permissions Violation for Publish to "b""#.into()));
        assert_eq!(watch.next(|s| s == "b").await.subject, "b");
    }
}
