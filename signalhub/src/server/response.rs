//! The pieces every HTTP answer of the hub is made of: the CORS headers JS signalhub sends on
//! every response, and plain responses and errors built with them. A leaf: the router, the SSE
//! and WebSocket transports, the web root and the raw answers written without hyper all use it.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};

/// The five CORS headers JS signalhub (through `corsify`) puts on every response, in its order.
pub(crate) const CORS_HEADERS: [(&str, &str); 5] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, POST, PUT, DELETE"),
    ("access-control-allow-credentials", "true"),
    ("access-control-max-age", "86400"),
    (
        "access-control-allow-headers",
        "X-Requested-With, X-HTTP-Method-Override, Content-Type, Accept, Authorization",
    ),
];

/// The CORS headers as raw header lines (`Access-Control-Allow-Origin: *\r\n`…), names written as
/// JS signalhub writes them, for the responses the hub writes without hyper. Built once.
pub(crate) fn raw_cors_lines() -> &'static str {
    static LINES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        CORS_HEADERS
            .iter()
            .map(|(name, value)| format!("{}: {value}\r\n", title_case(name)))
            .collect()
    });
    &LINES
}

/// A header name as JS signalhub writes it (`Access-Control-Allow-Origin`).
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Adds the CORS headers to a header map that has none yet.
pub(crate) fn add_cors(headers: &mut HeaderMap) {
    // Built once: cloning a finished map is cheaper than parsing and hashing five names per response.
    static CORS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(|| {
        let mut headers = HeaderMap::with_capacity(12);
        for (name, value) in CORS_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    });
    if headers.is_empty() {
        *headers = CORS.clone();
    } else {
        for (name, value) in CORS.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A response with the CORS headers, a status and a body.
pub(crate) fn respond(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    add_cors(response.headers_mut());
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// An error response: the status and a one-line plain-text reason.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    respond(
        status,
        Some("text/plain; charset=utf-8"),
        Body::from(message),
    )
}

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    respond(status, None, Body::empty())
}

/// Marks a response as the last on its connection.
pub(crate) fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
