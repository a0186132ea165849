//! `musterctl`, and the client of the master's API.
//!
//! This crate is a client of the master, never a part of it: it speaks only
//! the wire contract (`muster-shared`), so the benchmark and any other tool
//! that calls the API link [`ApiClient`] and not the daemon. The rooms:
//!
//! - [`args`]: the command line as clap parses it;
//! - [`commands`]: what each command does, one room per resource;
//! - [`client`]: the API call, with reassembly of replies sent in parts;
//! - [`history`]: runs read straight from `MUSTER_RESULTS` (no master needed;
//!   the reader lives in `muster_runtime::history`, shared with the console);
//! - [`follow`]: `job start --wait`, which follows runs by watching job status;
//! - [`render`]: tables and other human output, and the `--json` switch;
//! - [`exit`]: the exit codes scripts branch on, and [`Failure`];
//! - [`zone`]: times shown in the operator's zone (or UTC), labelled;
//! - [`stdout`]: output that a closed pipe (`musterctl … | head`) ends quietly;
//! - [`auth`]: nats-server users that keep each target to its own subjects.
//!
//! The binary only calls [`main`].

// Every line goes through `stdout` (`say!`), which a closed pipe ends quietly.
#![deny(clippy::print_stdout)]

pub mod args;
pub mod auth;
pub mod client;
pub mod commands;
pub mod exit;
pub mod follow;
/// The history reader, shared with the master's console.
pub use muster_runtime::history;
pub mod kept;
pub mod live;
pub mod render;
pub mod stdout;
pub mod zone;

use std::process::ExitCode;

pub use client::ApiClient;
pub use exit::{Exit, Failure};

/// Parses arguments, runs the command, prints errors, returns the exit code.
pub async fn main() -> ExitCode {
    let cli = match muster_runtime::exit::parse_args::<args::Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("musterctl: {}", f.message);
            ExitCode::from(f.exit.code())
        }
    }
}
