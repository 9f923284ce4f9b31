//! The optional web root (`HubConfig::web_root`, `signalhub listen --web DIR`): the page at `/` for
//! browsers and the info JSON for everyone else, files with their content types, traversal and
//! symlink escapes refused, the API's paths never shadowed, the CORS headers everywhere, and no
//! change at all without it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;
use signalhub::HubConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// What Chromium sends when it navigates to a page.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";

const INDEX: &str = "<!doctype html><title>chat</title><script src=\"chat.js\"></script>\n";

/// A request with optional extra header lines, read to the end.
async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut stream = connect_from(addr, None).await;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader).await;
    let mut body = Vec::new();
    tokio::time::timeout(STEP, reader.read_to_end(&mut body))
        .await
        .expect("response body in time")
        .ok();
    RawResponse {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, target: &str, accept: Option<&str>) -> RawResponse {
    match accept {
        Some(accept) => send(addr, "GET", target, &[("Accept", accept)]).await,
        None => send(addr, "GET", target, &[]).await,
    }
}

/// base/web (the root, with a page, assets, API look-alikes and escaping symlinks) and
/// base/secret.txt (outside it).
fn web_dir() -> tempfile::TempDir {
    let base = tempfile::tempdir().expect("temp dir");
    let root = base.path().join("web");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("v1/app")).unwrap();
    std::fs::write(base.path().join("secret.txt"), "TOP SECRET").unwrap();
    std::fs::write(root.join("index.html"), INDEX).unwrap();
    std::fs::write(root.join("chat.js"), "console.log('hi')\n").unwrap();
    std::fs::write(root.join("style.css"), "body{}\n").unwrap();
    std::fs::write(root.join("chat.js.map"), "{\"version\":3}\n").unwrap();
    std::fs::write(root.join("icon.svg"), "<svg/>").unwrap();
    std::fs::write(root.join("icon.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(root.join("favicon.ico"), [0, 0, 1, 0]).unwrap();
    std::fs::write(root.join("sub/index.html"), "sub index").unwrap();
    std::fs::write(root.join("sub/a b.txt"), "spaced").unwrap();
    std::fs::write(root.join(".hidden"), "hidden").unwrap();
    // Files where the API lives: never served.
    std::fs::write(root.join("health"), "not the health check").unwrap();
    std::fs::write(root.join("metrics"), "not the metrics").unwrap();
    std::fs::write(root.join("v1/app/ch"), "not a subscription").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(base.path().join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(base.path(), root.join("up")).unwrap();
        // A symlink inside the root is fine.
        std::os::unix::fs::symlink(root.join("chat.js"), root.join("alias.js")).unwrap();
    }
    base
}

fn config(root: &Path) -> HubConfig {
    HubConfig {
        web_root: Some(root.to_path_buf()),
        ..unlimited()
    }
}

#[tokio::test]
async fn the_page_for_browsers_and_the_info_json_for_the_rest() {
    let dir = web_dir();
    let hub = start_hub(config(&dir.path().join("web"))).await;
    let plain = start_hub(unlimited()).await;
    let addr = hub.local_addr();

    let page = get(addr, "/", Some(BROWSER_ACCEPT)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.text(), INDEX);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("vary"), Some("Accept"));
    assert_cors(&page.headers);

    // Clients and curl get the same JSON as from a hub without a web root.
    let expected = get(plain.local_addr(), "/", None).await;
    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("text/event-stream"),
    ] {
        let info = get(addr, "/", accept).await;
        assert_eq!(info.status, 200, "Accept {accept:?}");
        assert_eq!(info.body, expected.body, "Accept {accept:?}");
        assert_eq!(
            info.header("content-type"),
            Some("application/json; charset=utf-8"),
            "Accept {accept:?}"
        );
        assert_eq!(info.header("vary"), Some("Accept"));
        assert_cors(&info.headers);
    }
    let info: serde_json::Value = serde_json::from_slice(&expected.body).unwrap();
    assert_eq!(info["name"], "signalhub");

    // POST / stays the info document.
    let posted = send(
        addr,
        "POST",
        "/",
        &[("Accept", BROWSER_ACCEPT), ("Content-Length", "0")],
    )
    .await;
    assert_eq!(
        posted.header("content-type"),
        Some("application/json; charset=utf-8")
    );

    // The page's own address has a query: the page, whatever Accept says.
    for accept in [None, Some(BROWSER_ACCEPT)] {
        let page = get(addr, "/?hub=http://127.0.0.1:1", accept).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.text(), INDEX);
        assert_cors(&page.headers);
    }
    hub.shutdown().await.unwrap();
    plain.shutdown().await.unwrap();
}

#[tokio::test]
async fn files_with_their_content_types() {
    let dir = web_dir();
    let hub = start_hub(config(&dir.path().join("web"))).await;
    let addr = hub.local_addr();
    for (target, content_type, body) in [
        ("/index.html", "text/html; charset=utf-8", INDEX.as_bytes()),
        (
            "/chat.js",
            "text/javascript; charset=utf-8",
            b"console.log('hi')\n".as_slice(),
        ),
        ("/style.css", "text/css; charset=utf-8", b"body{}\n"),
        (
            "/chat.js.map",
            "application/json; charset=utf-8",
            b"{\"version\":3}\n",
        ),
        ("/icon.svg", "image/svg+xml", b"<svg/>"),
        ("/icon.png", "image/png", &[0x89, b'P', b'N', b'G']),
        ("/favicon.ico", "image/x-icon", &[0, 0, 1, 0]),
        (
            "/chat.js?v=2",
            "text/javascript; charset=utf-8",
            b"console.log('hi')\n",
        ),
        ("/sub/", "text/html; charset=utf-8", b"sub index"),
        ("/sub", "text/html; charset=utf-8", b"sub index"),
        ("/sub/a%20b.txt", "text/plain; charset=utf-8", b"spaced"),
        #[cfg(unix)]
        (
            "/alias.js",
            "text/javascript; charset=utf-8",
            b"console.log('hi')\n",
        ),
    ] {
        let response = get(addr, target, Some(BROWSER_ACCEPT)).await;
        assert_eq!(response.status, 200, "{target}: {}", response.text());
        assert_eq!(
            response.header("content-type"),
            Some(content_type),
            "{target}"
        );
        assert_eq!(response.body, body, "{target}");
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert_cors(&response.headers);
    }
    let head = send(addr, "HEAD", "/chat.js", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("18"));
    assert!(head.body.is_empty());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn traversal_hidden_files_and_escaping_symlinks_are_refused() {
    let dir = web_dir();
    let hub = start_hub(config(&dir.path().join("web"))).await;
    let addr = hub.local_addr();
    for target in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub%2F..%2F..%2Fsecret.txt",
        "/..%5csecret.txt",
        "//secret.txt",
        "/.hidden",
        "/%2ehidden",
        "/a%00b",
        "/%zz",
        "/link.txt",
        "/up/secret.txt",
    ] {
        let response = get(addr, target, Some(BROWSER_ACCEPT)).await;
        assert_eq!(response.status, 404, "{target}: {}", response.text());
        assert!(!response.text().contains("SECRET"), "{target}");
        assert!(!response.text().contains("hidden"), "{target}");
        assert_cors(&response.headers);
    }
    // The absolute form of a target names a path on this hub, never a file system path.
    let response = get(addr, &format!("http://{addr}/etc/passwd"), None).await;
    assert_eq!(response.status, 404);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_files_are_404_and_the_api_is_never_shadowed() {
    let dir = web_dir();
    let hub = start_hub(config(&dir.path().join("web"))).await;
    let addr = hub.local_addr();

    let missing = get(addr, "/nope.js", Some(BROWSER_ACCEPT)).await;
    assert_eq!(missing.status, 404);
    assert_cors(&missing.headers);
    let posted = send(addr, "POST", "/chat.js", &[("Content-Length", "0")]).await;
    assert_eq!(posted.status, 404);
    assert_cors(&posted.headers);

    let health = get(addr, "/health", Some(BROWSER_ACCEPT)).await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_cors(&health.headers);
    let metrics = get(addr, "/metrics", Some(BROWSER_ACCEPT)).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("signalhub_subscribers"));
    // HEAD /health is not the health check, and not the file either.
    let head = send(addr, "HEAD", "/health", &[]).await;
    assert_eq!(head.status, 404);

    // /v1/app/ch is a subscription, not the file of that name.
    let mut sub = SseClient::connect(addr, "/v1/app/ch").await;
    assert_eq!(sub.status, 200);
    assert_eq!(
        sub.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str()),
        Some("text/event-stream; charset=utf-8")
    );
    wait_subscribers(&hub, 1).await;
    let posted = request(addr, "POST", "/v1/app/ch", br#"{"hello":"web"}"#).await;
    assert_eq!(posted.status, 200);
    assert_eq!(sub.next_data().await, r#"{"hello":"web"}"#);
    let v1 = get(addr, "/v1", Some(BROWSER_ACCEPT)).await;
    assert_eq!(v1.status, 404);
    assert!(v1.body.is_empty());
    let bad = get(addr, "/v1/app", Some(BROWSER_ACCEPT)).await;
    assert_eq!(bad.status, 400);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_web_root_nothing_changes() {
    let dir = web_dir();
    let hub = start_hub(unlimited()).await;
    let addr = hub.local_addr();
    let info = get(addr, "/", Some(BROWSER_ACCEPT)).await;
    assert_eq!(info.status, 200);
    assert_eq!(
        info.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(info.header("vary"), None);
    for target in ["/index.html", "/?hub=x", "/chat.js", "/../secret.txt"] {
        let response = get(addr, target, Some(BROWSER_ACCEPT)).await;
        assert_eq!(response.status, 404, "{target}");
        assert!(response.body.is_empty(), "{target}");
        assert_eq!(response.header("content-type"), None, "{target}");
        assert_cors(&response.headers);
    }
    drop(dir);
    hub.shutdown().await.unwrap();
}

#[test]
fn the_cli_documents_and_checks_the_flag() {
    let exe = env!("CARGO_BIN_EXE_signalhub");
    let help = Command::new(exe)
        .args(["listen", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--web <DIR>"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    for (path, message) in [
        (dir.path().join("missing"), "cannot read it"),
        (file, "not a directory"),
    ] {
        let out = Command::new(exe)
            .args(["listen", "--host", "127.0.0.1", "-p", "0", "--web"])
            .arg(&path)
            .env_remove("PORT")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
}
