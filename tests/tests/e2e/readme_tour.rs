//! The README's tour of `musterctl`, run line by line against a live
//! installation, so the README cannot drift from the tool again.
//!
//! Each line of the tour's code block becomes one or more commands: a
//! comment is dropped; `[A | B]` runs once without the brackets' content
//! and once with each alternative; `enable|disable` runs each word;
//! `list | show hello | …` runs each subcommand; `edit` in a pipeline
//! passes the document on unchanged; `RUN_ID` is a real run's id; the job
//! files it names are the README's own job file. A line the rules above
//! cannot turn into commands fails the test, and so does a command that
//! clap refuses (usage, 2), that is refused as invalid (4), or that fails
//! inside (1) or cannot reach the master (6). The tour is not a script in
//! order (a group is deleted before a job is assigned to it), so not
//! found (3), offline (5) and conflict (7) are accepted; the count of each
//! code is printed.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use muster_tests::{bin, workspace, Cluster};

/// The tour's commands, each an argv after `musterctl`, or a pipeline of
/// two (`job show … --json | edit | job apply -f -`).
#[derive(Debug)]
enum Step {
    Run(Vec<String>),
    Pipe(Vec<String>, Vec<String>),
}

fn block_after(readme: &str, heading: &str, fence: &str) -> String {
    let from = readme.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[from..];
    let start = rest.find(fence).expect("a code block") + fence.len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].to_owned()
}

/// Splits a command line into words, keeping quoted strings whole.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `[A | B] [C]` → the line without the brackets, then with each
/// alternative of each bracket (the others left out).
fn expand_brackets(line: &str) -> Vec<String> {
    let mut groups = Vec::new();
    let mut bare = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').expect("a closing bracket") + open;
        bare.push_str(&rest[..open]);
        bare.push_str(&format!("{{{}}}", groups.len()));
        groups.push(rest[open + 1..close].split(" | ").map(str::trim).map(str::to_owned).collect::<Vec<_>>());
        rest = &rest[close + 1..];
    }
    bare.push_str(rest);
    let fill = |chosen: Option<(usize, &str)>| {
        let mut line = bare.clone();
        for i in 0..groups.len() {
            let with = chosen.filter(|(g, _)| *g == i).map_or("", |(_, alt)| alt);
            line = line.replace(&format!("{{{i}}}"), with);
        }
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let mut out = vec![fill(None)];
    for (i, alts) in groups.iter().enumerate() {
        out.extend(alts.iter().map(|a| fill(Some((i, a)))));
    }
    out
}

/// The commands one line of the tour stands for.
fn steps(line: &str, run_id: &str) -> Vec<Step> {
    let line = line.split(" # ").next().unwrap_or_default().trim().replace("RUN_ID", run_id);
    let line = line.split(" > ").next().unwrap_or_default().to_owned(); // a redirect: the output is not kept
    let mut out = Vec::new();
    for line in expand_brackets(&line) {
        let segments: Vec<&str> = line.split(" | ").collect();
        if segments.len() == 3 && segments[1] == "edit" {
            let (a, b) = (words(segments[0]), words(segments[2]));
            assert!(a[0] == "musterctl" && b[0] == "musterctl", "{line}");
            out.push(Step::Pipe(a[1..].to_vec(), b[1..].to_vec()));
            continue;
        }
        let first = words(segments[0]);
        assert_eq!(first[0], "musterctl", "not a musterctl command: {line}");
        // `job list | show hello`: later segments are subcommands of the
        // first one's resource (`musterctl job`).
        let mut argvs = vec![first[1..].to_vec()];
        for seg in &segments[1..] {
            argvs.push([&first[1..2], &words(seg)[..]].concat());
        }
        for argv in argvs {
            // `enable|disable`: one command per word.
            match argv.iter().position(|w| w.contains('|')) {
                Some(i) => {
                    for alt in argv[i].split('|') {
                        let mut a = argv.clone();
                        a[i] = alt.to_owned();
                        out.push(Step::Run(a));
                    }
                }
                None => out.push(Step::Run(argv)),
            }
        }
    }
    out
}

fn run(c: &Cluster, argv: &[String], input: Option<&[u8]>) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .env("MUSTER_API_TIMEOUT", "15")
        .args(argv)
        .current_dir(c.dir.path())
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("musterctl");
    if let Some(input) = input {
        child.stdin.take().expect("stdin").write_all(input).expect("stdin");
    }
    let out = child.wait_with_output().expect("musterctl");
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_command_of_the_readme_tour_runs_against_a_live_installation() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README");
    let tour = block_after(&readme, "## A tour of `musterctl`", "```sh\n");
    let job_file = block_after(&readme, "A job file (JSON):", "```json\n");

    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.start_target("web02", 3600);
    c.wait_target_online("web01");
    c.wait_target_online("web02");
    for name in ["nightly-backup.json", "job.json"] {
        std::fs::write(c.dir.path().join(name), &job_file).expect("job file");
    }
    // A run for `run show RUN_ID`.
    c.ctl(&["job", "create", "seed", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "seed", "--target", "web01"]).expect("assign");
    let started: Vec<serde_json::Value> = c.ctl_ok(&["job", "start", "seed", "--wait"]);
    let run_id = started[0]["run_id"].as_str().expect("run id").to_owned();

    // Defections last: the rest of the tour needs web01 enlisted.
    let (mut lines, defections): (Vec<&str>, Vec<&str>) =
        tour.lines().filter(|l| !l.trim().is_empty()).partition(|l| !l.contains("target defect"));
    lines.extend(defections);

    let mut codes: BTreeMap<i32, usize> = BTreeMap::new();
    let mut refused = Vec::new();
    for line in lines {
        for step in steps(line, &run_id) {
            let (code, said) = match &step {
                Step::Run(argv) => {
                    let (code, _, said) = run(&c, argv, None);
                    (code, said)
                }
                Step::Pipe(a, b) => {
                    let (code, shown, said) = run(&c, a, None);
                    if code == 0 {
                        let (code, _, said) = run(&c, b, Some(&shown));
                        (code, said)
                    } else {
                        (code, said)
                    }
                }
            };
            *codes.entry(code).or_default() += 1;
            if [1, 2, 4, 6, -1].contains(&code) {
                refused.push(format!("{line}\n  -> {step:?}: exit {code}: {said}"));
            }
        }
    }
    println!("TALLY readme tour exit codes {codes:?}");
    assert!(refused.is_empty(), "README tour commands that do not work:\n{}", refused.join("\n"));
    assert!(codes.get(&0).copied().unwrap_or(0) >= 30, "most of the tour succeeds: {codes:?}");
}

#[test]
fn tour_lines_expand_as_documented() {
    let argvs = |line: &str| -> Vec<String> {
        steps(line, "R")
            .into_iter()
            .map(|s| match s {
                Step::Run(a) => a.join(" "),
                Step::Pipe(a, b) => format!("{} => {}", a.join(" "), b.join(" ")),
            })
            .collect()
    };
    assert_eq!(
        argvs("musterctl job start hello [--target web01 | --all] [--wait]   # x"),
        ["job start hello", "job start hello --target web01", "job start hello --all", "job start hello --wait"]
    );
    assert_eq!(argvs("musterctl job enable|disable hello"), ["job enable hello", "job disable hello"]);
    assert_eq!(argvs("musterctl group list | delete web   # y"), ["group list", "group delete web"]);
    assert_eq!(
        argvs("musterctl job show hello --json | edit | musterctl job apply -f -"),
        ["job show hello --json => job apply -f -"]
    );
    assert_eq!(argvs("musterctl run show RUN_ID"), ["run show R"]);
    assert_eq!(argvs("musterctl job create hello --command 'echo hi'"), ["job create hello --command echo hi"]);
}
