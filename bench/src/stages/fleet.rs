//! A fleet of virtual targets on its own nats-server and master, so each
//! group of figures starts from an empty server and the server's footprint
//! is that fleet's alone.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use muster_ctl::ApiClient;
use muster_shared::api::{EnlistRequest, GroupInfo, GroupMembers, GroupRef, JobInfo, JobSelect, Op, Selection, TargetInfo};
use muster_shared::name::{GroupName, JobName, TargetName};
use muster_shared::subject::Subjects;
use muster_tests::Cluster;

use crate::virtual_targets::{virtual_name, VirtualTargets};

/// Members per group: a group record (and a job's target list) must stay
/// well under the 1 MB message limit, so a job reaches 100,000 targets
/// through groups of this size.
const GROUP_SIZE: usize = 10_000;

/// API calls in flight while enlisting, as an operator's script would.
const ENLIST_IN_FLIGHT: usize = 64;

pub struct Fleet {
    pub cluster: Cluster,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// The API with a long timeout: one call may cover 100,000 targets.
    pub api: ApiClient,
    pub targets: VirtualTargets,
    /// `v00000`.. up to this many are enlisted.
    pub enlisted: usize,
}

impl Drop for Fleet {
    /// Stops the processes before the cluster's directory goes: removing a
    /// store that nats-server is still writing (10,000 consumers) takes
    /// minutes.
    fn drop(&mut self) {
        for m in &mut self.cluster.masters {
            m.kill();
        }
        self.cluster.nats.kill();
    }
}

impl Fleet {
    /// A new nats-server and master, and virtual targets connected to it.
    pub async fn start() -> anyhow::Result<Fleet> {
        let cluster = tokio::task::block_in_place(|| {
            let mut c = Cluster::new();
            c.env.push(("MUSTER_LOG".into(), std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())));
            c.start_master();
            c
        });
        let client = async_nats::connect(&cluster.url()).await?;
        let subjects = Subjects::default();
        let mut api = ApiClient::new(client.clone(), subjects.clone());
        api.timeout = Duration::from_secs(3600);
        let targets = VirtualTargets::start(&cluster.url(), subjects).await?;
        Ok(Fleet { js: async_nats::jetstream::new(client.clone()), client, api, targets, enlisted: 0, cluster })
    }

    /// The first `n` names.
    pub fn names(n: usize) -> Vec<TargetName> {
        (0..n).map(virtual_name).collect()
    }

    /// Enlists targets up to `n` (those not enlisted yet) through the API,
    /// [`ENLIST_IN_FLIGHT`] at once; returns how long that took.
    pub async fn enlist_up_to(&mut self, n: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        futures::stream::iter((self.enlisted..n).map(virtual_name))
            .map(|name| {
                let api = self.api.clone();
                async move {
                    let req = EnlistRequest { name, location: None, instance: None, poll_interval_secs: Some(60), xkey: None };
                    api.call::<_, TargetInfo>(Op::TargetEnlist, req).await
                }
            })
            .buffer_unordered(ENLIST_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .context("enlisting")?;
        self.enlisted = self.enlisted.max(n);
        Ok(start.elapsed())
    }

    /// Assigns `job` to the first `n` targets through groups of
    /// [`GROUP_SIZE`] filled beforehand: one change, in one API call, that
    /// reaches them all. Returns the call's own time.
    pub async fn assign(&self, job: &JobName, n: usize) -> anyhow::Result<Duration> {
        let mut groups = Vec::new();
        for (k, chunk) in Self::names(n).chunks(GROUP_SIZE).enumerate() {
            let group = GroupName::new(format!("{job}-{k}"))?;
            let _: GroupInfo = self.api.call(Op::GroupCreate, GroupRef { group: group.clone() }).await?;
            let _: GroupInfo =
                self.api.call(Op::GroupAdd, GroupMembers { group: group.clone(), targets: chunk.to_vec() }).await?;
            groups.push(group);
        }
        let start = Instant::now();
        let _: JobInfo = self
            .api
            .call(Op::JobAssign, JobSelect { job: job.clone(), select: Selection { targets: vec![], groups, all: false } })
            .await?;
        Ok(start.elapsed())
    }

    pub fn master_pid(&self) -> i32 {
        self.cluster.masters[0].pid()
    }

    /// This fleet's nats-server: the one whose configuration lies in the
    /// cluster's directory.
    pub fn nats_pid(&self) -> i32 {
        let dir = self.cluster.dir.path().to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .find(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.starts_with("nats-server") && cmd.contains(&dir)
            })
            .unwrap_or(0)
    }
}
