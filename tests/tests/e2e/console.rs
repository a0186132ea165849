//! The web console in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver), against a live nats-server, a master
//! serving `--http` over TLS (a certificate from the test's own CA) and two
//! agents.
//!
//! An admin signs in, sees both targets (and filters them), force-polls
//! one and sees its last poll change, starts a job on both and sees both
//! runs appear and finish on the page without reloading it (live events),
//! starts it on one chosen target, stops a long run, and reads a run's
//! output; a viewer sees no action button, and a POST forged with the
//! viewer's own session and CSRF token is refused (403). The session
//! cookie is HTTP-only, `SameSite=Strict` and, over TLS, `Secure`.
//!
//! Each page is saved as a screenshot under `build/screenshots/`.
//! chromedriver must be installed (`scripts/test` installs `chromium` and
//! `chromium-driver`); without it the test fails at once, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use muster_tests::pki::{Ca, Validity};
use muster_tests::{block_on, wait_for, workspace, Cluster, Proc};
use serde_json::{json, Value};

/// How long any one thing may take to show in the browser.
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver, on a port it chose itself.
struct Driver {
    _proc: Proc,
    url: String,
}

fn start_chromedriver(dir: &Path) -> Driver {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("chromedriver")).find(|p| p.is_file()));
    let Some(path) = found else {
        panic!("chromedriver is not installed: the console's browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; scripts/test installs them)");
    };
    let mut cmd = Command::new(path);
    cmd.arg("--port=0");
    let log = dir.join("chromedriver.log");
    let proc = Proc::spawn("chromedriver", cmd, log);
    let port = wait_for("chromedriver to listen", WAIT, || {
        let text = proc.log_text();
        let rest = text.split("was started successfully on port ").nth(1)?;
        rest.trim_end_matches(|c: char| !c.is_ascii_digit()).split('.').next()?.trim().parse::<u16>().ok()
    });
    Driver { _proc: proc, url: format!("http://127.0.0.1:{port}") }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1000", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // The console's certificate is from the test's own CA.
    caps.insert("acceptInsecureCerts".into(), Value::Bool(true));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver")
}

/// Waits until `check` finds what it looks for in the page.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `url`. Chromium abandons a load when the host's network changes
/// (Docker adding or removing a container's interface: a compose test
/// running beside this one does) and shows its own error page; the load is
/// tried again until it succeeds, for at most [`WAIT`].
async fn open(c: &Client, url: &str) {
    let deadline = Instant::now() + WAIT;
    let mut tries = 0;
    loop {
        tries += 1;
        c.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
        if c.find(Locator::Css("body.neterror")).await.is_err() {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        // Leave the error page first: a new load, not the error again.
        c.goto("about:blank").await.expect("about:blank");
    }
    screenshot(c, "failure").await;
    let why = match c.find(Locator::Css("body")).await {
        Ok(b) => b.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    panic!("chromium could not load {url} in {tries} tries within {WAIT:?} (its network error page): {why}");
}

async fn element(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => {
            // What the page shows instead, for the failure message.
            screenshot(c, "failure").await;
            let url = c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let main = match c.find(Locator::Css("main")).await {
                Ok(m) => m.text().await.unwrap_or_default(),
                Err(_) => c.source().await.unwrap_or_default(),
            };
            panic!("no element {css} on {url}: {e}\npage:\n{main}");
        }
    }
}

async fn text(c: &Client, css: &str) -> String {
    element(c, css).await.text().await.unwrap_or_else(|e| panic!("text of {css}: {e}"))
}

/// The page's live events are connected (so what happens next shows).
async fn live(c: &Client) {
    until("the page's live events to connect", || async {
        (c.find(Locator::Id("live-state")).await.ok()?.text().await.ok()? == "live").then_some(())
    })
    .await;
}

fn screenshots() -> PathBuf {
    workspace().join("build").join("screenshots")
}

async fn screenshot(c: &Client, name: &str) {
    let dir = screenshots();
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("writing the screenshot");
}

async fn sign_in(c: &Client, base: &str, user: &str, password: &str) {
    open(c, &format!("{base}/login")).await;
    element(c, "#user").await.send_keys(user).await.expect("typing the user");
    element(c, "#password").await.send_keys(password).await.expect("typing the password");
    element(c, "#sign-in").await.click().await.expect("signing in");
    let who = text(c, "#whoami").await;
    assert!(who.starts_with(user), "signed in as {who}");
}

/// Clicks a button that asks for confirmation, and confirms.
async fn click_confirmed(c: &Client, css: &str) {
    element(c, css).await.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    let question = c.get_alert_text().await.unwrap_or_else(|e| panic!("{css} asked nothing: {e}"));
    assert!(!question.is_empty());
    c.accept_alert().await.expect("confirming");
}

/// Makes a console user and returns its password.
fn console_user(c: &Cluster, dir: &Path, name: &str, role: &str) -> String {
    let made =
        c.ctl(&["auth", "console-user", name, "--role", role, "--dir", dir.to_str().expect("utf8")]).expect("console-user");
    made["password"].as_str().expect("a made password").to_owned()
}

/// The console's URL, from the master's log.
fn console_url(c: &Cluster) -> String {
    wait_for("the master's web console to listen", WAIT, || {
        let log = c.masters[0].log_text();
        let line = log.lines().find(|l| l.contains("web console listening"))?;
        let url = line.split("url=").nth(1)?.split_whitespace().next()?;
        Some(url.trim_end_matches('/').to_owned())
    })
}

#[test]
fn an_admin_drives_targets_and_jobs_in_a_browser_and_a_viewer_cannot() {
    // First, so a machine without chromedriver fails at once, saying so.
    let browsers = tempfile::tempdir().expect("tempdir");
    let driver = start_chromedriver(browsers.path());
    let mut c = Cluster::new();
    let auth: PathBuf = c.dir.path().join("console");
    let admin_password = console_user(&c, &auth, "alice", "admin");
    let viewer_password = console_user(&c, &auth, "victor", "viewer");
    let ca = Ca::new(c.dir.path(), "console-ca");
    let cert = ca.server("console", &["127.0.0.1", "localhost"], Validity::Current);
    for (k, v) in [
        ("MUSTER_HTTP", "127.0.0.1:0".to_owned()),
        ("MUSTER_HTTP_USERS", auth.join("console-users.json").to_string_lossy().into_owned()),
        ("MUSTER_HTTP_TLS_CERT", cert.cert.to_string_lossy().into_owned()),
        ("MUSTER_HTTP_TLS_KEY", cert.key.to_string_lossy().into_owned()),
    ] {
        c.env.push((k.to_owned(), v));
    }
    c.start_master();
    let base = console_url(&c);
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    for t in ["web01", "web02"] {
        c.start_target(t, 3600);
        c.wait_target_online(t);
    }
    c.ctl(&["group", "create", "web"]).expect("group create");
    c.ctl(&["group", "add", "web", "web01"]).expect("group add");
    c.ctl(&["target", "enlist", "web01", "--location", "rack 1"]).expect("location");
    c.ctl(&["job", "create", "hello", "--command", "sleep 1; echo hello from the console test; echo '<b>not bold</b>'"])
        .expect("job create");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("job assign");
    c.ctl(&["job", "create", "long", "--command", "sleep 120"]).expect("job create");
    c.ctl(&["job", "assign", "long", "--target", "web01"]).expect("job assign");
    for t in ["web01", "web02"] {
        c.wait_target_online(t); // each holds the job now
    }
    // A failure's screenshot is only ever this run's.
    let _ = std::fs::remove_file(screenshots().join("failure.png"));

    block_on(async {
        let b = browser(&driver, &c.dir.path().join("chromium-admin")).await;
        // 1. Sign in.
        open(&b, &format!("{base}/login")).await;
        screenshot(&b, "01-login").await;
        sign_in(&b, &base, "alice", &admin_password).await;
        let cookies = b.get_all_cookies().await.expect("cookies");
        let session = cookies.iter().find(|k| k.name() == "__Host-muster_session").expect("the session cookie");
        assert_eq!(
            (session.http_only(), session.secure(), session.same_site()),
            (Some(true), Some(true), Some(cookie::SameSite::Strict)),
            "{session:?}"
        );

        // 2. Both targets.
        open(&b, &format!("{base}/targets")).await;
        for t in ["web01", "web02"] {
            assert_eq!(text(&b, &format!("tr[data-target='{t}'] [data-cell='status']")).await, "normal", "{t}");
        }
        assert_eq!(text(&b, "tr[data-target='web01'] [data-cell='groups']").await, "web");
        assert_eq!(text(&b, "tr[data-target='web01'] [data-cell='location']").await, "rack 1");
        // Filters: by group, by status.
        open(&b, &format!("{base}/targets?group=web")).await;
        element(&b, "tr[data-target='web01']").await;
        assert!(b.find(Locator::Css("tr[data-target='web02']")).await.is_err(), "web02 is not in the group");
        open(&b, &format!("{base}/targets?status=blocked")).await;
        element(&b, "#targets tr.empty").await;
        open(&b, &format!("{base}/targets")).await;
        live(&b).await;
        screenshot(&b, "02-targets").await;

        // 3. Force Poll on web01: its report inline, its last poll moves.
        let last_poll = "tr[data-target='web01'] [data-cell='last_poll']";
        let before = text(&b, last_poll).await;
        // Times are shown to the second: let the clock pass the one shown.
        until("the clock to pass web01's last poll", || async {
            let now = muster_runtime::zone::format_in(chrono::Utc::now(), chrono_tz::Tz::UTC);
            (now > before).then_some(())
        })
        .await;
        element(&b, "input[name='target'][value='web01']").await.click().await.expect("select web01");
        click_confirmed(&b, "#force-poll").await;
        let report = text(&b, "#poll-report tr[data-report='web01']").await;
        assert!(report.contains("web01"), "{report}");
        until("web01's last poll to change on the page", || async {
            let now = b.find(Locator::Css(last_poll)).await.ok()?.text().await.ok()?;
            (now != before).then_some(())
        })
        .await;
        assert_eq!(text(&b, "tr[data-target='web02'] [data-cell='status']").await, "normal");
        screenshot(&b, "03-force-poll").await;

        // 4. Start the job on both: both runs appear and finish without a reload.
        open(&b, &format!("{base}/jobs/hello")).await;
        live(&b).await;
        b.execute("window.musterNoReload = 'same page';", vec![]).await.expect("marking the page");
        click_confirmed(&b, "#start-all").await;
        element(&b, "#deliveries").await;
        for t in ["web01", "web02"] {
            element(&b, &format!("tbody[data-runs] tr[data-run^='{t}/'][data-outcome='succeeded']")).await;
            let last = text(&b, &format!("tr[data-status-target='{t}']")).await;
            assert!(last.contains("succeeded"), "{t}: {last}");
        }
        let marker = b.execute("return window.musterNoReload;", vec![]).await.expect("reading the mark");
        assert_eq!(marker, Value::from("same page"), "the page was reloaded");
        screenshot(&b, "04-job").await;
        // Start on a chosen target only: one more run, on web02.
        element(&b, "input[name='target'][value='web02']").await.click().await.expect("select web02");
        click_confirmed(&b, "#start-selected").await;
        until("a second run on web02, and still one on web01", || async {
            let web02 =
                b.find_all(Locator::Css("tbody[data-runs] tr[data-run^='web02/'][data-outcome='succeeded']")).await.ok()?;
            let web01 = b.find_all(Locator::Css("tbody[data-runs] tr[data-run^='web01/']")).await.ok()?;
            (web02.len() == 2 && web01.len() == 1).then_some(())
        })
        .await;

        // Stop: a long run, stopped from its job's page, ends canceled.
        open(&b, &format!("{base}/jobs/long")).await;
        live(&b).await;
        click_confirmed(&b, "#start-all").await;
        element(&b, "tbody[data-runs] tr[data-run^='web01/'][data-outcome='running']").await;
        element(&b, "input[name='target'][value='web01']").await.click().await.expect("select web01");
        click_confirmed(&b, "#stop-selected").await;
        element(&b, "tbody[data-runs] tr[data-run^='web01/'][data-outcome='canceled']").await;
        assert!(text(&b, "tr[data-status-target='web01']").await.contains("canceled"));

        // 5. Open a run and read its output (escaped: it is text, not markup).
        open(&b, &format!("{base}/history?job=hello&target=web01")).await;
        let href = element(&b, "tbody[data-runs] tr[data-run^='web01/'][data-outcome='succeeded'] a.run-link")
            .await
            .attr("href")
            .await
            .expect("href")
            .expect("a link");
        open(&b, &format!("{base}{href}")).await;
        let output = text(&b, "pre.output").await;
        assert!(output.contains("hello from the console test"), "{output}");
        assert!(output.contains("<b>not bold</b>"), "shown as text: {output}");
        assert!(b.find(Locator::Css("pre.output b")).await.is_err(), "run output became markup");
        screenshot(&b, "05-run").await;

        // The other pages render, and are saved.
        for (path, name, css) in [
            ("/history", "06-history", "tbody[data-runs] tr[data-run]"),
            ("/instructions", "07-download-list", "table.instructions tr[data-instr]"),
            ("/targets/web01", "08-target", "#target-jobs"),
            ("/jobs", "09-jobs", "#jobs tr[data-job='hello']"),
        ] {
            open(&b, &format!("{base}{path}")).await;
            element(&b, css).await;
            screenshot(&b, name).await;
        }
        b.close().await.expect("closing the admin's browser");

        // 6. A viewer: no buttons, and a forged POST is refused.
        let v = browser(&driver, &c.dir.path().join("chromium-viewer")).await;
        sign_in(&v, &base, "victor", &viewer_password).await;
        open(&v, &format!("{base}/targets")).await;
        element(&v, "tr[data-target='web01']").await;
        for page in ["/targets", "/targets/web01", "/jobs/hello"] {
            open(&v, &format!("{base}{page}")).await;
            element(&v, "#whoami").await;
            let buttons = v.find_all(Locator::Css("button[name='action'], input[name='target']")).await.expect("find");
            assert!(buttons.is_empty(), "{page}: a viewer sees {} action controls", buttons.len());
        }
        open(&v, &format!("{base}/targets")).await;
        screenshot(&v, "10-viewer-targets").await;
        // The forgery: the viewer's own session cookie and CSRF token, an admin's form.
        let forged = v
            .execute_async(
                r"const done = arguments[arguments.length - 1];
                  const csrf = document.querySelector('input[name=csrf]').value;
                  const body = new URLSearchParams({ csrf, action: 'force_poll', target: 'web01' });
                  fetch('/targets/action', { method: 'POST', body }).then((r) => done(r.status), (e) => done(String(e)));",
                vec![],
            )
            .await
            .expect("the forged POST");
        assert_eq!(forged, Value::from(403), "a viewer's action must be refused");
        let start = v
            .execute_async(
                r"const done = arguments[arguments.length - 1];
                  const csrf = document.querySelector('input[name=csrf]').value;
                  fetch('/jobs/hello/action', { method: 'POST', body: new URLSearchParams({ csrf, action: 'start_all' }) }).then((r) => done(r.status), (e) => done(String(e)));",
                vec![],
            )
            .await
            .expect("the forged start");
        assert_eq!(start, Value::from(403));
        v.close().await.expect("closing the viewer's browser");
    });
    let log = c.masters[0].log_text();
    assert!(log.contains("console action refused: role"), "the refusal is logged");
    assert!(!log.contains(&admin_password) && !log.contains(&viewer_password), "no password in the log");
    // The viewer's forged start started nothing: only the admin's three runs.
    assert_eq!(c.finished_runs("hello").len(), 3, "{}", c.logs());
}
