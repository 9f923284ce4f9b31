//! Static files for browsers, from the optional web root (`signalhub listen --web DIR`).
//!
//! The hub can serve a page (the browser chat of `js/browser/chat/`) so that users need nothing
//! but the hub's address. It serves only what the API leaves free:
//!
//! - `GET /` (or `HEAD /`) answers `DIR/index.html` when the request's `Accept` header prefers HTML
//!   (what browsers send), and the info JSON otherwise, so API clients and `curl` see no change;
//! - `GET /?…` (the page's own address carries a query) answers `DIR/index.html` whatever `Accept`
//!   says: no API client asks for it;
//! - `GET /<path>` answers the file `DIR/<path>` (`DIR/<path>/index.html` for a directory), with a
//!   content type from its extension. `/v1`, `/v1/…`, `/health` and `/metrics` are never served
//!   from the web root.
//!
//! A path is refused (`404`) when a segment is empty, `.`, `..` or hidden (starts with `.`), holds
//! a `\` or a NUL, or is not UTF-8 once percent-decoded; and when the file it names, symlinks
//! resolved, lies outside the root. Files are streamed [`FILE_CHUNK`] bytes at a time, `HEAD` is
//! answered without reading, and `Range` requests get their part (`206`), as browsers and
//! `curl -C` expect.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tower_http::services::ServeFile;

use super::response::{add_cors, error};

/// The most bytes of a file read at a time: what one slow reader can hold of it in the hub.
const FILE_CHUNK: usize = 64 * 1024;

/// True when the `Accept` header ranks HTML (`text/html` or `application/xhtml+xml`) above zero
/// and at least as high as `application/json`. `*/*` alone (`curl`) and no header at all do not
/// count as preferring HTML.
pub(crate) fn prefers_html(headers: &HeaderMap) -> bool {
    let mut html = 0.0f32;
    let mut json = 0.0f32;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            for param in parts {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = value.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
                    }
                }
            }
            match media.as_str() {
                "text/html" | "application/xhtml+xml" => html = html.max(q),
                "application/json" => json = json.max(q),
                _ => {}
            }
        }
    }
    html > 0.0 && html >= json
}

/// Whether a request that the API does not serve may be answered from the web root.
pub(crate) fn may_serve(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && path.starts_with('/')
        && path != "/v1"
        && !path.starts_with("/v1/")
        && path != "/health"
        && path != "/metrics"
}

/// The file a request path names, relative to the web root; `None` for a path that is refused.
/// A path ending in `/` names that directory's `index.html`.
pub(crate) fn relative_path(path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix('/')?;
    let mut relative = PathBuf::new();
    let mut segments = rest.split('/').peekable();
    while let Some(raw) = segments.next() {
        if raw.is_empty() {
            // Only the very end may be empty: `/` or `/dir/`.
            if segments.peek().is_some() {
                return None;
            }
            relative.push("index.html");
            break;
        }
        let segment = percent_decode(raw)?;
        if segment.starts_with('.')
            || segment.contains(['/', '\\', '\0'])
            || segment.chars().any(char::is_control)
        {
            return None;
        }
        relative.push(segment);
    }
    if relative.as_os_str().is_empty() {
        relative.push("index.html");
    }
    Some(relative)
}

/// `%XX` escapes decoded; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The content type for a file name's extension.
pub(crate) fn content_type(name: &Path) -> &'static str {
    let extension = name
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// What a file request carries that the answer depends on: its method (`HEAD` gets no body) and
/// its headers (`Range`, `If-Modified-Since`…).
pub(crate) struct FileRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// Answers a request path from the web root: the file (or the part of it a `Range` asks for),
/// `404`, or `500` for a file that cannot be read.
pub(crate) async fn serve(root: &Path, path: &str, request: FileRequest<'_>) -> Response<Body> {
    match relative_path(path) {
        Some(relative) => serve_file(root, &relative, request).await,
        None => not_found(),
    }
}

/// Answers `index.html` of the web root.
pub(crate) async fn index(root: &Path, request: FileRequest<'_>) -> Response<Body> {
    serve_file(root, Path::new("index.html"), request).await
}

fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn serve_file(root: &Path, relative: &Path, request: FileRequest<'_>) -> Response<Body> {
    let Ok(root) = tokio::fs::canonicalize(root).await else {
        tracing::warn!("the web root {} is gone", root.display());
        return not_found();
    };
    let Some(file) = resolve(&root, &root.join(relative)).await else {
        return not_found();
    };
    // A directory (asked for without its trailing slash) serves its index.
    let (file, name) = match tokio::fs::metadata(&file).await {
        Ok(meta) if meta.is_dir() => match resolve(&root, &file.join("index.html")).await {
            Some(index) => (index, PathBuf::from("index.html")),
            None => return not_found(),
        },
        Ok(meta) if meta.is_file() => (file, relative.to_path_buf()),
        _ => return not_found(),
    };
    // tower-http streams the file in chunks (so a slow reader holds one chunk, not the file),
    // answers HEAD from the file's metadata, and serves `Range` and conditional requests.
    let mut probe = axum::http::Request::new(());
    *probe.method_mut() = request.method.clone();
    *probe.headers_mut() = request.headers.clone();
    let served = ServeFile::new(&file)
        .with_buf_chunk_size(FILE_CHUNK)
        .try_call(probe)
        .await;
    match served {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            add_cors(&mut parts.headers);
            if parts.status.is_success() {
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type(&name)),
                );
            }
            parts
                .headers
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            parts.headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            Response::from_parts(parts, Body::new(body))
        }
        Err(err) => {
            tracing::warn!("cannot read {}: {err}", file.display());
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}", name.display()),
            )
        }
    }
}

/// The canonical path of `path` if it exists and lies inside the (canonical) `root`.
async fn resolve(root: &Path, path: &Path) -> Option<PathBuf> {
    let canonical = tokio::fs::canonicalize(path).await.ok()?;
    canonical.starts_with(root).then_some(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_prefer_html_clients_do_not() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(&accept(chromium)));
        assert!(prefers_html(&accept(firefox)));
        assert!(prefers_html(&accept("TEXT/HTML")));
        assert!(!prefers_html(&HeaderMap::new()));
        assert!(!prefers_html(&accept("*/*")));
        assert!(!prefers_html(&accept("application/json")));
        assert!(!prefers_html(&accept("text/html;q=0.5, application/json")));
        assert!(!prefers_html(&accept("text/html;q=0")));
        assert!(!prefers_html(&accept("text/event-stream")));
    }

    #[test]
    fn paths_map_inside_the_root_or_not_at_all() {
        let ok = |p: &str| relative_path(p).map(|r| r.to_string_lossy().into_owned());
        assert_eq!(ok("/").as_deref(), Some("index.html"));
        assert_eq!(ok("/chat.js").as_deref(), Some("chat.js"));
        assert_eq!(ok("/a/b.css").as_deref(), Some("a/b.css"));
        assert_eq!(ok("/a/").as_deref(), Some("a/index.html"));
        assert_eq!(ok("/a%20b.txt").as_deref(), Some("a b.txt"));
        for bad in [
            "",
            "chat.js",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/a%2F..%2F..%2Fx",
            "/.hidden",
            "//etc/passwd",
            "/a//b",
            "/a\\..\\b",
            "/a%5c..",
            "/a%00b",
            "/%zz",
            "/%ff",
            "/./x",
        ] {
            assert_eq!(ok(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn api_paths_are_never_web_paths() {
        for path in ["/v1", "/v1/app/ch", "/health", "/metrics"] {
            assert!(!may_serve(&Method::GET, path), "{path}");
        }
        assert!(may_serve(&Method::GET, "/chat.js"));
        assert!(may_serve(&Method::HEAD, "/v1x"));
        assert!(!may_serve(&Method::POST, "/chat.js"));
    }

    #[test]
    fn content_types() {
        for (name, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("chat.js", "text/javascript; charset=utf-8"),
            ("style.CSS", "text/css; charset=utf-8"),
            ("chat.js.map", "application/json; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
            ("icon.png", "image/png"),
            ("favicon.ico", "image/x-icon"),
            ("blob", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), expected, "{name}");
        }
    }
}
