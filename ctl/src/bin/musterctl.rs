//! `musterctl`: the master control binary. All logic is in `muster_ctl`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    muster_ctl::main().await
}
