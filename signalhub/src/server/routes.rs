//! The signalhub v1 HTTP API, in one place: how a raw request target maps to an action, and the
//! handler that carries it out.
//!
//! The path rules are those of JS signalhub 4.9 (see `shared/specs/signalhub-and-webrtc-swarm.md` §1):
//! the raw, undecoded target is used; `/v1/` starts the API; the query string is cut off; a GET
//! splits the app from the channels at the first `/` and the channels on `,`; a POST uses the whole
//! remainder as one channel key. Where JS accepts a target that no client can mean (an empty app or
//! channel, a comma in a broadcast channel) this hub answers `400` with a message instead, and where a
//! name is longer than the configured limit, `414`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use super::access::{find_token, split_token_path, Denial};
use super::broker::app_of;
use super::channels::{ChannelKey, Subscription};
use super::connection::ConnectionContext;
use super::limits::{client_key, PathLimits};
use super::message::validate_message;
use super::metrics::Rejection;
use super::response::{add_cors, closing, empty, error, respond};
use super::state::HubState;
use super::{sse, web, ws};

/// What a request asks for, decided from its method and raw target alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `OPTIONS` on any path: the CORS preflight.
    Preflight,
    /// Exactly `/`, any method: the info document (or, with a web root, the page for a browser's
    /// `GET`).
    Info,
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /ice-servers`: STUN/TURN servers with fresh TURN credentials (`404` when the hub has none).
    IceServers,
    /// `GET /v1/<app>/<ch>[,<ch>…]`: subscribe by server-sent events.
    Subscribe {
        app: &'a str,
        channels: Vec<&'a str>,
    },
    /// `POST /v1/<app>/<channel>`: broadcast the body to one channel.
    Broadcast { key: &'a str },
    /// A request the API does not serve: `404`, empty body (or, with a web root, a `GET` for a
    /// file of it).
    NotFound,
    /// A target that names the API but cannot be served; the reason is the response body.
    Invalid(Rejection, StatusCode, String),
}

/// Maps a method and raw request target (path and query, as sent) to a [`Route`].
pub(crate) fn route<'a>(method: &Method, target: &'a str, limits: PathLimits) -> Route<'a> {
    if method == Method::OPTIONS {
        return Route::Preflight;
    }
    if target == "/" {
        return Route::Info;
    }
    let path = target.split('?').next().unwrap_or(target);
    if method == Method::GET && path == "/health" {
        return Route::Health;
    }
    if method == Method::GET && path == "/metrics" {
        return Route::Metrics;
    }
    if method == Method::GET && path == "/ice-servers" {
        return Route::IceServers;
    }
    let Some(name) = target.strip_prefix("/v1/") else {
        return Route::NotFound;
    };
    if method != Method::GET && method != Method::POST {
        return Route::NotFound;
    }
    if target.len() > limits.max_target_bytes {
        return Route::Invalid(
            Rejection::UriTooLong,
            StatusCode::URI_TOO_LONG,
            format!(
                "request target is {} bytes; this hub accepts at most {}",
                target.len(),
                limits.max_target_bytes
            ),
        );
    }
    let name = name.split('?').next().unwrap_or(name);
    let Some((app, rest)) = name.split_once('/') else {
        return malformed(format!(
            "missing channel: use /v1/<app>/<channel>, got /v1/{name}"
        ));
    };
    if app.is_empty() {
        return malformed("empty app name: use /v1/<app>/<channel>".to_string());
    }
    if app.len() > limits.max_name_bytes {
        return name_too_long("app", app, limits);
    }
    if method == Method::POST {
        if rest.is_empty() {
            return malformed("empty channel name: use /v1/<app>/<channel>".to_string());
        }
        if rest.contains(',') {
            return malformed(
                "a broadcast goes to one channel: a comma-separated list is only for subscribing"
                    .to_string(),
            );
        }
        if rest.len() > limits.max_name_bytes {
            return name_too_long("channel", rest, limits);
        }
        return Route::Broadcast { key: name };
    }
    let mut channels = Vec::new();
    for channel in rest.split(',') {
        if channel.is_empty() {
            return malformed(format!(
                "empty channel name in {rest:?}: use /v1/<app>/<channel>[,<channel>…]"
            ));
        }
        if channel.len() > limits.max_name_bytes {
            return name_too_long("channel", channel, limits);
        }
        // One subscription per distinct channel: JS signalhub subscribes `a,a` twice and then
        // delivers every message twice, which no client wants.
        if !channels.contains(&channel) {
            channels.push(channel);
        }
        if channels.len() > limits.max_channels {
            return Route::Invalid(
                Rejection::TooManyChannels,
                StatusCode::BAD_REQUEST,
                format!(
                    "too many channels in one subscription: at most {}",
                    limits.max_channels
                ),
            );
        }
    }
    Route::Subscribe { app, channels }
}

fn malformed<'a>(message: String) -> Route<'a> {
    Route::Invalid(Rejection::MalformedPath, StatusCode::BAD_REQUEST, message)
}

fn name_too_long<'a>(what: &str, name: &str, limits: PathLimits) -> Route<'a> {
    Route::Invalid(
        Rejection::NameTooLong,
        StatusCode::URI_TOO_LONG,
        format!(
            "{what} name is {} bytes; this hub accepts at most {}",
            name.len(),
            limits.max_name_bytes
        ),
    )
}

/// Serves one request: on a private hub, its origin, app and token are checked first (see
/// `access.rs`), and its answer names the request's origin for CORS.
pub(crate) async fn handle(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    request: Request<Body>,
) -> Response<Body> {
    if state.config.access.is_public() {
        return serve(state, conn, request).await;
    }
    let origin = header_str(request.headers(), header::ORIGIN).map(str::to_string);
    let access = &state.config.access;
    let mut response = match access.check_origin(origin.as_deref()) {
        Ok(()) => serve(state.clone(), conn, request).await,
        Err(denial) => refuse_access(&state, denial),
    };
    if access.restricts_origins() {
        let headers = response.headers_mut();
        headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(value) = access
            .allow_origin_value(origin.as_deref())
            .and_then(|allowed| HeaderValue::from_str(allowed).ok())
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
    }
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn refuse_access(state: &HubState, denial: Denial) -> Response<Body> {
    state.metrics.reject(denial.reason);
    error(denial.status, denial.message)
}

/// The token a request carries (its `/t/<token>` path prefix, `?token=` or cookie), and its
/// target without the prefix.
fn token_and_target(request: &Request<Body>) -> (Option<String>, String) {
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (path_token, rest) = match split_token_path(target) {
        Some((token, rest)) => (Some(token), rest),
        None => (None, target),
    };
    let cookie = header_str(request.headers(), header::COOKIE);
    let token = find_token(path_token, rest, cookie).map(str::to_string);
    (token, rest.to_string())
}

async fn serve(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    request: Request<Body>,
) -> Response<Body> {
    if let Some(message) = ambiguous_framing(request.headers()) {
        state.metrics.reject(Rejection::AmbiguousFraming);
        return closing(error(StatusCode::BAD_REQUEST, message));
    }
    let (token, target) = token_and_target(&request);
    let access = &state.config.access;
    if is_websocket_upgrade(request.headers()) {
        // signalhubws connects to `<hub url>/<app>`: the app is the last path segment.
        let path = target.split('?').next().unwrap_or(&target);
        let app = path.rsplit('/').next().unwrap_or("");
        if !app.is_empty() {
            if let Err(denial) = access.check_app(app, token.as_deref()) {
                return refuse_access(&state, denial);
            }
        }
        return websocket(state, conn, request, app.to_string()).await;
    }
    let target = target.as_str();
    let routed = route(request.method(), target, state.path_limits);
    let denied = match &routed {
        Route::Subscribe { app, .. } => access.check_app(app, token.as_deref()).err(),
        Route::Broadcast { key } => access.check_app(app_of(key), token.as_deref()).err(),
        // TURN credentials are a relay anyone could use: only for holders of a token.
        Route::IceServers if state.config.ice_servers.is_some() => {
            access.check_token(None, token.as_deref()).err()
        }
        _ => None,
    };
    if let Some(denial) = denied {
        return refuse_access(&state, denial);
    }
    match routed {
        Route::Preflight => empty(StatusCode::OK),
        Route::Info => match &state.config.web_root {
            // With a web root, `GET /` is the page for browsers and the info JSON for the rest.
            Some(root) if request.method() == Method::GET || request.method() == Method::HEAD => {
                let mut response = if web::prefers_html(request.headers()) {
                    web::index(root, file_request(&request)).await
                } else {
                    info(&state)
                };
                response
                    .headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept"));
                response
            }
            _ => info(&state),
        },
        Route::Health => health(&state),
        Route::Metrics => {
            let queued = state
                .registry
                .queued_total
                .load(std::sync::atomic::Ordering::Relaxed);
            state.metrics.queued_bytes.set(queued as i64);
            respond(
                StatusCode::OK,
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                Body::from(state.metrics.encode()),
            )
        }
        Route::IceServers => match &state.config.ice_servers {
            Some(ice) => {
                let mut response = respond(
                    StatusCode::OK,
                    Some("application/json; charset=utf-8"),
                    Body::from(ice.answer(std::time::SystemTime::now())),
                );
                // A credential is minted per request and expires: no cache may keep one.
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            None => empty(StatusCode::NOT_FOUND),
        },
        Route::NotFound => match &state.config.web_root {
            Some(root) => {
                let path = target.split('?').next().unwrap_or(target);
                if web::may_serve(request.method(), path) {
                    // `/?hub=…` is the page's own address.
                    if path == "/" {
                        web::index(root, file_request(&request)).await
                    } else {
                        web::serve(root, path, file_request(&request)).await
                    }
                } else {
                    empty(StatusCode::NOT_FOUND)
                }
            }
            None => empty(StatusCode::NOT_FOUND),
        },
        Route::Invalid(reason, status, message) => {
            state.metrics.reject(reason);
            error(status, message)
        }
        Route::Subscribe { .. } if declares_body(request.headers()) => {
            // Its body would sit unread under a stream that never ends, and hyper would then
            // never read far enough to notice that the client has gone.
            state.metrics.reject(Rejection::BodyOnSubscribe);
            closing(error(
                StatusCode::BAD_REQUEST,
                "a subscribe request carries no body: send GET without Content-Length or Transfer-Encoding",
            ))
        }
        Route::Subscribe { app, channels } => {
            let keys: Vec<ChannelKey> = channels
                .iter()
                .map(|channel| ChannelKey::new(app, channel))
                .collect();
            let subscription = Subscription::open(
                &state.registry,
                &conn,
                keys,
                !state.config.quiet,
                state.shutdown.is_cancelled(),
            )
            .served_by_hyper();
            sse::response(subscription)
        }
        Route::Broadcast { key } => {
            let key = ChannelKey::from_raw(key.to_string());
            let client = client_key(
                request.headers(),
                conn.peer.ip(),
                state.config.trust_forwarded_for,
            );
            broadcast(state, conn, client, key, request.into_body()).await
        }
    }
}

fn file_request(request: &Request<Body>) -> web::FileRequest<'_> {
    web::FileRequest {
        method: request.method(),
        headers: request.headers(),
    }
}

fn info(state: &HubState) -> Response<Body> {
    let body = format!(
        "{{\n  \"name\": \"signalhub\",\n  \"version\": \"{}\",\n  \"subscribers\": {}\n}}\n",
        env!("CARGO_PKG_VERSION"),
        // In a cluster: this node's own, now, plus the others' as last read (within a second).
        state.registry.subscriber_count()
            + state
                .registry
                .broker()
                .and_then(|broker| broker.remote_subscribers())
                .unwrap_or(0)
    );
    respond(
        StatusCode::OK,
        Some("application/json; charset=utf-8"),
        Body::from(body),
    )
}

fn health(state: &HubState) -> Response<Body> {
    if state.shutdown.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    // A node cut off from Redis still serves its own subscribers: it stays in the load
    // balancer (200), so that Redis going away does not take every node out at once.
    let body = match state.registry.broker().and_then(|broker| broker.degraded()) {
        Some(reason) => format!("ok: {reason}\n"),
        None => "ok\n".to_string(),
    };
    respond(
        StatusCode::OK,
        Some("text/plain; charset=utf-8"),
        Body::from(body),
    )
}

async fn broadcast(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    client: std::net::IpAddr,
    key: ChannelKey,
    body: Body,
) -> Response<Body> {
    if let Err(retry_after) = state.limits.check_broadcast(client) {
        state.metrics.reject(Rejection::RateLimited);
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many broadcasts from your address: at most {} a second (burst {}); retry in {secs} s",
                state.config.broadcasts_per_sec, state.config.broadcast_burst
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let body = match read_body(&state, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let message = match validate_message(&body, state.config.max_body_bytes) {
        Ok(message) => message,
        Err((reason, status, message)) => {
            state.metrics.reject(reason);
            return error(status, message);
        }
    };
    if !state.config.quiet {
        tracing::info!(target: "signalhub::traffic", peer = %conn.peer, bytes = message.len(), "broadcast: {key}");
    }
    state.registry.broadcast_http(&key, message);
    empty(StatusCode::OK)
}

/// Reads a POST body within the size limit and the request timeout.
async fn read_body(state: &HubState, body: Body) -> Result<Bytes, Response<Body>> {
    let limit = state.config.max_body_bytes;
    let too_large = |state: &HubState| {
        state.metrics.reject(Rejection::BodyTooLarge);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message body too large: this hub accepts at most {limit} bytes"),
        )
    };
    // A declared length over the limit is refused before a byte of the body is read.
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large(state));
    }
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    // Small bodies usually arrive with their headers: take them without arming a timer.
    let collected = match futures_util::FutureExt::now_or_never(collect.as_mut()) {
        Some(result) => Ok(result),
        None => tokio::time::timeout(state.config.request_timeout, collect).await,
    };
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large(state)),
        Ok(Err(err)) => {
            state.metrics.reject(Rejection::BadBody);
            Err(error(
                StatusCode::BAD_REQUEST,
                format!("could not read the message body: {err}"),
            ))
        }
        Err(_) => {
            state.metrics.reject(Rejection::Timeout);
            Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the message body did not arrive within {} s",
                    state.config.request_timeout.as_secs()
                ),
            ))
        }
    }
}

/// True when a request says a body follows (a non-zero `Content-Length`, or any
/// `Transfer-Encoding`).
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|value| value.as_bytes() != b"0")
}

/// Why a request's framing is ambiguous, if it is: `chunked` named more than once across its
/// `Transfer-Encoding` headers, which RFC 9112 §6.1 asks a server to refuse rather than guess.
fn ambiguous_framing(headers: &HeaderMap) -> Option<&'static str> {
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        .count();
    (chunked > 1)
        .then_some("ambiguous request framing: Transfer-Encoding names chunked more than once")
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn websocket(
    state: Arc<HubState>,
    conn: Arc<ConnectionContext>,
    request: Request<Body>,
    app: String,
) -> Response<Body> {
    if app.is_empty() {
        state.metrics.reject(Rejection::MalformedPath);
        return error(
            StatusCode::BAD_REQUEST,
            "missing app: connect the WebSocket to <hub url>/<app>",
        );
    }
    if app.len() > state.config.max_name_bytes {
        state.metrics.reject(Rejection::NameTooLong);
        return error(
            StatusCode::URI_TOO_LONG,
            format!(
                "app name is {} bytes; this hub accepts at most {}",
                app.len(),
                state.config.max_name_bytes
            ),
        );
    }
    let client = client_key(
        request.headers(),
        conn.peer.ip(),
        state.config.trust_forwarded_for,
    );
    let (mut parts, _body) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => {
            // The CORS headers go on every response, the 101 of an upgrade too.
            let mut response = ws::accept(state, conn, client, app, upgrade);
            add_cors(response.headers_mut());
            response
        }
        Err(rejection) => {
            state.metrics.reject(Rejection::BadWebSocket);
            error(rejection.status(), rejection.body_text())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PathLimits = PathLimits {
        max_target_bytes: 200,
        max_name_bytes: 16,
        max_channels: 3,
    };

    fn get(target: &str) -> Route<'_> {
        route(&Method::GET, target, LIMITS)
    }

    fn post(target: &str) -> Route<'_> {
        route(&Method::POST, target, LIMITS)
    }

    fn status(route: Route<'_>) -> Option<StatusCode> {
        match route {
            Route::Invalid(_, status, _) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn options_is_a_preflight_anywhere() {
        for target in ["/", "/v1/a/b", "/nope", "/v1/"] {
            assert_eq!(route(&Method::OPTIONS, target, LIMITS), Route::Preflight);
        }
    }

    #[test]
    fn info_only_for_exactly_slash_and_any_method() {
        assert_eq!(get("/"), Route::Info);
        assert_eq!(post("/"), Route::Info);
        assert_eq!(route(&Method::DELETE, "/", LIMITS), Route::Info);
        assert_eq!(get("/?x"), Route::NotFound);
    }

    #[test]
    fn outside_v1_is_not_found() {
        assert_eq!(get("/v2/a/b"), Route::NotFound);
        assert_eq!(get("/v1"), Route::NotFound);
        assert_eq!(post("/app/ch"), Route::NotFound);
        assert_eq!(route(&Method::PUT, "/v1/a/b", LIMITS), Route::NotFound);
        assert_eq!(route(&Method::HEAD, "/v1/a/b", LIMITS), Route::NotFound);
        assert_eq!(route(&Method::DELETE, "/v1/a/b", LIMITS), Route::NotFound);
    }

    #[test]
    fn subscribe_splits_app_then_commas() {
        assert_eq!(
            get("/v1/demo/all,peer"),
            Route::Subscribe {
                app: "demo",
                channels: vec!["all", "peer"]
            }
        );
        assert_eq!(
            get("/v1/app/hello/people?x=1,2"),
            Route::Subscribe {
                app: "app",
                channels: vec!["hello/people"]
            }
        );
        assert_eq!(
            get("/v1/app/a%2Cb"),
            Route::Subscribe {
                app: "app",
                channels: vec!["a%2Cb"]
            }
        );
        assert_eq!(
            get("/v1/app/a,a"),
            Route::Subscribe {
                app: "app",
                channels: vec!["a"]
            }
        );
    }

    #[test]
    fn broadcast_uses_the_whole_remainder_raw() {
        assert_eq!(
            post("/v1/app/hello/people"),
            Route::Broadcast {
                key: "app/hello/people"
            }
        );
        assert_eq!(
            post("/v1/app/a%2Cb?zzz"),
            Route::Broadcast { key: "app/a%2Cb" }
        );
        assert_eq!(post("/v1/app/a#b"), Route::Broadcast { key: "app/a#b" });
    }

    #[test]
    fn malformed_targets_are_400() {
        for target in [
            "/v1/",
            "/v1/app",
            "/v1//ch",
            "/v1/app/",
            "/v1/app/a,,b",
            "/v1/app/a,",
        ] {
            assert_eq!(
                status(get(target)),
                Some(StatusCode::BAD_REQUEST),
                "GET {target}"
            );
        }
        for target in ["/v1/", "/v1/app", "/v1//ch", "/v1/app/", "/v1/app/a,b"] {
            assert_eq!(
                status(post(target)),
                Some(StatusCode::BAD_REQUEST),
                "POST {target}"
            );
        }
    }

    #[test]
    fn too_many_channels_is_400() {
        assert!(matches!(get("/v1/a/1,2,3"), Route::Subscribe { .. }));
        assert_eq!(status(get("/v1/a/1,2,3,4")), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn long_names_and_targets_are_414() {
        let long = "x".repeat(17);
        assert_eq!(
            status(get(&format!("/v1/{long}/a"))),
            Some(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(
            status(get(&format!("/v1/a/b,{long}"))),
            Some(StatusCode::URI_TOO_LONG)
        );
        assert_eq!(
            status(post(&format!("/v1/a/{long}"))),
            Some(StatusCode::URI_TOO_LONG)
        );
        let target = format!("/v1/a/b?{}", "q".repeat(300));
        assert_eq!(status(get(&target)), Some(StatusCode::URI_TOO_LONG));
    }
}
