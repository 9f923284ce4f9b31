//! Who may use a private hub: the browser origins it answers (`--allow-origin`), the apps it
//! serves (`--apps`), and signed tokens (`--token-key`).
//!
//! **Tokens** are Ed25519-signed, so the hub holds only public keys: a hub (often run on a
//! public host, or by a hosting provider) can check tokens but never mint one, and whoever mints
//! them (the app's backend, `signalhub token`) keeps the secret key elsewhere. Keys rotate by
//! giving `--token-key` twice for a while. A shared HMAC secret would have put the power to mint
//! on every hub. A token is `<payload>.<signature>`, both base64url without padding; the payload
//! is JSON `{"app":"<app or pattern>","exp":<Unix seconds>}` and the signature covers the
//! payload's base64url text, as in JWS.
//!
//! Browsers' EventSource and WebSocket cannot set headers, and the JS `signalhub` client only
//! appends `/v1/<app>/<channel>` to the hub URL it is given, so a token travels in the hub URL's
//! path: `https://hub.example/t/<token>` works unchanged from every client. `?token=` and a
//! `signalhub_token` cookie are accepted too, where a client can set them.
//!
//! **Origins** are a browser matter: a request without an `Origin` header (Node, curl, the Rust
//! client) is not a browser's and passes; a browser's from an origin not on the list is refused
//! (`403`), and allowed ones get their own origin back in `Access-Control-Allow-Origin`.
//!
//! A leaf: it knows nothing of the router.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::metrics::Rejection;

/// The path prefix that carries a token: `/t/<token>/v1/…`.
pub(crate) const TOKEN_PREFIX: &str = "/t/";
/// The cookie that may carry a token.
const TOKEN_COOKIE: &str = "signalhub_token";
/// Tokens longer than this are not looked at.
const MAX_TOKEN_BYTES: usize = 1024;

/// A private hub's rules. `Default`: a public hub (every origin, app and client).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Browser origins answered (`https://app.example`); empty: all (`*`).
    pub origins: Vec<String>,
    /// App names (or `*` patterns) served; empty: all.
    pub apps: Vec<String>,
    /// Public keys whose tokens are accepted; empty: no token needed.
    pub token_keys: Vec<VerifyingKey>,
}

/// Why a request may not use the hub: its status, its metric reason, and the message it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    pub status: StatusCode,
    pub reason: Rejection,
    pub message: String,
}

fn deny(status: StatusCode, reason: Rejection, message: String) -> Denial {
    Denial {
        status,
        reason,
        message,
    }
}

/// What a token says.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenClaims {
    /// The app it is for: a name, or a pattern with `*`.
    pub app: String,
    /// When it expires, in Unix seconds.
    pub exp: u64,
}

/// Why a string is not a usable key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key is 64 hex digits (32 bytes); got {0} characters")]
    Length(usize),
    #[error("a key is hex digits: {0}")]
    Hex(String),
    #[error("not an Ed25519 public key")]
    NotAKey,
}

fn hex32(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(KeyError::Length(text.len()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|err| KeyError::Hex(err.to_string()))?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ed25519 public key from 64 hex digits (`--token-key`).
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&hex32(text)?).map_err(|_| KeyError::NotAKey)
}

/// An Ed25519 secret key from 64 hex digits (what `signalhub token` signs with).
pub fn parse_signing_key(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&hex32(text)?))
}

/// A new key pair, as hex: (secret, public).
pub fn generate_token_keys() -> (String, String) {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let key = SigningKey::from_bytes(&secret);
    (hex(&secret), hex(key.verifying_key().as_bytes()))
}

/// A token for `app` (a name or `*` pattern) that expires at `exp` (Unix seconds).
pub fn mint_token(key: &SigningKey, app: &str, exp: u64) -> String {
    let claims = TokenClaims {
        app: app.to_string(),
        exp,
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let signature = key.sign(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub(crate) fn matches_pattern(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return name.is_empty();
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the whole name must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Splits a `/t/<token>` prefix off a request target: (token, the rest of the target).
pub(crate) fn split_token_path(target: &str) -> Option<(&str, &str)> {
    let after = target.strip_prefix(TOKEN_PREFIX)?;
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (token, rest) = after.split_at(end);
    Some((token, if rest.is_empty() { "/" } else { rest }))
}

/// The token of a request: from its path prefix (already split off), `?token=`, or the cookie.
pub(crate) fn find_token<'a>(
    path_token: Option<&'a str>,
    target: &'a str,
    cookie: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(token) = path_token {
        return Some(token);
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    if let Some(token) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
    {
        return Some(token);
    }
    cookie?.split(';').find_map(|c| {
        c.trim()
            .strip_prefix(TOKEN_COOKIE)
            .and_then(|v| v.strip_prefix('='))
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Access {
    /// True when the hub is open to everyone (then nothing is checked).
    pub(crate) fn is_public(&self) -> bool {
        self.origins.is_empty() && self.apps.is_empty() && self.token_keys.is_empty()
    }

    /// Checks a browser's `Origin` (`None`: not a browser, always allowed).
    pub(crate) fn check_origin(&self, origin: Option<&str>) -> Result<(), Denial> {
        match origin {
            Some(origin)
                if !self.origins.is_empty() && !self.origins.iter().any(|o| o == origin) =>
            {
                Err(deny(
                    StatusCode::FORBIDDEN,
                    Rejection::OriginNotAllowed,
                    format!("origin {origin} may not use this hub"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin` on a hub with an
    /// origin list: the request's own origin when it is allowed. `None`: keep `*` (a hub open to
    /// every origin), or grant nothing (an origin not on the list, which gets `403` anyway).
    pub(crate) fn allow_origin_value<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        origin.filter(|origin| self.origins.iter().any(|o| o == origin))
    }

    /// True when answers must not say `Access-Control-Allow-Origin: *`.
    pub(crate) fn restricts_origins(&self) -> bool {
        !self.origins.is_empty()
    }

    /// Checks that `app` is served and that `token` (if tokens are required) is valid for it.
    pub(crate) fn check_app(&self, app: &str, token: Option<&str>) -> Result<(), Denial> {
        if !self.apps.is_empty() && !self.apps.iter().any(|p| matches_pattern(p, app)) {
            return Err(deny(
                StatusCode::NOT_FOUND,
                Rejection::AppNotServed,
                format!("this hub does not serve the app {app:?}"),
            ));
        }
        self.check_token(Some(app), token)
    }

    /// Checks a token: for `app`, or (with `None`) for any app (e.g. `/ice-servers`).
    pub(crate) fn check_token(&self, app: Option<&str>, token: Option<&str>) -> Result<(), Denial> {
        if self.token_keys.is_empty() {
            return Ok(());
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(deny(
                StatusCode::UNAUTHORIZED,
                Rejection::TokenMissing,
                "this hub needs a token: use a hub URL of the form https://HOST/t/<token>, or ?token=<token>".to_string(),
            ));
        };
        let invalid = |why: &str| {
            deny(
                StatusCode::FORBIDDEN,
                Rejection::TokenInvalid,
                format!("invalid token: {why}"),
            )
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("too long"));
        }
        let (payload, signature) = token
            .split_once('.')
            .ok_or_else(|| invalid("not <payload>.<signature>"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| invalid("the signature is not base64url Ed25519"))?;
        if !self
            .token_keys
            .iter()
            .any(|key| key.verify(payload.as_bytes(), &signature).is_ok())
        {
            return Err(invalid("not signed by a key this hub trusts"));
        }
        let claims: TokenClaims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(|| invalid("the payload is not {\"app\":…,\"exp\":…}"))?;
        if claims.exp <= now_secs() {
            return Err(deny(
                StatusCode::FORBIDDEN,
                Rejection::TokenExpired,
                format!("the token expired at {} (Unix time)", claims.exp),
            ));
        }
        if let Some(app) = app {
            if !matches_pattern(&claims.app, app) {
                return Err(deny(
                    StatusCode::FORBIDDEN,
                    Rejection::TokenWrongApp,
                    format!("the token is for {:?}, not {app:?}", claims.app),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (SigningKey, Access) {
        let (secret, public) = generate_token_keys();
        let signing = parse_signing_key(&secret).unwrap();
        let access = Access {
            token_keys: vec![parse_verifying_key(&public).unwrap()],
            ..Access::default()
        };
        (signing, access)
    }

    #[test]
    fn patterns() {
        for (pattern, name, expected) in [
            ("chat", "chat", true),
            ("chat", "chats", false),
            ("chat-*", "chat-room", true),
            ("chat-*", "chat-", true),
            ("chat-*", "chat", false),
            ("*", "", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*-prod", "x-prod", true),
        ] {
            assert_eq!(
                matches_pattern(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_and_app() {
        let (signing, access) = keys();
        let later = now_secs() + 60;
        let token = mint_token(&signing, "chat-*", later);
        access.check_app("chat-room", Some(&token)).unwrap();
        let reason = |r: Result<(), Denial>| r.unwrap_err().reason;
        assert_eq!(
            reason(access.check_app("chat-room", None)),
            Rejection::TokenMissing
        );
        assert_eq!(
            reason(access.check_app("other", Some(&token))),
            Rejection::TokenWrongApp
        );
        let expired = mint_token(&signing, "chat-*", now_secs() - 1);
        assert_eq!(
            reason(access.check_app("chat-room", Some(&expired))),
            Rejection::TokenExpired
        );
        let (stranger, _) = keys();
        let forged = mint_token(&stranger, "chat-*", later);
        assert_eq!(
            reason(access.check_app("chat-room", Some(&forged))),
            Rejection::TokenInvalid
        );
        // A payload changed after signing.
        let (_, signature) = token.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(br#"{"app":"*","exp":99999999999}"#);
        assert_eq!(
            reason(access.check_app("chat-room", Some(&format!("{other}.{signature}")))),
            Rejection::TokenInvalid
        );
        for junk in ["", ".", "a.b", "x", &"a".repeat(5000)] {
            assert!(
                access.check_app("chat-room", Some(junk)).is_err(),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn tokens_travel_in_the_path_the_query_or_a_cookie() {
        assert_eq!(
            split_token_path("/t/abc.def/v1/app/ch"),
            Some(("abc.def", "/v1/app/ch"))
        );
        assert_eq!(split_token_path("/t/abc/app"), Some(("abc", "/app")));
        assert_eq!(split_token_path("/t/abc"), Some(("abc", "/")));
        assert_eq!(split_token_path("/v1/app/ch"), None);
        assert_eq!(find_token(None, "/v1/a/b?x=1&token=tk", None), Some("tk"));
        assert_eq!(
            find_token(None, "/v1/a/b", Some("a=1; signalhub_token=ck")),
            Some("ck")
        );
        assert_eq!(find_token(Some("p"), "/v1/a/b?token=q", None), Some("p"));
        assert_eq!(find_token(None, "/v1/a/b", None), None);
    }

    #[test]
    fn origins_only_bind_browsers() {
        let access = Access {
            origins: vec!["https://app.example".to_string()],
            ..Access::default()
        };
        access.check_origin(None).unwrap();
        access.check_origin(Some("https://app.example")).unwrap();
        assert_eq!(
            access
                .check_origin(Some("https://evil.example"))
                .unwrap_err()
                .reason,
            Rejection::OriginNotAllowed
        );
        assert_eq!(
            access.allow_origin_value(Some("https://app.example")),
            Some("https://app.example")
        );
        assert_eq!(
            access.allow_origin_value(Some("https://evil.example")),
            None
        );
        assert_eq!(
            Access::default().allow_origin_value(Some("https://x")),
            None
        );
    }
}
