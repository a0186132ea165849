//! Prometheus metrics, scraped from a live master (`/metrics` on the
//! console's listener, `--http`) and a live agent (`--metrics`), each
//! scrape parsed as Prometheus text: the values move as jobs run, as NATS
//! comes back, and as a target stops.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use muster_shared::api::Op;
use muster_shared::subject::Subjects;
use muster_tests::{bin, block_on, wait_for, wait_for_described, Cluster, Proc};
use prometheus_parse::Value;

const WAIT: Duration = Duration::from_secs(30);

/// One scrape, parsed.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    /// The sample `name` whose labels include `labels`: a counter's or a
    /// gauge's value, a histogram's count of observations.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let sample =
            self.0.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))?;
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            Value::Histogram(buckets) => buckets.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count),
            Value::Summary(_) => None,
        }
    }

    /// Like [`Scrape::get`], for a value that must be there.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
    }

    fn targets(&self, status: &str) -> f64 {
        self.value("muster_targets", &[("status", status)])
    }
}

/// `GET http://ADDR/PATH`: the status and the body; `None` while nothing
/// answers there.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let answer = client.get(format!("http://{addr}{path}").parse().expect("a URI")).await.ok()?;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// Scrapes `/metrics` at `addr` and parses it, failing on anything that
/// is not a scrape.
fn scrape(addr: &str) -> Scrape {
    let (status, body) = get(addr, "/metrics").unwrap_or_else(|| panic!("nothing answers on {addr}"));
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    assert!(!parsed.samples.is_empty(), "an empty scrape: {body}");
    Scrape(parsed)
}

/// Waits until `scrape(addr)` satisfies `check`; shows the last scrape's
/// values of `names` when it does not.
fn wait_scrape(what: &str, addr: &str, names: &[&str], check: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_for_described(
        what,
        WAIT,
        || {
            let s = scrape(addr);
            check(&s).then_some(s)
        },
        || {
            let s = scrape(addr);
            let shown: Vec<String> =
                s.0.samples
                    .iter()
                    .filter(|x| names.contains(&x.metric.as_str()))
                    .map(|x| format!("{}{} {:?}", x.metric, x.labels, x.value))
                    .collect();
            shown.join("\n")
        },
    )
}

/// The address a process logged it listens on (`<what> … addr=IP:PORT`):
/// both daemons are given port 0, so the kernel picks a free one.
fn listening_addr(p: &Proc, what: &str) -> String {
    wait_for(&format!("{} to log '{what}'", p.name), WAIT, || {
        let log = p.log_text();
        let line = log.lines().find(|l| l.contains(what))?;
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))?;
        Some(addr.trim_matches('"').to_owned())
    })
}

#[test]
fn master_and_agent_metrics_move_as_jobs_run_and_a_target_stops() {
    let mut c = Cluster::new();
    // The console needs a users file; /metrics is served beside it, without sign-in.
    let made = Command::new(bin("musterctl"))
        .args(["auth", "console-user", "ops", "--role", "viewer", "--dir"])
        .arg(c.dir.path())
        .output()
        .expect("musterctl auth console-user");
    assert!(made.status.success(), "{made:?}");
    let users = c.dir.path().join("console-users.json");
    // The master's own settings, taken off again before the agent starts
    // (it would ignore them anyway): targets are read every second.
    let master_env = [
        ("MUSTER_HTTP", "127.0.0.1:0".to_owned()),
        ("MUSTER_HTTP_USERS", users.display().to_string()),
        ("MUSTER_METRICS_REFRESH", "1".to_owned()),
    ];
    c.env.extend(master_env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    c.start_master();
    c.env.retain(|(k, _)| !master_env.iter().any(|(m, _)| m == k));
    let master = listening_addr(&c.masters[0], "web console listening");

    // Outside the sign-in, unlike every console page.
    let (status, _) = get(&master, "/").expect("the console answers");
    assert!((300..400).contains(&status), "the console's pages ask for a sign-in: {status}");
    let before = scrape(&master);
    for status in ["normal", "suspected_offline", "never_polled", "blocked", "defected", "outdated"] {
        assert_eq!(before.targets(status), 0.0, "{status}");
    }
    assert_eq!(before.value("muster_runs_total", &[("outcome", "succeeded")]), 0.0);
    assert_eq!(before.value("muster_results_backlog", &[]), 0.0);

    c.start_target_with("web01", 1, &["--metrics", "127.0.0.1:0"]);
    c.wait_target_online("web01");
    let agent = listening_addr(c.target("web01"), "metrics listening");
    wait_scrape("web01 counted normal", &master, &["muster_targets"], |s| s.targets("normal") == 1.0);

    // One run that succeeds, one that fails.
    c.ctl(&["job", "create", "ok", "--command", "true"]).expect("job ok");
    c.ctl(&["job", "create", "bad", "--command", "false"]).expect("job bad");
    for job in ["ok", "bad"] {
        c.ctl(&["job", "assign", job, "--target", "web01"]).expect("assign");
        c.ctl(&["job", "start", job]).expect("start");
    }
    wait_for("both runs in history", WAIT, || {
        (c.finished_runs("ok").len() == 1 && c.finished_runs("bad").len() == 1).then_some(())
    });
    let ended = |s: &Scrape, name: &str, outcome: &str| s.value(name, &[("outcome", outcome)]);
    let m = wait_scrape("the master's runs by outcome", &master, &["muster_runs_total", "muster_results_ingested_total"], |s| {
        ended(s, "muster_runs_total", "succeeded") == 1.0 && ended(s, "muster_runs_total", "failed") == 1.0
    });
    // Each run's start and end, and what the target applied, were ingested.
    assert!(m.value("muster_results_ingested_total", &[("kind", "run")]) >= 4.0);
    assert!(m.value("muster_results_ingested_total", &[("kind", "applied")]) >= 1.0);
    assert_eq!(m.value("muster_bad_messages_total", &[("kind", "result_run")]), 0.0);
    assert!(m.value("muster_api_requests_total", &[("op", "job.start")]) >= 2.0);
    assert!(m.value("muster_api_requests_total", &[("op", "agent.enlist")]) >= 1.0);

    let a = wait_scrape("the agent's runs by outcome", &agent, &["muster_agent_runs_total"], |s| {
        ended(s, "muster_agent_runs_total", "succeeded") == 1.0 && ended(s, "muster_agent_runs_total", "failed") == 1.0
    });
    let polls = a.value("muster_agent_polls_total", &[("result", "ok")]);
    assert!(polls >= 1.0, "polls counted");
    assert!(a.value("muster_agent_poll_seconds", &[]) >= polls, "every poll timed");
    assert_eq!(a.value("muster_agent_nats_reconnects_total", &[]), 0.0);
    wait_scrape("the agent's spool drained", &agent, &["muster_agent_spool_depth"], |s| {
        s.value("muster_agent_spool_depth", &[]) == 0.0
    });
    // Polls go on every second.
    wait_scrape("more polls", &agent, &["muster_agent_polls_total"], |s| {
        s.value("muster_agent_polls_total", &[("result", "ok")]) > polls
    });

    // A force-poll is timed; a refused one and a bad request are counted by
    // operation, error code and subject kind.
    // (musterctl force-polls through `target.force-poll-many`.)
    let not_enlisted = [("op", "target.force-poll-many"), ("code", "not_enlisted")];
    let answered = m.value("muster_force_poll_seconds", &[("result", "answered")]);
    let refused = m.get("muster_api_errors_total", &not_enlisted).unwrap_or(0.0);
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    assert!(c.ctl(&["target", "force-poll", "nobody"]).is_err(), "not enlisted");
    let admin = c.connect_options();
    let url = c.url();
    block_on(async move {
        let client = admin.connect(url).await.expect("connect");
        client.request(Subjects::default().api(Op::JobCreate), "not json".into()).await.expect("an error reply")
    });
    let m =
        wait_scrape("force-polls and errors counted", &master, &["muster_force_poll_seconds", "muster_api_errors_total"], |s| {
            s.value("muster_force_poll_seconds", &[("result", "answered")]) > answered
                && s.get("muster_api_errors_total", &not_enlisted) == Some(refused + 1.0)
                && s.value("muster_bad_messages_total", &[("kind", "api")]) == 1.0
        });
    assert_eq!(m.get("muster_api_errors_total", &[("op", "job.create"), ("code", "invalid_request")]), Some(1.0));

    // NATS goes away and comes back: the agent counts the reconnect.
    c.nats.kill();
    c.nats.restart();
    wait_scrape("the agent's reconnect", &agent, &["muster_agent_nats_reconnects_total"], |s| {
        s.value("muster_agent_nats_reconnects_total", &[]) >= 1.0
    });

    // A stopped agent becomes suspected offline after 3 of its 1 s intervals.
    c.target("web01").kill();
    wait_scrape("web01 counted suspected_offline", &master, &["muster_targets"], |s| {
        s.targets("suspected_offline") == 1.0 && s.targets("normal") == 0.0
    });
    // What is posted to it now waits unread.
    let unread = scrape(&master).value("muster_instructions_unread", &[]);
    c.ctl(&["job", "create", "later", "--command", "true"]).expect("job later");
    c.ctl(&["job", "assign", "later", "--target", "web01"]).expect("assign");
    wait_scrape("an unread instruction", &master, &["muster_instructions_unread"], |s| {
        s.value("muster_instructions_unread", &[]) > unread
    });
    // Nothing of the agent's is in the master's scrape, and no label names a target.
    let last = scrape(&master);
    let labels: HashMap<&str, &str> =
        last.0.samples.iter().flat_map(|s| s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))).collect();
    assert!(!labels.values().any(|v| v.contains("web01")), "{labels:?}");
}

#[test]
fn an_agent_whose_metrics_address_cannot_be_listened_on_stops_at_once() {
    let mut c = Cluster::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken = taken.local_addr().expect("its address").to_string();
    for (name, addr, why) in [("web01", taken.as_str(), "cannot listen on"), ("web02", "web:", "--metrics web:")] {
        let agent = c.start_target_with(name, 1, &["--metrics", addr]);
        let exited = wait_for(&format!("{name} to exit"), WAIT, || agent.exited());
        assert_eq!(exited.code(), Some(4), "--metrics {addr} is invalid input: {}", agent.log_text());
        assert!(agent.log_text().contains(why), "--metrics {addr}: {}", agent.log_text());
    }
}
