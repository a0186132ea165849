//! Records that cannot be read (garbage written into `muster-jobs`,
//! `muster-targets` or `muster-groups` by someone with rights to the
//! buckets): listed as corrupt rather than skipped, named as corrupt by
//! `show`, and removed by `job delete`, `group delete` and `target defect
//! --force`, while the readable records around them carry on.

use muster_shared::subject::{Bucket, Subjects};
use muster_tests::{block_on, s, Cluster};
use serde_json::Value;

/// Writes `bytes` as the value of `key` in `bucket`, as a NATS client with
/// rights to the bucket can.
fn put_garbage(c: &Cluster, bucket: Bucket, key: &str, bytes: &'static [u8]) {
    let (options, url) = (c.connect_options(), c.url());
    let (name, key) = (Subjects::default().bucket(bucket), key.to_owned());
    block_on(async move {
        let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
        let kv = js.get_key_value(name).await.expect("bucket");
        kv.put(key, bytes.into()).await.expect("put");
    });
}

/// A listing's rows as `(name or key, corrupt?)`.
fn rows(list: &Value, name: impl Fn(&Value) -> String) -> Vec<(String, bool)> {
    let rows = list.as_array().expect("a list");
    rows.iter().map(|r| if r.get("corrupt").is_some() { (s(r, "key").to_owned(), true) } else { (name(r), false) }).collect()
}

#[test]
fn a_corrupt_record_is_listed_shown_as_corrupt_and_can_be_deleted() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    c.ctl(&["job", "create", "hello", "--command", "true"]).unwrap();
    c.ctl(&["group", "create", "web"]).unwrap();
    put_garbage(&c, Bucket::Jobs, "broken", b"{not json");
    put_garbage(&c, Bucket::Groups, "mangled", b"\xff\xfe");
    put_garbage(&c, Bucket::Targets, "ghost", b"[1,2,3]");

    // Listed, as corrupt rows in name order, beside the readable ones.
    let jobs = c.ctl(&["job", "list"]).unwrap();
    assert_eq!(rows(&jobs, |j| s(&j["spec"], "name").to_owned()), [("broken".into(), true), ("hello".into(), false)]);
    let groups = c.ctl(&["group", "list"]).unwrap();
    assert_eq!(rows(&groups, |g| s(g, "name").to_owned()), [("mangled".into(), true), ("web".into(), false)]);
    let targets = c.ctl(&["target", "list"]).unwrap();
    assert_eq!(rows(&targets, |t| s(t, "name").to_owned()), [("ghost".into(), true), ("web01".into(), false)]);
    // A person sees a row saying so, and how to remove it.
    let table = c.ctl_raw(&["job", "list"], false);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.lines().any(|l| l.starts_with("broken") && l.contains("corrupt")), "{}", table.stdout);
    assert!(table.stdout.contains("`musterctl job delete broken` removes it"), "{}", table.stdout);
    let table = c.ctl_raw(&["target", "list"], false);
    assert!(table.stdout.contains("`musterctl target defect ghost --force` removes it"), "{}", table.stdout);

    // Shown as corrupt, clearly.
    for (args, says) in [
        (&["job", "show", "broken"][..], "job 'broken' cannot be read: its record is corrupt ("),
        (&["target", "show", "ghost"][..], "target 'ghost' cannot be read: its record is corrupt ("),
        (&["target", "defect", "ghost"][..], "`musterctl target defect ghost --force` removes it"),
    ] {
        let e = c.ctl(args).unwrap_err();
        assert!(e.stderr.contains(says), "{args:?}: {e:?}");
    }

    // Removed by the commands that remove records.
    let deleted = c.ctl(&["job", "delete", "broken"]).unwrap();
    assert_eq!(s(&deleted, "key"), "broken", "{deleted}");
    let deleted = c.ctl(&["group", "delete", "mangled"]).unwrap();
    assert_eq!(s(&deleted, "key"), "mangled", "{deleted}");
    let defected = c.ctl_raw(&["target", "defect", "ghost", "--force"], false);
    assert_eq!(defected.code, 0, "{}", defected.stderr);
    assert!(defected.stdout.contains("ghost defected (forced): its corrupt record deleted"), "{}", defected.stdout);

    let jobs = c.ctl(&["job", "list"]).unwrap();
    assert_eq!(rows(&jobs, |j| s(&j["spec"], "name").to_owned()), [("hello".into(), false)]);
    let groups = c.ctl(&["group", "list"]).unwrap();
    assert_eq!(rows(&groups, |g| s(g, "name").to_owned()), [("web".into(), false)]);
    let targets = c.ctl(&["target", "list"]).unwrap();
    assert_eq!(rows(&targets, |t| s(t, "name").to_owned()), [("web01".into(), false)]);
    // The rest carried on: the job still starts on its target.
    c.ctl(&["job", "assign", "hello", "--target", "web01"]).unwrap();
    c.ctl(&["job", "start", "hello", "--wait", "--timeout", "30"]).unwrap();
}
