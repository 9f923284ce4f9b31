//! The `signalhub` command: run a hub, or subscribe and broadcast through hubs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use signalhub::client::Client;
use signalhub::{Access, Hub, HubConfig, IceServers, RedisConfig};

#[derive(Parser)]
#[command(
    name = "signalhub",
    version,
    about = "A signalhub rendezvous hub (SSE + POST and WebSocket), and its client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a hub.
    Listen(Box<ListenArgs>),
    /// Probe a hub's /health (the container's HEALTHCHECK): exit 0 if it answers 200.
    Health {
        /// The URL to probe; by default the hub this container runs, on $PORT.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print every message of a channel as one JSON line.
    Subscribe {
        app: String,
        /// A channel, or several separated by commas.
        channel: String,
        #[command(flatten)]
        hubs: HubArgs,
    },
    /// Mint a token for a private hub (`listen --token-key`): prints it, and the hub URL to give
    /// clients when --hub is set.
    Token {
        /// The app (or `*` pattern, e.g. `chat-*`) the token is for.
        #[arg(long)]
        app: String,
        /// How long it is valid: seconds, or with a unit: 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// The secret key (64 hex digits, from `signalhub keygen`).
        #[arg(long, env = "SIGNALHUB_TOKEN_SECRET", hide_env_values = true)]
        secret: String,
        /// The hub's URL: also print the token-bearing hub URL (`<hub>/t/<token>`).
        #[arg(long)]
        hub: Option<String>,
    },
    /// Make a key pair for tokens: the secret signs them (`signalhub token`), the public key goes
    /// to the hub (`listen --token-key`).
    Keygen,
    /// Broadcast one JSON message to a channel.
    Broadcast {
        app: String,
        channel: String,
        /// The message, as JSON.
        json: String,
        #[command(flatten)]
        hubs: HubArgs,
    },
}

#[derive(Args)]
struct HubArgs {
    /// Hub URL (repeat for several hubs); `http://` is assumed without a scheme.
    #[arg(
        long = "hub",
        env = "SIGNALHUB_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    hubs: Vec<String>,
}

#[derive(Args)]
struct ListenArgs {
    /// Port to listen on.
    #[arg(short, long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Send each broadcast to at most N subscribers of its channel, chosen at random (0: all).
    #[arg(short = 'm', long, default_value_t = 0)]
    max_broadcasts: usize,
    /// PEM private key, to serve HTTPS (with --cert).
    #[arg(short, long, requires = "cert")]
    key: Option<PathBuf>,
    /// PEM certificate chain, to serve HTTPS (with --key).
    #[arg(short, long, requires = "key")]
    cert: Option<PathBuf>,
    /// No per-message logs.
    #[arg(short, long)]
    quiet: bool,
    /// Largest broadcast body in bytes; larger gets 413.
    #[arg(long, default_value_t = HubConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Longest app or channel name in bytes; longer gets 414.
    #[arg(long, default_value_t = HubConfig::default().max_name_bytes)]
    max_name_bytes: usize,
    /// Longest request target in bytes; longer gets 414.
    #[arg(long, default_value_t = HubConfig::default().max_target_bytes)]
    max_target_bytes: usize,
    /// Most channels in one subscribe; more gets 400.
    #[arg(long, default_value_t = HubConfig::default().max_channels_per_subscribe)]
    max_channels: usize,
    /// Seconds between heartbeats on each subscription.
    #[arg(long, default_value_t = HubConfig::default().heartbeat.as_secs_f64())]
    heartbeat_secs: f64,
    /// Messages queued for one subscriber before it is dropped as too slow.
    #[arg(long, default_value_t = HubConfig::default().queue_max_messages)]
    queue_messages: usize,
    /// Bytes queued for one subscriber before it is dropped as too slow.
    #[arg(long, default_value_t = HubConfig::default().queue_max_bytes)]
    queue_bytes: usize,
    /// Bytes queued across all subscribers, past which subscribers that are behind are dropped.
    #[arg(long, default_value_t = HubConfig::default().queued_bytes_budget)]
    queued_bytes_budget: usize,
    /// Open connections in all (0: no limit); past it, 503 (GET /health and /metrics are still
    /// answered). Default: the open-file limit (raised to its hard limit at start) less a
    /// sixteenth of it, and at least 512, for the hub's other files.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open connections from one address, IPv6 by /64 (0: no limit); past it, 429.
    #[arg(long, default_value_t = HubConfig::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Broadcasts per second from one address (0: no limit); past it, 429 with Retry-After.
    #[arg(long, default_value_t = HubConfig::default().broadcasts_per_sec)]
    rate: u32,
    /// Broadcasts one address may send in a burst.
    #[arg(long, default_value_t = HubConfig::default().broadcast_burst)]
    burst: u32,
    /// Seconds a client gets to send a request's headers or body.
    #[arg(long, default_value_t = HubConfig::default().request_timeout.as_secs_f64())]
    request_timeout_secs: f64,
    /// Seconds a write to a client may wait for the client to read before the connection is
    /// closed.
    #[arg(long, default_value_t = HubConfig::default().write_timeout.as_secs_f64())]
    write_timeout_secs: f64,
    /// Behind one reverse proxy that appends the client address to X-Forwarded-For: rate-limit by
    /// that address, and drop the per-address connection limit (all connections come from the proxy).
    #[arg(long)]
    trust_forwarded_for: bool,
    /// Seconds open connections get to finish on shutdown.
    #[arg(long, default_value_t = HubConfig::default().shutdown_grace.as_secs_f64())]
    shutdown_grace_secs: f64,
    /// Also serve the static files of DIR to browsers (e.g. the chat page, js/dist/chat): GET /
    /// answers DIR/index.html when the Accept header prefers HTML, and the info JSON otherwise;
    /// GET /<file> answers DIR/<file> (streamed; HEAD and Range requests too). /v1/..., /health and
    /// /metrics stay the API.
    #[arg(long, value_name = "DIR", env = "SIGNALHUB_WEB")]
    web: Option<PathBuf>,
    /// A STUN or TURN server peers should use, served at GET /ice-servers (repeatable):
    /// stun:HOST:PORT, turn:HOST:PORT, turn:HOST:PORT?transport=tcp, turns:HOST:PORT.
    #[arg(long = "ice-server", value_name = "URL")]
    ice_servers: Vec<String>,
    /// The secret shared with the TURN server (coturn: use-auth-secret, static-auth-secret):
    /// TURN URLs are served with credentials derived from it that expire after --turn-ttl.
    #[arg(long, env = "SIGNALHUB_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Run as one node of a cluster: every hub started with the same Redis (>= 7) serves the same
    /// subscribers. redis://[user:password@]HOST:PORT[/DB], or rediss:// for TLS.
    #[arg(
        long,
        value_name = "URL",
        env = "SIGNALHUB_REDIS",
        hide_env_values = true
    )]
    redis: Option<String>,
    /// Answer browsers only from this origin (repeatable; e.g. https://app.example): others get
    /// 403. Requests without an Origin header (not a browser) are not affected. Default: any (*).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origins: Vec<String>,
    /// Serve only this app (repeatable; `*` matches any run of characters, e.g. chat-*): others
    /// get 404. Default: every app.
    #[arg(long = "apps", value_name = "PATTERN")]
    apps: Vec<String>,
    /// Require tokens signed by this Ed25519 public key (64 hex digits, from `signalhub keygen`;
    /// repeatable, to rotate keys). Clients put the token in the hub URL: https://HOST/t/<token>.
    #[arg(
        long = "token-key",
        value_name = "KEY",
        env = "SIGNALHUB_TOKEN_KEYS",
        value_delimiter = ','
    )]
    token_keys: Vec<String>,
    /// Seconds a TURN credential from GET /ice-servers is valid.
    #[arg(long, default_value_t = 3600)]
    turn_ttl: u64,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{flag} must be a positive number of seconds"))
}

impl ListenArgs {
    fn ice_servers(&self) -> anyhow::Result<Option<IceServers>> {
        if self.ice_servers.is_empty() && self.turn_secret.is_none() {
            return Ok(None);
        }
        let ice = IceServers {
            urls: self.ice_servers.clone(),
            turn_secret: self.turn_secret.clone(),
            ttl: Duration::from_secs(self.turn_ttl),
            tag: "signalhub".to_string(),
        };
        ice.validate()?;
        Ok(Some(ice))
    }

    fn config(&self) -> anyhow::Result<HubConfig> {
        if self.max_body_bytes == 0 {
            bail!("--max-body-bytes must be at least 1");
        }
        if let Some(dir) = &self.web {
            let meta = std::fs::metadata(dir)
                .with_context(|| format!("--web {}: cannot read it", dir.display()))?;
            if !meta.is_dir() {
                bail!("--web {}: not a directory", dir.display());
            }
            if !dir.join("index.html").is_file() {
                tracing::warn!(
                    "--web {}: there is no index.html; GET / will answer 404 to browsers",
                    dir.display()
                );
            }
        }
        Ok(HubConfig {
            max_broadcasts: (self.max_broadcasts > 0).then_some(self.max_broadcasts),
            max_body_bytes: self.max_body_bytes,
            max_name_bytes: self.max_name_bytes,
            max_target_bytes: self.max_target_bytes,
            max_channels_per_subscribe: self.max_channels,
            heartbeat: seconds(self.heartbeat_secs, "heartbeat-secs")?,
            queue_max_messages: self.queue_messages,
            queue_max_bytes: self.queue_bytes,
            queued_bytes_budget: self.queued_bytes_budget,
            max_connections: self
                .max_connections
                .unwrap_or_else(signalhub::default_max_connections),
            max_connections_per_ip: self.max_connections_per_ip,
            broadcasts_per_sec: self.rate,
            broadcast_burst: self.burst,
            request_timeout: seconds(self.request_timeout_secs, "request-timeout-secs")?,
            write_timeout: seconds(self.write_timeout_secs, "write-timeout-secs")?,
            shutdown_grace: seconds(self.shutdown_grace_secs, "shutdown-grace-secs")?,
            quiet: self.quiet,
            trust_forwarded_for: self.trust_forwarded_for,
            web_root: self.web.clone(),
            ice_servers: self.ice_servers()?,
            redis: self.redis.as_deref().map(RedisConfig::new).transpose()?,
            access: Access {
                origins: self.allow_origins.clone(),
                apps: self.apps.clone(),
                token_keys: self
                    .token_keys
                    .iter()
                    .map(|key| {
                        signalhub::parse_verifying_key(key)
                            .with_context(|| format!("--token-key {key:?}"))
                    })
                    .collect::<anyhow::Result<_>>()?,
            },
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match &cli.command {
        Command::Listen(args) if args.quiet => "info,signalhub::traffic=off",
        Command::Listen(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Listen(args) => listen(*args).await,
        Command::Health { url } => health(url).await,
        Command::Token {
            app,
            ttl,
            secret,
            hub,
        } => token(&app, ttl, &secret, hub.as_deref()),
        Command::Keygen => {
            let (secret, public) = signalhub::generate_token_keys();
            println!("secret key (for `signalhub token --secret`; keep it off the hub): {secret}");
            println!("public key (for `signalhub listen --token-key`): {public}");
            Ok(())
        }
        Command::Subscribe { app, channel, hubs } => subscribe(&app, &channel, hubs.hubs).await,
        Command::Broadcast {
            app,
            channel,
            json,
            hubs,
        } => broadcast(&app, &channel, &json, hubs.hubs).await,
    }
}

async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    // Each subscriber is a socket: allow as many as the system lets this process have (before
    // the configuration, whose default connection limit is derived from it).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!("open file limit: {limit}"),
        Err(err) => tracing::warn!("could not raise the open file limit: {err}"),
    }
    let config = args.config()?;
    tracing::debug!("at most {} connections", config.max_connections);
    let addr = format!("{}:{}", args.host, args.port);
    let mut hub = Hub::bind(addr.as_str(), config).await?;
    if let (Some(key), Some(cert)) = (&args.key, &args.cert) {
        hub = hub.with_tls(key, cert)?;
    }
    let scheme = if args.key.is_some() { "https" } else { "http" };
    let local = hub.local_addr()?;
    tracing::info!(
        "signalhub listening on port {} ({scheme}://{local})",
        local.port()
    );
    if let Some(dir) = &args.web {
        tracing::info!("serving the files of {} to browsers at /", dir.display());
    }
    hub.run_until(shutdown_signal()).await?;
    tracing::info!("signalhub stopped");
    Ok(())
}

/// `90`, `90s`, `30m`, `12h`, `7d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number of seconds, or with s, m, h or d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    match number.checked_mul(scale) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{text:?}: must be positive and not absurdly long")),
    }
}

fn token(app: &str, ttl: Duration, secret: &str, hub: Option<&str>) -> anyhow::Result<()> {
    let key = signalhub::parse_signing_key(secret).context("--secret")?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .saturating_add(ttl)
        .as_secs();
    let token = signalhub::mint_token(&key, app, exp);
    match hub {
        Some(hub) => println!("{}/t/{token}", hub.trim_end_matches('/')),
        None => println!("{token}"),
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    tracing::warn!("cannot listen for SIGTERM: {err}");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn health(url: Option<String>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
            format!("http://127.0.0.1:{port}/health")
        }
    };
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("no answer from {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}

async fn subscribe(app: &str, channel: &str, hubs: Vec<String>) -> anyhow::Result<()> {
    let client = Client::new(app, &hubs)?;
    let mut messages = client.subscribe(channel.split(','))?;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => println!("{message}"),
                None => return Ok(()),
            },
            _ = shutdown_signal() => return Ok(()),
        }
    }
}

async fn broadcast(app: &str, channel: &str, json: &str, hubs: Vec<String>) -> anyhow::Result<()> {
    let message: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("the message is not JSON: {json}"))?;
    let client = Client::new(app, &hubs)?;
    client.broadcast(channel, &message).await?;
    Ok(())
}
