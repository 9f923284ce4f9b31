//! `GET /ice-servers`: the STUN and TURN servers peers should use, with short-lived TURN
//! credentials in the "TURN REST API" scheme (draft-uberti-behave-turn-rest-00) that coturn's
//! `use-auth-secret` checks: the username is `<expiry as Unix seconds>:<tag>`, the credential is
//! base64(HMAC-SHA1(secret, username)). The hub and the TURN server share only the secret, so a
//! peer that can reach the hub gets a relay for `ttl`, and nobody needs a user database.
//!
//! The answer is a JSON array of `RTCIceServer` objects, what browsers, simple-peer and
//! webrtc-swarm take as `config.iceServers` unchanged. A leaf: it knows nothing of the router.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

/// What `GET /ice-servers` hands out, from `--ice-server`, `--turn-secret` and `--turn-ttl`.
#[derive(Clone)]
pub struct IceServers {
    /// `stun:`, `turn:` and `turns:` URLs, in the order given. TURN URLs get credentials.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    pub turn_secret: Option<String>,
    /// How long an issued credential is valid.
    pub ttl: Duration,
    /// The part of the username after the expiry (coturn logs it; it identifies no one).
    pub tag: String,
}

impl std::fmt::Debug for IceServers {
    // Keeps the secret out of logs that print the configuration.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServers")
            .field("urls", &self.urls)
            .field(
                "turn_secret",
                &self.turn_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("ttl", &self.ttl)
            .field("tag", &self.tag)
            .finish()
    }
}

/// Why an `--ice-server` list cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceConfigError {
    #[error("--ice-server {0:?}: not a stun:, turn: or turns: URL")]
    Scheme(String),
    #[error(
        "--ice-server {0:?} is a TURN server: it needs --turn-secret (coturn's static-auth-secret)"
    )]
    TurnWithoutSecret(String),
    #[error("--turn-secret is set but no --ice-server names a turn: or turns: URL")]
    SecretWithoutTurn,
    #[error("--turn-ttl must be between 1 s and 7 days")]
    Ttl,
}

#[derive(Serialize)]
struct IceServer<'a> {
    urls: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

impl IceServers {
    /// Checks that every URL is a STUN or TURN URL and that TURN URLs come with a secret.
    pub fn validate(&self) -> Result<(), IceConfigError> {
        for url in &self.urls {
            if !(url.starts_with("stun:") || url.starts_with("stuns:") || is_turn(url)) {
                return Err(IceConfigError::Scheme(url.clone()));
            }
            if is_turn(url) && self.turn_secret.is_none() {
                return Err(IceConfigError::TurnWithoutSecret(url.clone()));
            }
        }
        if self.turn_secret.is_some() && !self.urls.iter().any(|u| is_turn(u)) {
            return Err(IceConfigError::SecretWithoutTurn);
        }
        if self.ttl.is_zero() || self.ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(IceConfigError::Ttl);
        }
        Ok(())
    }

    /// The JSON array for `GET /ice-servers`, with credentials valid from `now` for `ttl`.
    /// STUN URLs form one entry; all TURN URLs share one credential in a second entry.
    pub fn answer(&self, now: SystemTime) -> String {
        let stun: Vec<&str> = self
            .urls
            .iter()
            .filter(|u| !is_turn(u))
            .map(String::as_str)
            .collect();
        let turn: Vec<&str> = self
            .urls
            .iter()
            .filter(|u| is_turn(u))
            .map(String::as_str)
            .collect();
        let mut servers = Vec::new();
        if !stun.is_empty() {
            servers.push(IceServer {
                urls: stun,
                username: None,
                credential: None,
            });
        }
        if let (false, Some(secret)) = (turn.is_empty(), &self.turn_secret) {
            let expiry = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(self.ttl)
                .as_secs();
            let username = format!("{expiry}:{}", self.tag);
            let credential = turn_credential(secret, &username);
            servers.push(IceServer {
                urls: turn,
                username: Some(username),
                credential: Some(credential),
            });
        }
        let mut json = serde_json::to_string(&servers).unwrap_or_else(|_| "[]".to_string());
        json.push('\n');
        json
    }
}

/// base64(HMAC-SHA1(secret, username)): the password coturn's `use-auth-secret` expects.
pub fn turn_credential(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(urls: &[&str], secret: Option<&str>) -> IceServers {
        IceServers {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            turn_secret: secret.map(str::to_string),
            ttl: Duration::from_secs(3600),
            tag: "signalhub".to_string(),
        }
    }

    #[test]
    fn credential_matches_the_rest_api_scheme() {
        // Checked against `printf %s 1700000000:alice | openssl dgst -sha1 -hmac s3cret -binary | base64`.
        assert_eq!(
            turn_credential("s3cret", "1700000000:alice"),
            "TtElzSjT0GdnTQ9xdcRNxx96yQs="
        );
    }

    #[test]
    fn answer_lists_stun_then_turn_with_an_expiring_credential() {
        let ice = servers(
            &[
                "stun:198.51.100.2:3478",
                "turn:198.51.100.2:3478",
                "turn:198.51.100.2:3478?transport=tcp",
            ],
            Some("s3cret"),
        );
        ice.validate().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let value: serde_json::Value = serde_json::from_str(&ice.answer(now)).unwrap();
        assert_eq!(
            value[0],
            serde_json::json!({"urls": ["stun:198.51.100.2:3478"]})
        );
        assert_eq!(value[1]["urls"].as_array().unwrap().len(), 2);
        assert_eq!(value[1]["username"], "1700003600:signalhub");
        assert_eq!(
            value[1]["credential"],
            turn_credential("s3cret", "1700003600:signalhub")
        );
    }

    #[test]
    fn misconfigurations_are_refused_with_the_flag_named() {
        assert!(matches!(
            servers(&["http://x"], None).validate(),
            Err(IceConfigError::Scheme(_))
        ));
        assert!(matches!(
            servers(&["turn:x:3478"], None).validate(),
            Err(IceConfigError::TurnWithoutSecret(_))
        ));
        assert_eq!(
            servers(&["stun:x:3478"], Some("s")).validate(),
            Err(IceConfigError::SecretWithoutTurn)
        );
        servers(&["stun:x:3478"], None).validate().unwrap();
    }
}
