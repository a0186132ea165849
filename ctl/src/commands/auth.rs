//! `musterctl auth nats-config`: the one command that needs no NATS
//! connection; it writes files ([`crate::auth`]) and says where.

use muster_shared::subject::Subjects;

use crate::args::AuthCmd;
use crate::exit::Failure;
use crate::render::Out;

pub(super) fn run(subjects: &Subjects, out: Out, cmd: AuthCmd) -> Result<(), Failure> {
    let AuthCmd::NatsConfig { targets, dir } = cmd;
    let written = crate::auth::write_config(&dir, subjects, &targets)?;
    let users: Vec<serde_json::Value> =
        written.users.iter().map(|(u, f)| serde_json::json!({"user": u, "env_file": f})).collect();
    out.print(&serde_json::json!({"config": written.config, "users": users}), || {
        crate::say!("wrote {} (include it from nats-server.conf, then reload the server)", written.config.display());
        for (user, file) in &written.users {
            crate::say!("  {user:<20} {}", file.display());
        }
    })
}
