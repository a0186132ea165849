//! `musterctl auth`: the commands that need no NATS connection; they write
//! files ([`crate::auth`]) and say where.

use muster_shared::subject::Subjects;

use crate::args::AuthCmd;
use crate::exit::Failure;
use crate::render::Out;

pub(super) fn run(subjects: &Subjects, out: Out, cmd: AuthCmd) -> Result<(), Failure> {
    match cmd {
        AuthCmd::NatsConfig { targets, dir } => users(subjects, out, &dir, &targets),
        AuthCmd::AddTarget { name, dir } => users(subjects, out, &dir, &[name]),
        AuthCmd::RemoveTarget { name, dir } => {
            let written = crate::auth::remove_target(&dir, subjects, &name).map_err(|e| match e {
                crate::auth::RemoveError::NotFound { .. } => Failure::new(crate::exit::Exit::NotFound, e.to_string()),
                crate::auth::RemoveError::Other(e) => e.into(),
            })?;
            out.print(&serde_json::json!({"config": written.config, "removed": name}), || {
                crate::say!(
                    "removed {name} from {} and deleted its files: reload nats-server (nats-server --signal reload) to refuse it",
                    written.config.display()
                );
            })
        }
        AuthCmd::ConsoleUser { name, role, dir, password_stdin } => {
            let how = if password_stdin { crate::auth::console::Password::Stdin } else { crate::auth::console::Password::Make };
            let added = crate::auth::console::add_user(&dir, &name, role, how).map_err(|e| Failure::invalid(format!("{e:#}")))?;
            let json = serde_json::json!({
                "file": added.file,
                "user": name,
                "role": role.as_str(),
                "replaced": added.replaced,
                "password": added.made_password,
            });
            out.print(&json, || {
                let verb = if added.replaced { "replaced" } else { "added" };
                crate::say!("{verb} console user {name} ({}) in {}", role.as_str(), added.file.display());
                if let Some(p) = &added.made_password {
                    crate::say!("  password: {p}   (shown once; it is stored only hashed)");
                }
                crate::say!("  start the master with --http ADDR --http-users {}", added.file.display());
            })
        }
        AuthCmd::Init { targets, dir, hosts } => {
            let made = crate::auth::init::init(&dir, subjects, &hosts, &targets)?;
            let env: Vec<serde_json::Value> =
                made.env_files.iter().map(|(u, f)| serde_json::json!({"identity": u, "env_file": f})).collect();
            let json = serde_json::json!({
                "server_config": made.server_config,
                "ca": made.ca,
                "server_cert": made.server_cert,
                "hosts": made.hosts,
                "env_files": env,
            });
            out.print(&json, || {
                crate::say!("wrote {}: run nats-server -c {}", made.server_config.display(), made.server_config.display());
                crate::say!("  CA                   {}", made.ca.display());
                crate::say!("  server certificate   {} (for {})", made.server_cert.display(), made.hosts.join(", "));
                for (identity, file) in &made.env_files {
                    crate::say!("  {identity:<20} {}", file.display());
                }
            })
        }
    }
}

fn users(
    subjects: &Subjects,
    out: Out,
    dir: &std::path::Path,
    targets: &[muster_shared::name::TargetName],
) -> Result<(), Failure> {
    let written = crate::auth::write_config(dir, subjects, targets)?;
    let users: Vec<serde_json::Value> =
        written.users.iter().map(|(u, f)| serde_json::json!({"user": u, "env_file": f})).collect();
    let converted = &written.converted;
    out.print(&serde_json::json!({"config": written.config, "users": users, "converted": converted}), || {
        crate::say!("wrote {} (include it from nats-server.conf, then reload the server)", written.config.display());
        for (user, file) in &written.users {
            crate::say!("  {user:<20} {}", file.display());
        }
        if !converted.is_empty() {
            crate::say!(
                "converted from passwords to nkeys: {} (give each process its new .env and .nk files, reload the server, restart them)",
                converted.join(", ")
            );
        }
    })
}
