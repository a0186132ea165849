//! Nothing lost: real processes killed for real (a master before its
//! publishes, a target mid-apply), a target cut off from NATS past the dedup
//! window, a backlog drained by a master killed mid-drain, and garbage on
//! every subject Muster reads.
//!
//! Jobs append their run id to a file each time they really run, so the runs
//! that happened are counted against history ([`RunTally`]): runs happened,
//! in history, skipped, duplicates (a run id that ran twice or shows twice),
//! losses; plus `stored` (end records in the stream, copies included). Each
//! test prints its tally.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_tests::proxy::Proxy;
use muster_tests::tally::{self, RunTally};
use muster_tests::{block_on, s, wait_for, wait_for_described, Cluster};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A job that appends its run id to `out` every second.
fn ticker(name: &str, out: &Path) -> String {
    json!({
        "name": name,
        "steps": [{"name": "tick", "command": tally::append_run_id(out)}],
        "schedules": [{"name": "every-second", "every_secs": 1}],
    })
    .to_string()
}

fn lines(path: &Path) -> usize {
    tally::run_ids(path).len()
}

fn wait_lines(path: &Path, n: usize) {
    wait_for(&format!("{n} runs in {}", path.display()), WAIT, || (lines(path) >= n).then_some(()));
}

/// Creates `job` ticking on `target`, and waits for its first runs.
fn start_ticker(c: &Cluster, job: &str, target: &str) -> PathBuf {
    let out = c.dir.path().join(format!("{job}.ticks"));
    c.create_job_file(&ticker(job, &out)).expect("create");
    c.ctl(&["job", "assign", job, "--target", target]).expect("assign");
    c.ctl(&["target", "force-poll", target]).expect("force-poll");
    wait_lines(&out, 2);
    out
}

#[derive(Debug)]
struct Tally {
    scenario: String,
    runs: RunTally,
    /// End records in the stream, copies included.
    stored: usize,
    /// Records history shows (runs and `skipped` records).
    history: usize,
}

impl Tally {
    fn print(&self) {
        println!("TALLY {}: {}, end records stored {}", self.scenario, self.runs, self.stored);
    }

    /// Prints the tally, then fails on anything wrong with it.
    fn check(&self, c: &Cluster) {
        self.print();
        let problems = self.runs.problems();
        assert!(problems.is_empty(), "{problems:?}\n{self:?}\n{}", c.logs());
    }
}

/// End records of `job` that `target` published, as the stream stores them
/// (replays beyond the dedup window included).
fn stored_ends(c: &Cluster, target: &str, job: &str) -> usize {
    c.stored("MUSTER_RESULTS", &format!("muster.result.{target}.run.*"))
        .iter()
        .filter(|m| m.msg_id.ends_with("-end"))
        .filter(|m| serde_json::from_slice::<Value>(&m.payload).is_ok_and(|r| s(&r, "job") == job))
        .count()
}

/// Stops `job`, waits until every run that happened is in history, and
/// counts. Fails on any loss or duplicate, on a run that did not succeed or
/// a `skipped` record that names no run, or if job status lags behind.
fn settle(c: &Cluster, scenario: &str, job: &str, target: &str, out: &Path) -> Tally {
    c.ctl(&["job", "disable", job]).expect("disable");
    let (runs, history) = tally::settle(c, job, &[target], out, Duration::from_secs(90));
    let tally = Tally { scenario: scenario.to_owned(), runs, stored: stored_ends(c, target, job), history: history.len() };
    tally.check(c);
    // Job status caught up: it shows the newest record (a run, or a fire
    // skipped during it), finished.
    let newest = history.last().expect("runs");
    let want = (s(newest, "run_id").to_owned(), s(newest, "outcome").to_owned());
    let status = || -> Option<Vec<(String, String)>> {
        let st: Vec<Value> = serde_json::from_value(c.ctl(&["job", "status", job]).ok()?).ok()?;
        Some(st.iter().map(|x| (s(x, "run_id").to_owned(), s(x, "outcome").to_owned())).collect())
    };
    wait_for_described(
        "job status to show the newest run",
        WAIT,
        || (status()? == [want.clone()]).then_some(()),
        || format!("newest in history {want:?}, job status {:?}", status()),
    );
    tally
}

#[test]
fn master_killed_while_targets_run_every_second_loses_and_duplicates_nothing() {
    let mut c = Cluster::with_master();
    c.start_target("m1", 60);
    c.wait_target_online("m1");
    let out = start_ticker(&c, "tick-m", "m1");

    c.masters[0].kill();
    wait_lines(&out, lines(&out) + 5); // runs while no master is there
    c.start_master();
    wait_lines(&out, lines(&out) + 2);
    let t = settle(&c, "master kill -9", "tick-m", "m1", &out);
    assert!(t.runs.happened >= 9, "{t:?}");
}

#[test]
fn nats_server_killed_and_restarted_loses_and_duplicates_nothing() {
    let mut c = Cluster::with_master();
    for t in ["n1", "n2"] {
        c.start_target(t, 60);
        c.wait_target_online(t);
    }
    let outs = [start_ticker(&c, "tick-n1", "n1"), start_ticker(&c, "tick-n2", "n2")];

    c.nats.kill();
    for out in &outs {
        wait_lines(out, lines(out) + 4); // runs while NATS is down: spooled
    }
    assert!(spooled(&c, "n1") + spooled(&c, "n2") > 0, "results were spooled while NATS was down");
    c.nats.restart();
    for out in &outs {
        wait_lines(out, lines(out) + 2);
    }
    settle(&c, "nats-server kill -9 (n1)", "tick-n1", "n1", &outs[0]);
    settle(&c, "nats-server kill -9 (n2)", "tick-n2", "n2", &outs[1]);
}

/// Records waiting in a target's spool right now.
fn spooled(c: &Cluster, target: &str) -> usize {
    std::fs::read_dir(c.state_dir(target).join("spool")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn target_cut_off_past_the_dedup_window_delivers_everything_once() {
    let mut c = Cluster::new();
    c.env.push(("MUSTER_DUPLICATE_WINDOW".into(), "2".into()));
    c.start_master();
    let proxy = Proxy::start(c.nats.port);
    c.start_target_at("cut1", 60, &proxy.url(), &[]);
    c.wait_target_online("cut1");
    let out = start_ticker(&c, "tick-cut", "cut1");

    // Cut off for well over the 2 s window; the target keeps running jobs.
    proxy.cut();
    let at_cut = lines(&out);
    wait_lines(&out, at_cut + 6);
    assert!(spooled(&c, "cut1") > 0, "results were spooled while cut off");
    proxy.restore();
    wait_lines(&out, lines(&out) + 2);

    // Deaf: results reach the stream but their acks never come back, so the
    // spool sends them again after the window — JetStream stores the copies.
    proxy.deafen();
    let copies = wait_for("copies stored beyond the dedup window", WAIT, || {
        let stored = c.stored("MUSTER_RESULTS", "muster.result.cut1.run.*");
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for m in &stored {
            *per_id.entry(m.msg_id.clone()).or_default() += 1;
        }
        let extra: usize = per_id.values().map(|n| n - 1).sum();
        let end_copied = per_id.iter().any(|(id, n)| id.ends_with("-end") && *n > 1);
        (end_copied).then_some(extra)
    });
    proxy.restore();
    println!("TALLY cut-off: {copies} extra copies stored by replays beyond the window");
    let t = settle(&c, "cut off past the dedup window", "tick-cut", "cut1", &out);
    assert!(t.stored > t.history, "an end record was stored twice, history shows it once: {t:?}");
}

/// A target killed while applying a new revision (its job documents half
/// written, its starts not yet handled) converges at its next poll: every
/// job there, no start run twice, each answered once.
#[test]
fn an_agent_killed_while_applying_a_revision_converges_with_nothing_twice_or_lost() {
    const JOBS: usize = 40;
    let mut c = Cluster::with_master();
    c.start_target("k1", 3600);
    c.wait_target_online("k1");
    c.target("k1").terminate(Duration::from_secs(20));

    // While it is away: forty jobs, each appending its run id to its own
    // file, and a start of each (a revision's worth of work to apply).
    let out = c.dir.path().join("lines");
    std::fs::create_dir_all(&out).unwrap();
    for n in 0..JOBS {
        let job = format!("job{n:02}");
        let file = out.join(&job);
        c.ctl(&["job", "create", &job, "--command", &format!("echo $MUSTER_RUN_ID >> '{}'", file.display())]).expect("create");
        c.ctl(&["job", "assign", &job, "--target", "k1"]).expect("assign");
        c.ctl(&["job", "start", &job]).expect("start");
    }
    let (_, published) = crate::desired_agent::manifest(&c, "k1");
    assert_eq!((published.jobs.len(), published.starts.len()), (JOBS, JOBS));

    // Back, and killed as soon as it has written part of the revision.
    c.start_target("k1", 3600);
    let jobs_dir = c.state_dir("k1").join("jobs");
    let seen = wait_for("the apply under way", Duration::from_secs(30), || {
        let n = std::fs::read_dir(&jobs_dir).map_or(0, Iterator::count);
        (n > 0).then_some(n)
    });
    c.target("k1").kill();
    println!("killed with {seen} of {JOBS} job files written");

    // Restarted, it converges at its next poll.
    c.start_target("k1", 3600);
    c.wait_target_online("k1");
    // The master may take an answered start out meanwhile (a new revision):
    // poll until what the target applied is what is published.
    wait_for("k1 converged on the published revision", Duration::from_secs(30), || {
        let polled = c.ctl(&["target", "force-poll", "k1"]).ok()?;
        let (_, now) = crate::desired_agent::manifest(&c, "k1");
        (polled[0]["report"]["applied_revision"]["revision"] == now.revision.0).then_some(())
    });
    assert_eq!(std::fs::read_dir(c.state_dir("k1").join("jobs")).map_or(0, Iterator::count), JOBS, "no job lost");

    // No start ran twice; each answered start has one final record.
    wait_for("the runs settled", WAIT, || {
        let polled = c.ctl(&["target", "force-poll", "k1"]).ok()?;
        let r = &polled[0]["report"];
        (r["spooled"] == 0 && r["running"].as_array().is_some_and(Vec::is_empty)).then_some(())
    });
    let mut answered = 0;
    for n in 0..JOBS {
        let job = format!("job{n:02}");
        let ran = std::fs::read_to_string(out.join(&job)).unwrap_or_default();
        assert!(ran.lines().count() <= 1, "{job} ran twice: {ran}");
        let runs = wait_for(&format!("{job}'s history"), WAIT, || c.try_finished_runs(&job));
        let mut per_run: HashMap<String, usize> = HashMap::new();
        for r in &runs {
            *per_run.entry(s(r, "run_id").to_owned()).or_default() += 1;
        }
        assert!(per_run.values().all(|n| *n == 1) && runs.len() <= 1, "{job}: {runs:?}");
        if let Some(line) = ran.lines().next() {
            assert_eq!(runs.len(), 1, "{job} ran and its run is recorded: {runs:?}");
            assert_eq!(s(&runs[0], "run_id"), line.trim());
        }
        answered += runs.len();
    }
    println!("TALLY target kill -9 mid-apply: {answered} of {JOBS} starts answered, none twice");
}

#[test]
fn master_drains_a_backlog_and_a_kill_mid_drain_loses_and_duplicates_nothing() {
    const TARGETS: usize = 1500;
    const RUNS: usize = 4;
    let mut c = Cluster::with_master();
    c.masters[0].kill();
    let job_id = uuid::Uuid::new_v4();
    // What targets would have published while the master was away.
    let mut last = HashMap::new();
    let mut published = Vec::new();
    let url = c.url();
    block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut acks = Vec::new();
        let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
        for run in 0..RUNS {
            for t in 0..TARGETS {
                let target = format!("bk{t}");
                let run_id = uuid::Uuid::now_v7();
                let started = t0 + chrono::Duration::seconds(run as i64 * 60);
                for outcome in ["running", "succeeded"] {
                    let mut body = json!({"v":1,"run_id":run_id,"job_id":job_id,"job":"backlog","target":target,
                        "trigger":{"kind":"manual"},"outcome":outcome,"started_at":started,"steps":[]});
                    let phase = if outcome == "running" {
                        "start"
                    } else {
                        body["finished_at"] = json!(started);
                        "end"
                    };
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("run-{run_id}-{phase}").as_str());
                    let subject = format!("muster.result.{target}.run.{job_id}");
                    acks.push(js.publish_with_headers(subject, h, body.to_string().into()).await.unwrap());
                }
                // At most a few thousand acks in flight: the context
                // back-pressures beyond that until they are awaited.
                if acks.len() >= 1000 {
                    for a in acks.drain(..) {
                        a.await.expect("stored");
                    }
                }
                published.push(run_id.to_string());
                last.insert(target, run_id);
            }
        }
        for a in acks {
            a.await.expect("stored");
        }
    });
    let total = (TARGETS * RUNS * 2) as u64;
    assert_eq!(c.consumer_state("MUSTER_RESULTS", "master").pending, total);

    // Start the master and kill it in the middle of the drain.
    c.spawn_master();
    let at_kill = wait_for("the drain to start", WAIT, || {
        let st = c.consumer_state("MUSTER_RESULTS", "master");
        (st.acked > 0).then_some(st)
    });
    c.masters[1].kill();
    println!("killed the master mid-drain at {at_kill:?} of {total}");
    assert!(at_kill.acked < total, "the kill came before the drain finished: {at_kill:?}");

    let started = std::time::Instant::now();
    c.start_master();
    wait_for("the backlog drained", Duration::from_secs(120), || {
        let st = c.consumer_state("MUSTER_RESULTS", "master");
        (st.pending == 0 && st.ack_pending == 0).then_some(())
    });
    println!("TALLY backlog: drained {total} records after restart in {:?}", started.elapsed());

    // Job status: every target shows its newest run, finished.
    let url = c.url();
    let wrong = block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let kv = js.get_key_value("muster-jobstatus").await.unwrap();
        let mut wrong = Vec::new();
        for (target, run_id) in &last {
            let v: Value = serde_json::from_slice(&kv.get(format!("{job_id}.{target}")).await.unwrap().expect("status")).unwrap();
            if s(&v, "run_id") != run_id.to_string() || s(&v, "outcome") != "succeeded" {
                wrong.push(v);
            }
        }
        wrong
    });
    assert!(wrong.is_empty(), "{} of {TARGETS} statuses are not the newest run: {:?}", wrong.len(), &wrong[..wrong.len().min(3)]);
    // Every run published is in history once, succeeded, and nothing else.
    let history: Vec<Value> = c.ctl_ok(&["history", "--job", "backlog"]);
    let t = Tally {
        scenario: "backlog drain, master kill -9 mid-drain".into(),
        runs: RunTally::count(&published, &history),
        stored: c
            .stored("MUSTER_RESULTS", &format!("muster.result.*.run.{job_id}"))
            .iter()
            .filter(|m| m.msg_id.ends_with("-end"))
            .count(),
        history: history.len(),
    };
    t.check(&c);
    assert_eq!((t.runs.happened, t.runs.recorded, t.history), (TARGETS * RUNS, TARGETS * RUNS, TARGETS * RUNS), "{t:?}");
}

#[test]
fn master_and_target_start_before_nats_and_connect_when_it_comes() {
    let mut c = Cluster::new();
    c.nats.kill();
    c.spawn_master();
    c.start_target("early", 60);
    wait_for("both processes started without NATS", WAIT, || {
        (c.masters[0].log_text().contains("starting") && c.target("early").log_text().contains("agent starting")).then_some(())
    });
    assert!(c.masters[0].is_running() && c.target("early").is_running());
    c.nats.restart();
    wait_for("the master's API", WAIT, || c.ctl(&["target", "list"]).ok());
    c.wait_target_online("early");
    c.ctl(&["job", "create", "late-nats", "--command", "echo up"]).expect("create");
    c.ctl(&["job", "assign", "late-nats", "--target", "early"]).expect("assign");
    c.ctl(&["job", "start", "late-nats"]).expect("start");
    wait_for("the run", WAIT, || (c.finished_runs("late-nats").len() == 1).then_some(()));
}

// ---- bad input -------------------------------------------------------------------

/// 2 MiB: over `MAX_BODY_BYTES`, under the test server's `max_payload`.
fn oversized() -> Vec<u8> {
    let mut b = br#"{"v":1,"pad":""#.to_vec();
    b.resize(2 * 1024 * 1024, b'x');
    b.extend_from_slice(br#""}"#);
    b
}

#[test]
fn garbage_on_every_subject_is_refused_and_the_system_keeps_working() {
    let mut c = Cluster::new_with("max_payload: 4MB");
    c.start_master();
    c.start_target("g1", 60);
    c.wait_target_online("g1");
    let url = c.url();
    let job_id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    let manifest = |target: &str, extra: Value| {
        let mut m = json!({"v":1,"target":target,"epoch":uuid::Uuid::new_v4(),"revision":5,"changes":0,"published_at":now});
        m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        m.to_string().into_bytes()
    };
    let run = |target: &str, job: uuid::Uuid| {
        json!({"v":1,"run_id":uuid::Uuid::now_v7(),"job_id":job,"job":"forged","target":target,
            "trigger":{"kind":"manual"},"outcome":"succeeded","started_at":now,"finished_at":now,"steps":[]})
        .to_string()
        .into_bytes()
    };
    let malformed = b"{\"v\":1, not json".to_vec();

    let (api_errors, control_errors, refused) = block_on(async {
        let client = async_nats::connect(url.clone()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        // API: each bad request is answered with an error.
        let mut api_errors = Vec::new();
        // The master answers an agent only on its own inbox, as agents use.
        let as_g1 = async_nats::ConnectOptions::new().custom_inbox_prefix("_INBOX_g1").connect(url).await.unwrap();
        for (subject, body) in [
            ("muster.api.admin.job.create", malformed.clone()),
            ("muster.api.admin.job.create", br#"{"v":99,"spec":{}}"#.to_vec()),
            ("muster.api.admin.job.create", br#"{"v":1,"nonsense":true}"#.to_vec()),
            ("muster.api.agent.g1.enlist", br#"{"v":1,"name":"g2"}"#.to_vec()),
            ("muster.api.admin.job.create", oversized()),
        ] {
            let via = if subject.contains(".agent.") { &as_g1 } else { &client };
            let m = via.request(subject, body.into()).await.expect("an answer");
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            api_errors.push(s(&v["error"], "code").to_owned());
        }
        // An op that does not exist has no endpoint: the requester hears so at once.
        let unknown = client.request("muster.api.admin.job.frobnicate", "{\"v\":1}".into()).await;
        assert!(unknown.is_err_and(|e| e.kind() == async_nats::RequestErrorKind::NoResponders));

        // Control: each bad request is answered with an error.
        let mut control_errors = Vec::new();
        for body in
            [malformed.clone(), br#"{"v":99,"op":"poll"}"#.to_vec(), br#"{"v":1,"op":"frobnicate"}"#.to_vec(), oversized()]
        {
            let m = client.request("muster.target.g1.control", body.into()).await.expect("an answer");
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            control_errors.push(s(&v["error"], "code").to_owned());
        }
        // Without a reply subject there is no one to answer: logged and counted.
        client.publish("muster.target.g1.control", malformed.clone().into()).await.unwrap();
        client.flush().await.unwrap();

        // Desired state: garbage as g1's manifest, one at a time (the stream
        // keeps the last message per subject), each refused by the poll
        // that reads it. Oversized bodies are refused by the streams
        // themselves (max_msg_size), the rest are stored and must be
        // refused or terminated by their reader.
        let mut refused = 0;
        for body in [
            malformed.clone(),
            br#"{"v":99}"#.to_vec(),
            manifest("g2", json!({})),
            manifest("g1", json!({"poll_interval_secs":0})),
            oversized(),
        ] {
            let stored = match js.publish("muster.target.g1.state", body.into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                let polled =
                    client.request("muster.target.g1.control", r#"{"v":1,"op":"poll"}"#.into()).await.expect("an answer");
                let v: Value = serde_json::from_slice(&polled.payload).unwrap();
                assert_eq!(v["report"]["failed"], 1, "the manifest was refused: {v}");
            } else {
                refused += 1;
            }
        }
        let sends: Vec<(String, Vec<u8>)> = vec![
            (format!("muster.result.g1.run.{job_id}"), malformed.clone()),
            (format!("muster.result.g1.run.{job_id}"), br#"{"v":99}"#.to_vec()),
            (format!("muster.result.g1.run.{job_id}"), run("g2", job_id)),
            (format!("muster.result.g1.run.{job_id}"), run("g1", uuid::Uuid::new_v4())),
            (format!("muster.result.g1.run.{job_id}"), oversized()),
            ("muster.result.g1.instr".into(), malformed.clone()),
            ("muster.result.g1.instr".into(), br#"{"v":99}"#.to_vec()),
            ("muster.result.g1.instr".into(), json!({"v":1,"target":"g2","outcomes":[]}).to_string().into_bytes()),
            ("muster.result.g1.instr".into(), oversized()),
        ];
        for (subject, body) in sends {
            let stored = match js.publish(subject, body.into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                refused += 1;
            }
        }
        (api_errors, control_errors, refused)
    });
    assert_eq!(api_errors, ["invalid_request", "bad_version", "invalid_request", "invalid_request", "invalid_request"]);
    assert_eq!(control_errors, ["invalid_request", "bad_version", "invalid_request", "invalid_request"]);
    assert_eq!(refused, 3, "the three oversized stream messages are refused by the streams");

    // The API counted them (service stats).
    let stats = block_on(async {
        let client = async_nats::connect(c.url()).await.unwrap();
        client.request("$SRV.STATS.muster", "".into()).await.unwrap()
    });
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    let bad_requests = stats["endpoints"].as_array().unwrap().iter().filter_map(|e| e["data"]["bad_requests"].as_u64()).max();
    assert!(bad_requests >= Some(5), "{stats}");

    // The master terminates the bad results.
    wait_for("bad results terminated", WAIT, || {
        let st = c.consumer_state("MUSTER_RESULTS", "master");
        (st.pending == 0 && st.ack_pending == 0 && st.redelivered == 0).then_some(())
    });
    // Each refusal is logged as it happens, the last one (a control request
    // without a reply subject) possibly after the checks above.
    let target_log = c.target("g1").log.clone();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for_described(
        "the target to log every refusal",
        WAIT,
        || {
            let log = read(&target_log);
            (log.contains("bad_instructions=4")
                && log.contains("muster.target.g1.state")
                && log.contains("bad_control=5")
                && log.contains("muster.target.g1.control"))
            .then_some(())
        },
        || read(&target_log),
    );
    // Operators see the counts without reading the agent's log.
    // (The poll report goes out in the background, after the poll.)
    wait_for("the counts in the poll report", WAIT, || {
        let shown = c.ctl(&["target", "show", "g1"]).ok()?;
        ((shown["bad_instructions"].as_u64(), shown["bad_control"].as_u64()) == (Some(4), Some(5))).then_some(())
    });
    let human = c.ctl_raw(&["target", "show", "g1"], false);
    assert!(human.stdout.contains("refused 4 bad instruction(s) and 5 bad control request(s)"), "{human:?}");
    let master_log = c.masters[0].log.clone();
    wait_for_described(
        "the master to log every refused result",
        WAIT,
        || {
            let log = read(&master_log);
            (log.contains("bad_results=7") && log.contains(&format!("muster.result.g1.run.{job_id}"))).then_some(())
        },
        || read(&master_log),
    );
    assert!(c.history("forged").is_empty(), "forged run records stay out of history");

    // And the system still completes a normal job.
    c.ctl(&["job", "create", "after-garbage", "--command", "echo still here"]).expect("create");
    c.ctl(&["job", "assign", "after-garbage", "--target", "g1"]).expect("assign");
    c.ctl(&["job", "start", "after-garbage"]).expect("start");
    let runs = wait_for("a normal run", WAIT, || {
        let r = c.finished_runs("after-garbage");
        (r.len() == 1).then_some(r)
    });
    assert_eq!(s(&runs[0], "outcome"), "succeeded");
    assert!(c.masters[0].is_running() && c.target("g1").is_running());
}

/// Runs the target image's healthcheck script against an agent's state.
fn target_healthcheck(c: &Cluster, name: &str) -> std::process::Output {
    std::process::Command::new("sh")
        .arg(muster_tests::workspace().join("deploy/image/target-healthcheck"))
        .env("MUSTER_STATE_DIR", c.state_dir(name))
        .env("MUSTER_HEALTH_POLL_GRACE_SECS", "1")
        .output()
        .expect("running the healthcheck")
}

#[test]
fn the_target_healthcheck_fails_while_polls_do_not_reach_nats() {
    let mut c = Cluster::with_master();
    c.start_target("hc1", 1);
    c.wait_target_online("hc1");
    wait_for("a healthy agent", WAIT, || target_healthcheck(&c, "hc1").status.success().then_some(()));
    let last_poll = std::fs::read_to_string(c.state_dir("hc1").join("last-poll")).expect("last-poll");
    assert_eq!(last_poll.split_whitespace().nth(1), Some("1"), "the poll interval is recorded: {last_poll}");

    c.nats.kill();
    let sick = wait_for("the healthcheck to fail", WAIT, || {
        let out = target_healthcheck(&c, "hc1");
        (!out.status.success()).then_some(out)
    });
    let said = String::from_utf8_lossy(&sick.stdout);
    assert!(said.contains("the last poll that reached NATS was"), "{said}");

    c.nats.restart();
    wait_for("healthy again once NATS is back", WAIT, || target_healthcheck(&c, "hc1").status.success().then_some(()));
}

/// Starts a master that reaches NATS through `proxy`, and waits for its API.
fn start_master_behind(c: &mut Cluster, proxy: &Proxy) -> usize {
    c.env.push(("NATS_URL".into(), proxy.url()));
    let n = c.spawn_master();
    c.env.pop();
    wait_for("the master's API", WAIT, || c.ctl(&["target", "list"]).ok().map(|_| ()));
    n
}

/// Runs `musterctl ARGS` in the background (it may hang on a master that dies).
fn ctl_in_background(c: &Cluster, args: &[&str]) -> std::process::Child {
    std::process::Command::new(muster_tests::bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("musterctl")
}

/// The agents' half of a master killed between its record writes and its
/// publishes: every target converges to the records once a new master
/// reconciles, a start posted before the kill runs at most once per target,
/// and a deleted job stops running everywhere.
#[test]
fn master_killed_before_publishing_every_agent_converges_nothing_runs_twice() {
    let mut c = Cluster::new();
    let proxy = Proxy::start(c.nats.port);
    let first = start_master_behind(&mut c, &proxy);
    for t in ["a1", "a2"] {
        c.start_target(t, 2);
        c.wait_target_online(t);
    }
    let dir = c.dir.path().to_owned();
    let ticks = |t: &str| dir.join(format!("tick.{t}"));
    let once = |t: &str| dir.join(format!("once.{t}"));
    let tick = json!({"name": "tick", "steps": [{"command": format!("echo tick >> '{}/tick.'$MUSTER_TARGET", dir.display())}],
        "schedules": [{"name": "every-second", "every_secs": 1}]});
    c.create_job_file(&tick.to_string()).expect("create tick");
    c.ctl(&["job", "create", "once", "--command", &format!("echo $MUSTER_RUN_ID >> '{}/once.'$MUSTER_TARGET", dir.display())])
        .expect("create once");
    c.ctl(&["job", "assign", "once", "--target", "a1", "--target", "a2"]).expect("assign once");

    // (a) Assigned, nothing published: the master dies after the record write.
    proxy.drop_publishes_to("muster.target.");
    let mut assign = ctl_in_background(&c, &["job", "assign", "tick", "--target", "a1", "--target", "a2"]);
    wait_for("the assignment recorded", WAIT, || {
        let info: Value = c.ctl_ok(&["job", "show", "tick"]);
        (info["targets"].as_array().map_or(0, Vec::len) == 2).then_some(())
    });
    c.masters[first].kill();
    assign.wait().ok();

    // (b) A start published to a1 only; the master dies.
    proxy.drop_publishes_to("muster.target.a2.state");
    let second = start_master_behind(&mut c, &proxy);
    // (The old queue still gets a2's start: the master dual-writes until the switch.)
    let _ = c.ctl(&["job", "start", "once"]);
    c.masters[second].kill();

    // A new master reconciles: both agents hold and run tick at their next polls.
    proxy.restore();
    let third = start_master_behind(&mut c, &proxy);
    for t in ["a1", "a2"] {
        wait_lines(&ticks(t), 2);
    }
    wait_lines(&once("a1"), 1);

    // (c) Deleted, nothing published: the master dies; the next one finishes the delete.
    proxy.drop_publishes_to("muster.target.");
    let mut delete = ctl_in_background(&c, &["job", "delete", "tick"]);
    wait_for("the delete recorded", WAIT, || c.ctl(&["job", "show", "tick"]).is_err_and(|e| e.code == 3).then_some(()));
    c.masters[third].kill();
    delete.wait().ok();
    proxy.restore();
    c.start_master();
    for t in ["a1", "a2"] {
        wait_for(&format!("tick gone from {t}"), WAIT, || {
            let polled = c.ctl(&["target", "force-poll", t]).ok()?;
            let r = &polled[0]["report"];
            (r["jobs"] == 1 && r["running"].as_array().is_some_and(Vec::is_empty)).then_some(())
        });
        let on_disk: Vec<String> = std::fs::read_dir(c.state_dir(t).join("jobs"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(on_disk.len() == 1 && on_disk[0].contains("\"once\""), "{t}: {on_disk:?}");
    }

    // The start posted before the kills ran at most once on each target.
    for t in ["a1", "a2"] {
        let ran = std::fs::read_to_string(once(t)).unwrap_or_default();
        assert!(ran.lines().count() <= 1, "once ran twice on {t}: {ran}");
    }
    let runs = wait_for("once's runs in history", WAIT, || c.try_finished_runs("once"));
    let happened: Vec<String> = ["a1", "a2"].iter().flat_map(|t| tally::run_ids(&once(t))).collect();
    Tally {
        scenario: "master kill -9 before publishing".into(),
        runs: RunTally::count(&happened, &runs),
        stored: stored_ends(&c, "a1", "once") + stored_ends(&c, "a2", "once"),
        history: runs.len(),
    }
    .check(&c);
}
