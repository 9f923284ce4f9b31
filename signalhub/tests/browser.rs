//! A real browser against the hub: headless Chromium (Debian's `/usr/bin/chromium`, driven by
//! `playwright-core` from `js/browser-cors.mjs`) loads a page from another origin that subscribes
//! with `EventSource` and broadcasts with `fetch`, so the hub's CORS answers are what a browser
//! checks, preflight included.
//!
//! Needs `node`, `js/node_modules` (`npm ci --prefix js` in the workspace root) and Chromium
//! (`apt-get install chromium`); without them the test fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use signalhub::{Hub, HubConfig};

#[path = "support/node_script.rs"]
mod node_script;
use node_script::NodeScript;

/// Chromium can take a while to start on a loaded machine.
const STEP: Duration = Duration::from_secs(120);
const CHROMIUM: &str = "/usr/bin/chromium";

/// Fails (never skips) when Node, playwright-core or Chromium is missing, naming the setup command.
fn require_browser_setup() {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "`node --version` failed ({other:?}): install Node.js 20, then run `npm ci --prefix js` in the workspace root"
        ),
    }
    let manifest = node_script::js_dir().join("node_modules/playwright-core/package.json");
    assert!(
        manifest.is_file(),
        "{} is missing: run `npm ci --prefix js` in the workspace root",
        manifest.display()
    );
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: apt-get install chromium"
    );
}

/// The browser script, and Chromium's profile directory, which the script removes itself unless
/// it is killed (a failing test kills it: the profile is removed here then).
struct BrowserRun {
    node: NodeScript,
    profile: Option<PathBuf>,
}

impl Drop for BrowserRun {
    fn drop(&mut self) {
        // Chromium exits by itself when its pipe to the script closes.
        self.node.kill();
        if let Some(dir) = &self.profile {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A header's value in a DevTools header object, whatever the name's case.
fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| value.as_str())
}

/// A page on another origin subscribes with `EventSource`, POSTs with `fetch` (after a CORS
/// preflight), and receives exactly the JSON it sent; a Rust subscriber of the same channel gets
/// the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_cross_origin_page_subscribes_and_broadcasts() {
    let started = Instant::now();
    require_browser_setup();
    let hub = Hub::bind("127.0.0.1:0", HubConfig::default())
        .await
        .expect("bind the hub")
        .spawn()
        .expect("start the hub");
    let hub_url = hub.url().to_string();
    let channel_url = format!("{hub_url}/v1/app/ch");

    // A Rust subscriber of the page's channel, to see what the hub broadcast.
    let response = reqwest::get(&channel_url)
        .await
        .expect("subscribe from Rust");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();

    let mut run = BrowserRun {
        node: NodeScript::spawn("browser-cors.mjs", &[&hub_url, "240"], STEP),
        profile: None,
    };
    let page = run.node.wait_event("page").await;
    run.profile = page["userDataDir"].as_str().map(PathBuf::from);
    let result = run.node.wait_event("result").await;
    run.node.wait_exit().await;
    eprintln!("page result: {result:#}");

    // The page came from another origin than the hub.
    let origin = result["origin"].as_str().expect("the page's origin");
    assert!(origin.starts_with("http://127.0.0.1:"), "{origin}");
    assert_ne!(origin, hub_url, "the page must be cross-origin");

    // fetch succeeded with 200, and EventSource delivered exactly the JSON the page sent.
    assert_eq!(
        result["fetchError"],
        Value::Null,
        "fetch failed: {result:#}"
    );
    assert_eq!(result["fetchStatus"], json!(200), "{result:#}");
    let sent = result["sent"].as_str().expect("the JSON the page sent");
    assert_eq!(result["received"], json!(sent), "{result:#}");
    assert_eq!(result["eventSourceErrors"], json!([]), "{result:#}");

    // The EventSource GET (a simple request: no preflight) and the POST were answered 200.
    let requests = result["requests"].as_array().expect("requests");
    for (method, kind) in [("GET", "EventSource"), ("POST", "Fetch")] {
        let found: Vec<&Value> = requests
            .iter()
            .filter(|r| r["method"] == method && r["url"] == json!(channel_url))
            .collect();
        assert_eq!(found.len(), 1, "one {method} {channel_url}: {result:#}");
        assert_eq!(found[0]["type"], json!(kind), "{result:#}");
        assert_eq!(found[0]["status"], json!(200), "{result:#}");
    }

    // The browser preflighted the POST, and the hub allowed it.
    let preflights = result["preflights"].as_array().expect("preflights");
    assert_eq!(preflights.len(), 1, "one CORS preflight: {result:#}");
    let preflight = &preflights[0];
    assert_eq!(preflight["url"], json!(channel_url));
    assert_eq!(preflight["status"], json!(200));
    let asked = &preflight["requestHeaders"];
    assert_eq!(header(asked, "origin"), Some(origin));
    assert_eq!(header(asked, "access-control-request-method"), Some("POST"));
    assert_eq!(
        header(asked, "access-control-request-headers").map(str::to_ascii_lowercase),
        Some("content-type".to_string())
    );
    let allowed = &preflight["responseHeaders"];
    assert_eq!(header(allowed, "access-control-allow-origin"), Some("*"));

    // The hub broadcast the page's body verbatim: the first event that is not a comment (the
    // hub's heartbeat may come at any time) is exactly one data line.
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP;
    let event = loop {
        if let Some(end) = bytes.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8(bytes.drain(..end + 2).collect()).expect("UTF-8");
            if event
                .lines()
                .all(|line| line.is_empty() || line.starts_with(':'))
            {
                continue;
            }
            break event;
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the Rust subscriber got nothing")
            .expect("the SSE stream ended")
            .expect("read the SSE stream");
        bytes.extend_from_slice(&chunk);
    };
    assert_eq!(event, format!("data: {sent}\n\n"));

    hub.shutdown().await.unwrap();
    eprintln!("took {:?}", started.elapsed());
}
