//! What each command does: one room per resource, each turning parsed
//! arguments into API calls (or stream reads) and handing the answer to
//! [`crate::render`].
//!
//! [`run`] is the dispatch: it connects to NATS only for the commands that
//! need it (`auth nats-config` and `completions` do not), and routes each
//! command to its room. Commands go through the master's API
//! ([`ApiClient`]), except `history` and `run show`, which read
//! `MUSTER_RESULTS` directly and so work while the master is down.

mod auth;
mod events;
mod exec;
mod group;
mod history;
mod instructions;
mod job;
mod status;
mod target;

use muster_runtime::nats::{self, Wait};
use muster_shared::subject::Subjects;

use crate::args::{Cli, Command};
use crate::client::ApiClient;
use crate::exit::Failure;
use crate::render::Out;

/// What every command that talks to NATS gets.
#[derive(Debug)]
struct Ctx {
    api: ApiClient,
    out: Out,
}

impl Ctx {
    fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.api.client.clone())
    }
}

/// Runs one parsed command.
///
/// # Errors
/// A [`Failure`] with its exit code.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Out { json: cli.json };
    crate::zone::choose(cli.utc);
    if let Command::Completions { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "musterctl", &mut script);
        crate::stdout::write_all(&script);
        return Ok(());
    }
    let subjects = Subjects::new(&cli.prefix).map_err(|e| Failure::invalid(e.to_string()))?;
    if let Command::Auth(cmd) = cli.command {
        return auth::run(&subjects, out, cmd);
    }
    let (client, refusals) = nats::connect_watching(&cli.nats.options("musterctl"), Wait::Once).await?;
    let mut api = ApiClient::new(client, subjects).with_refusals(refusals);
    api.timeout = std::time::Duration::from_secs(cli.api_timeout);
    let ctx = Ctx { api, out };
    match cli.command {
        Command::Target(cmd) => target::run(&ctx, cmd).await,
        Command::Group(cmd) => group::run(&ctx, cmd).await,
        Command::Job(cmd) => job::run(&ctx, cmd).await,
        Command::Instructions(args) => instructions::run(&ctx, args).await,
        Command::Status => status::status(&ctx).await,
        Command::Ping { wait_ms } => status::ping(&ctx, wait_ms).await,
        Command::Exec(args) => exec::exec(&ctx, args).await,
        Command::Events(args) => events::events(&ctx, args).await,
        Command::History(args) => history::history(&ctx, args).await,
        Command::Run(cmd) => history::run(&ctx, cmd).await,
        Command::Completions { .. } | Command::Auth(_) => unreachable!("handled before connecting"),
    }
}
