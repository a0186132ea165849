//! `musterctl`: the master control binary. All logic is in `muster_master::ctl`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    muster_master::ctl::main().await
}
