//! End-to-end tests: a real nats-server, the real `muster-master`,
//! `muster-target` and `musterctl` binaries, killed for real. Linked into one
//! binary, grouped by theme.

mod applied;
mod cluster;
mod defection;
mod desired;
mod core_loop;
mod desired_agent;
mod operator;
mod jobs;
mod expiry;
mod faults;
mod security;
mod history;
mod upgrade;
