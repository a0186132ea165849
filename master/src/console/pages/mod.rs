//! The console's pages, one file per section: [`targets`] (the status tab
//! of "Manage Target Servers", and a target's own page), [`jobs`],
//! [`history`] (runs and a run's steps) and [`instructions`] (the
//! download list). Each reads through the API handlers ([`call`]) and
//! renders on the server.

pub mod history;
pub mod instructions;
pub mod jobs;
pub mod targets;

use maud::{html, Markup};
use muster_shared::api::{CorruptRecord, Listed, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ConsoleError;
use super::AppState;

/// The body of an operation that takes none.
#[derive(Debug, Serialize)]
pub struct NoBody {}

/// Calls an API operation in-process. Reads need no check (both roles
/// may read); actions are checked by [`super::auth::Signed::authorize`]
/// before.
///
/// # Errors
/// The operation's error.
pub async fn call<B: Serialize, R: DeserializeOwned>(state: &AppState, op: Op, body: B) -> Result<R, ConsoleError> {
    Ok(state.ctx.call(op, body).await?)
}

/// A listing's readable records, and its corrupt ones (a record whose
/// bytes do not decode is shown, never hidden: `musterctl` deletes it).
///
/// # Errors
/// The operation's error.
pub async fn listing<B: Serialize, T: DeserializeOwned>(
    state: &AppState,
    op: Op,
    body: B,
) -> Result<(Vec<T>, Vec<CorruptRecord>), ConsoleError> {
    let listed: Vec<Listed<T>> = call(state, op, body).await?;
    let (mut ok, mut corrupt) = (Vec::new(), Vec::new());
    for l in listed {
        match l {
            Listed::Ok(t) => ok.push(t),
            Listed::Corrupt(c) => corrupt.push(c),
        }
    }
    Ok((ok, corrupt))
}

/// The corrupt records of a listing, each with its key and why.
pub fn corrupt(kind: &str, records: &[CorruptRecord]) -> Markup {
    html! {
        @if !records.is_empty() {
            div.notice.bad.corrupt {
                @for c in records {
                    p { span.error { "corrupt " (kind) " record " (c.key) } ": " (c.corrupt) }
                }
            }
        }
    }
}

/// What an action did, shown above the page it returns to.
#[derive(Debug, Clone)]
pub enum Notice {
    Done(Markup),
    Failed(String),
}

impl Notice {
    /// An action's result, or its API error as a failed notice (the page
    /// is still shown); other errors stay errors.
    pub fn from_result(r: Result<Markup, ConsoleError>) -> Result<Notice, ConsoleError> {
        match r {
            Ok(m) => Ok(Notice::Done(m)),
            Err(ConsoleError::Api(e)) => Ok(Notice::Failed(e.message)),
            Err(e) => Err(e),
        }
    }

    pub fn render(notice: Option<&Notice>) -> Markup {
        html! {
            @match notice {
                Some(Notice::Done(m)) => div.notice id="notice" { (m) },
                Some(Notice::Failed(e)) => div.notice.bad id="notice" { span.error { (e) } },
                None => {},
            }
        }
    }
}
