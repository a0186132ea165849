//! End-to-end tests: a real nats-server, the real `muster-master`,
//! `muster-target` and `musterctl` binaries, killed for real. Linked into one
//! binary, grouped by theme.

mod applied;
mod auth_reload;
mod cluster;
mod console;
mod core_loop;
mod corrupt;
mod day_one;
mod defection;
mod desired;
mod desired_agent;
mod events;
mod exec;
mod expiry;
mod faults;
mod history;
mod jobs;
mod kept_output;
mod key_files;
mod live_output;
mod metrics;
mod operator;
mod params;
mod readme_tour;
mod reply_injection;
mod roles;
mod run_as;
mod security;
mod tls;
mod upgrade;
