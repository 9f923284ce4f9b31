//! STUN and TURN servers handed out by a hub: `GET /ice-servers` on a hub started with
//! `signalhub listen --ice-server URL … --turn-secret SECRET [--turn-ttl SECS]` answers a JSON
//! array of `RTCIceServer` objects, TURN ones with a short-lived credential in the TURN REST API
//! scheme (username `<expiry as Unix seconds>:<tag>`, credential base64(HMAC-SHA1)). A hub
//! without those flags, or the JS hub, answers 404: no servers, not an error.
//!
//! The swarm ([`crate::swarm`]) fetches them at join and again before the credential expires
//! ([`HubIceServers::refresh_in`]); this module only fetches and reads them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::peer::IceServer;

/// What a hub's `GET /ice-servers` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubIceServers {
    /// The hub that answered.
    pub hub: String,
    pub servers: Vec<IceServer>,
    /// When the earliest TURN credential expires (the leading Unix time of its username), if
    /// any server carries one.
    pub expires: Option<SystemTime>,
}

/// Why the ICE servers could not be fetched from any hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceServersError {
    #[error("GET {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: not a list of ICE servers: {message}")]
    Body { url: String, message: String },
    #[error("no hub to ask")]
    NoHub,
}

/// The shortest wait before fetching again, whatever the credential's lifetime says.
const MIN_REFRESH: Duration = Duration::from_secs(5);

impl HubIceServers {
    /// How long until the servers should be fetched again: four fifths of the credential's
    /// remaining lifetime (at least 5 s), so a new one is in hand well before the old one
    /// expires. `None` when nothing expires (STUN only).
    pub fn refresh_in(&self, now: SystemTime) -> Option<Duration> {
        let left = self.expires?.duration_since(now).unwrap_or(Duration::ZERO);
        Some((left * 4 / 5).max(MIN_REFRESH))
    }

    /// Whether a credential had expired already at `now` (the hub's clock and ours disagree,
    /// or its `--turn-ttl` is shorter than the round trip).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }
}

/// Asks each hub in turn for its ICE servers; the first that answers 200 wins. `Ok(None)` when
/// every hub that answered said 404 (it hands out none).
pub async fn fetch(
    hubs: &[String],
    timeout: Duration,
) -> Result<Option<HubIceServers>, IceServersError> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|error| IceServersError::Request {
            url: String::new(),
            message: error.to_string(),
        })?;
    let mut last_error = IceServersError::NoHub;
    let mut none = false;
    for hub in hubs {
        match fetch_one(&client, hub).await {
            Ok(Some(servers)) => return Ok(Some(servers)),
            Ok(None) => none = true,
            Err(error) => last_error = error,
        }
    }
    if none {
        Ok(None)
    } else {
        Err(last_error)
    }
}

async fn fetch_one(
    client: &reqwest::Client,
    hub: &str,
) -> Result<Option<HubIceServers>, IceServersError> {
    let url = format!("{}/ice-servers", hub.trim_end_matches('/'));
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|error| IceServersError::Request {
            url: url.clone(),
            message: error.to_string(),
        })?;
    match response.status().as_u16() {
        200 => {}
        404 => return Ok(None),
        status => return Err(IceServersError::Status { url, status }),
    }
    let body = response
        .text()
        .await
        .map_err(|error| IceServersError::Request {
            url: url.clone(),
            message: error.to_string(),
        })?;
    let servers = parse(&body).map_err(|message| IceServersError::Body {
        url: url.clone(),
        message,
    })?;
    let expires = servers.iter().filter_map(credential_expiry).min();
    Ok(Some(HubIceServers {
        hub: hub.to_string(),
        servers,
        expires,
    }))
}

/// Reads a JSON array of `RTCIceServer` objects: `urls` a string or an array of strings,
/// `username` and `credential` optional strings.
pub fn parse(body: &str) -> Result<Vec<IceServer>, String> {
    let value: Value = serde_json::from_str(body).map_err(|error| error.to_string())?;
    let Value::Array(entries) = value else {
        return Err("not a JSON array".into());
    };
    entries
        .iter()
        .map(|entry| {
            let urls = match &entry["urls"] {
                Value::String(url) => vec![url.clone()],
                Value::Array(urls) => urls
                    .iter()
                    .map(|url| url.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("a URL that is not a string")?,
                _ => return Err("an entry without `urls`".to_string()),
            };
            let text = |key: &str| match &entry[key] {
                Value::Null => Ok(String::new()),
                Value::String(text) => Ok(text.clone()),
                _ => Err(format!("`{key}` is not a string")),
            };
            Ok(IceServer {
                urls,
                username: text("username")?,
                credential: text("credential")?,
            })
        })
        .collect()
}

/// The expiry a TURN REST username carries (`<Unix seconds>:<tag>`), if it has one.
fn credential_expiry(server: &IceServer) -> Option<SystemTime> {
    let (seconds, _) = server.username.split_once(':')?;
    let seconds: u64 = seconds.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hubs_answer_and_its_expiry() {
        let body = r#"[{"urls":["stun:198.51.100.2:3478"]},{"urls":["turn:198.51.100.2:3478","turn:198.51.100.2:3478?transport=tcp"],"username":"1796400000:signalhub","credential":"c2VjcmV0"}]"#;
        let servers = parse(body).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, ["stun:198.51.100.2:3478"]);
        assert_eq!(servers[0].username, "");
        assert_eq!(servers[1].username, "1796400000:signalhub");
        assert_eq!(servers[1].credential, "c2VjcmV0");
        let expires = servers.iter().filter_map(credential_expiry).min();
        assert_eq!(
            expires,
            Some(UNIX_EPOCH + Duration::from_secs(1_796_400_000))
        );
        let hub = HubIceServers {
            hub: "http://h".into(),
            servers,
            expires,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_796_400_000 - 3600);
        assert_eq!(hub.refresh_in(now), Some(Duration::from_secs(2880)));
        assert!(!hub.is_expired(now));
        let late = UNIX_EPOCH + Duration::from_secs(1_796_400_001);
        assert_eq!(hub.refresh_in(late), Some(MIN_REFRESH));
        assert!(hub.is_expired(late));
    }

    #[test]
    fn a_single_url_string_is_accepted_and_junk_refused() {
        let servers = parse(r#"[{"urls":"stun:h:3478"}]"#).unwrap();
        assert_eq!(servers[0].urls, ["stun:h:3478"]);
        assert!(parse("{}").is_err());
        assert!(parse(r#"[{"username":"x"}]"#).is_err());
        assert!(parse(r#"[{"urls":[1]}]"#).is_err());
        assert!(parse(r#"[{"urls":"stun:h","credential":7}]"#).is_err());
    }
}
