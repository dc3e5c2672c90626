//! `orchestrate serve` in a real browser: Debian's headless Chromium, driven through
//! ChromeDriver (the W3C WebDriver protocol, spoken over HTTP). The overview renders every
//! environment and bind; signed in, an upgrade started with the page's buttons runs and its
//! outcome appears; a second action meanwhile is refused; without signing in no action is
//! offered or accepted; no page shows a password. A screenshot of the overview is written to
//! `target/serve-overview.png` (and to `$ORCHESTRATE_SCREENSHOT`, when set).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::serve::{environments, Server};

const TOKEN: &str = "a-browser-token-0123456789abcdef";
const PASSWORD: &str = "s3cret-pw-5150";

/// The browser and its driver, found where Debian's `chromium` and `chromium-driver` put them
/// (scripts/test.sh installs them). Never skipped: a missing browser fails the test.
fn browser_paths() -> (String, String) {
    let find = |names: &[&str]| {
        names
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| p.to_string())
    };
    let chrome = std::env::var("ORCHESTRATE_TEST_CHROMIUM")
        .ok()
        .or_else(|| find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]));
    let driver = std::env::var("ORCHESTRATE_TEST_CHROMEDRIVER")
        .ok()
        .or_else(|| find(&["/usr/bin/chromedriver"]));
    match (chrome, driver) {
        (Some(c), Some(d)) => (c, d),
        _ => panic!(
            "Chromium and ChromeDriver are needed for the browser test: install Debian's \
             `chromium` and `chromium-driver` (scripts/test.sh does), or set \
             ORCHESTRATE_TEST_CHROMIUM and ORCHESTRATE_TEST_CHROMEDRIVER"
        ),
    }
}

/// A WebDriver session on a ChromeDriver of its own.
struct Browser {
    driver: Child,
    url: String,
    agent: ureq::Agent,
}

impl Browser {
    fn start() -> Browser {
        let (chrome, chromedriver) = browser_paths();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent
            .get(format!("{base}/status"))
            .call()
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut b = Browser {
            driver,
            url: base,
            agent,
        };
        let session = b.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
                "binary": chrome,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"],
            } } } }),
        );
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        b.url = format!("{}/session/{id}", b.url);
        b
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.url);
        let reply = if method == "GET" {
            self.agent.get(&url).call()
        } else {
            self.agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string())
        };
        let mut reply = reply.expect("chromedriver answers");
        let text = reply.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        if let Some(e) = v["value"].get("error") {
            panic!("WebDriver {method} {path}: {e}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn source(&self) -> String {
        self.call("GET", "/source", json!({}))
            .as_str()
            .unwrap()
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let e = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        e.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap()
            .to_string()
    }

    fn count(&self, css: &str) -> usize {
        self.call(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    /// Waits (a click may return before the page it leads to has loaded) until the page's
    /// source says `done`; returns that source.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let source = self.source();
            if done(&source) {
                return source;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{source}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn attribute(&self, css: &str, name: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/attribute/{name}"), json!({}))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", json!({}));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.url).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_page_in_a_browser_upgrades_staging_and_refuses_what_it_must() {
    let (p, dbs) = environments();
    let server = Server::start(&p, Some(TOKEN));
    let browser = Browser::start();

    // Not signed in: every environment and bind, no action.
    browser.go(&format!("{}/", server.base));
    let page = browser.source();
    assert!(page.contains("id=\"env-staging\""), "{page}");
    assert!(page.contains("id=\"env-production\""), "{page}");
    assert_eq!(browser.count("tr.bind"), 4, "{page}");
    assert_eq!(
        browser.count("button"),
        0,
        "no action without signing in:\n{page}"
    );
    browser.go(&format!("{}/env/staging/confirm/upgrade", server.base));
    assert!(
        browser.source().contains("Access token"),
        "{}",
        browser.source()
    );

    // Signed in.
    browser.type_into("input[name=who]", "alice");
    browser.type_into("input[name=token]", TOKEN);
    browser.click("button[type=submit]");
    browser.wait_for("the overview after signing in", |s| {
        s.contains("signed in as")
    });
    browser.go(&format!("{}/", server.base));
    let page = browser.source();
    assert!(page.contains("signed in as"), "{page}");

    // Upgrade staging with the page's buttons.
    browser.click("a[href='/env/staging/confirm/upgrade'] button");
    browser.wait_for("the confirmation", |s| s.contains("id=\"confirm\""));
    browser.click("#confirm");
    browser.wait_for("the action's page", |s| s.contains("id=\"outcome\""));
    // A second action while it runs: refused.
    browser.go(&format!("{}/env/staging/confirm/recover", server.base));
    browser.click("#confirm");
    let refused = browser.wait_for("the refusal", |s| s.contains("Refused"));
    assert!(refused.contains("one action at a time"), "{refused}");
    // The outcome appears on the action's page.
    browser.go(&format!("{}/env/staging/action", server.base));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = browser.attribute("#outcome", "data-state");
        if state != "running" {
            assert_eq!(state, "done", "{}", browser.source());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no outcome: {}",
            browser.source()
        );
        std::thread::sleep(Duration::from_millis(250));
        browser.go(&format!("{}/env/staging/action", server.base));
    }
    assert!(browser.source().contains("committed on every bind"));
    // The overview once read again: staging up to date, production behind, their diff.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.go(&format!("{}/", server.base));
        if browser.source().contains("bind(s) differ") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", browser.source());
        std::thread::sleep(Duration::from_millis(300));
    }
    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/serve-overview.png");
    browser.screenshot(&shot);
    if let Ok(to) = std::env::var("ORCHESTRATE_SCREENSHOT") {
        std::fs::copy(&shot, to).unwrap();
    }
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // Production (protected) asks for its name.
    browser.go(&format!("{}/env/production/confirm/upgrade", server.base));
    assert_eq!(browser.count("input[name=confirm]"), 1);
    // No page the browser showed carries a password.
    for seen in [page, refused, browser.source()] {
        assert!(!seen.contains(PASSWORD), "{seen}");
    }

    // The databases: staging upgraded, production untouched.
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count = |db: &crate::support::PgDb| {
        diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
            .get_result::<N>(&mut db.conn())
            .map(|r| r.n)
            .unwrap_or(0)
    };
    assert_eq!(count(&dbs[0]), 2);
    assert_eq!(count(&dbs[1]), 0);
    assert_eq!(
        (
            crate::serve::cache_versions(&p, "staging"),
            crate::serve::cache_versions(&p, "production")
        ),
        (1, 0)
    );
    server.assert_no_password();
}
