//! The systems a benchmark can drive, behind one read and one write.
//!
//! Each client task gets its own [`Session`]. For quorumkv (and the echo floor) every
//! session shares one `Client`, which keeps one multiplexed connection per node, as an
//! application would. Redis gets one connection per task, as `redis-benchmark` opens
//! them: `WAIT` blocks the connection it is sent on, so a shared one would serialize
//! every task behind each write. etcd is reached over HTTP/1.1 through a connection pool.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use quorumkv_client::{Client, ClientConfig, Consistency};

use super::echo;

/// Where `--target` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// The cluster in `--nodes`, over quorumkv's own protocol.
    Quorumkv,
    /// The in-process loopback floor.
    Echo,
    /// `redis://HOST:PORT`
    Redis(String),
    /// `etcd://HOST:PORT`, through etcd's v3 JSON gateway.
    Etcd(String),
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "quorumkv" => return Ok(TargetSpec::Quorumkv),
            "echo" => return Ok(TargetSpec::Echo),
            _ => {}
        }
        let address = |scheme: &str| {
            text.strip_prefix(scheme)
                .filter(|rest| rest.contains(':'))
                .map(|rest| rest.trim_end_matches('/').to_owned())
        };
        if let Some(address) = address("redis://") {
            return Ok(TargetSpec::Redis(address));
        }
        if let Some(address) = address("etcd://") {
            return Ok(TargetSpec::Etcd(address));
        }
        Err("expected quorumkv, echo, redis://HOST:PORT or etcd://HOST:PORT".to_owned())
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Quorumkv => f.write_str("quorumkv"),
            TargetSpec::Echo => f.write_str("echo"),
            TargetSpec::Redis(address) => write!(f, "redis://{address}"),
            TargetSpec::Etcd(address) => write!(f, "etcd://{address}"),
        }
    }
}

/// How requests are made, whatever the target.
pub struct Settings {
    pub read: Consistency,
    pub write: Consistency,
    /// Redis: replicas each write waits for (`WAIT N 0`), if any.
    pub redis_wait: Option<u32>,
    pub request_timeout: Duration,
}

/// One client task's handle on the target.
pub enum Session {
    Quorumkv {
        client: Client,
        read: Consistency,
        write: Consistency,
    },
    Redis {
        connection: redis::aio::MultiplexedConnection,
        wait: Option<u32>,
    },
    Etcd {
        http: reqwest::Client,
        put_url: String,
        range_url: String,
        /// Serializable reads are answered by the member asked, from its own state.
        serializable: bool,
    },
}

/// Opens `count` sessions on the target. `config` is the quorumkv client configuration
/// (nodes, cluster, timeouts); the echo target replaces its nodes with its own address.
pub async fn connect(
    spec: &TargetSpec,
    config: ClientConfig,
    settings: &Settings,
    count: usize,
    value_bytes: usize,
) -> anyhow::Result<Vec<Session>> {
    match spec {
        TargetSpec::Quorumkv => Ok(quorumkv_sessions(config, settings, count)?),
        TargetSpec::Echo => {
            let address = echo::start(value_bytes).await?;
            let mut config = config;
            config.nodes = vec![address.to_string()];
            Ok(quorumkv_sessions(config, settings, count)?)
        }
        TargetSpec::Redis(address) => redis_sessions(address, settings, count).await,
        TargetSpec::Etcd(address) => etcd_sessions(address, settings, count),
    }
}

fn quorumkv_sessions(
    config: ClientConfig,
    settings: &Settings,
    count: usize,
) -> Result<Vec<Session>, quorumkv_client::Error> {
    let client = Client::new(config)?;
    let session = || Session::Quorumkv {
        client: client.clone(),
        read: settings.read,
        write: settings.write,
    };
    Ok((0..count).map(|_| session()).collect())
}

async fn redis_sessions(
    address: &str,
    settings: &Settings,
    count: usize,
) -> anyhow::Result<Vec<Session>> {
    let client = redis::Client::open(format!("redis://{address}/"))?;
    let mut sessions = Vec::with_capacity(count);
    for _ in 0..count {
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to redis at {address}"))?;
        sessions.push(Session::Redis {
            connection,
            wait: settings.redis_wait,
        });
    }
    Ok(sessions)
}

fn etcd_sessions(address: &str, settings: &Settings, count: usize) -> anyhow::Result<Vec<Session>> {
    // One idle connection kept per task, so a steady load never dials again.
    let http = reqwest::Client::builder()
        .timeout(settings.request_timeout)
        .pool_max_idle_per_host(count)
        .tcp_nodelay(true)
        .build()?;
    let serializable = settings.read == Consistency::One;
    let session = || Session::Etcd {
        http: http.clone(),
        put_url: format!("http://{address}/v3/kv/put"),
        range_url: format!("http://{address}/v3/kv/range"),
        serializable,
    };
    Ok((0..count).map(|_| session()).collect())
}

/// Why one operation failed, named so that failures can be counted by kind.
pub type FailureKind = String;

impl Session {
    /// Reads `key`; true when a value was found.
    pub async fn read(&mut self, key: &str) -> Result<bool, FailureKind> {
        match self {
            Session::Quorumkv { client, read, .. } => {
                let key = Bytes::copy_from_slice(key.as_bytes());
                match client.get(key, *read).await {
                    Ok(result) => Ok(result.is_found()),
                    Err(error) => Err(error.kind().to_owned()),
                }
            }
            Session::Redis { connection, .. } => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(connection)
                    .await
                    .map_err(redis_kind)?;
                Ok(value.is_some())
            }
            Session::Etcd {
                http,
                range_url,
                serializable,
                ..
            } => {
                let body = serde_json::json!({
                    "key": BASE64.encode(key),
                    "serializable": *serializable,
                });
                let reply = etcd_call(http, range_url, &body).await?;
                Ok(reply.get("kvs").is_some())
            }
        }
    }

    /// Writes `value` under `key`, acknowledged as the settings ask.
    pub async fn write(&mut self, key: &str, value: &Bytes) -> Result<(), FailureKind> {
        match self {
            // No context: a blind write, which adds a sibling beside what the key holds.
            Session::Quorumkv { client, write, .. } => {
                let key = Bytes::copy_from_slice(key.as_bytes());
                let result = client.put(key, value.clone(), None, *write).await;
                result.map_err(|error| error.kind().to_owned())
            }
            Session::Redis {
                connection,
                wait: None,
            } => redis::cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .query_async::<()>(connection)
                .await
                .map_err(redis_kind),
            // SET and WAIT in one pipeline: one round trip, as a careful application would.
            Session::Redis {
                connection,
                wait: Some(replicas),
            } => {
                let (acknowledged,): (u32,) = redis::pipe()
                    .cmd("SET")
                    .arg(key)
                    .arg(value.as_ref())
                    .ignore()
                    .cmd("WAIT")
                    .arg(*replicas)
                    .arg(0)
                    .query_async(connection)
                    .await
                    .map_err(redis_kind)?;
                if acknowledged < *replicas {
                    return Err("wait-short".to_owned());
                }
                Ok(())
            }
            Session::Etcd { http, put_url, .. } => {
                let body = serde_json::json!({
                    "key": BASE64.encode(key),
                    "value": BASE64.encode(value),
                });
                etcd_call(http, put_url, &body).await.map(drop)
            }
        }
    }
}

fn redis_kind(error: redis::RedisError) -> FailureKind {
    format!("redis-{:?}", error.kind()).to_lowercase()
}

async fn etcd_call(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, FailureKind> {
    let reply = http.post(url).json(body).send().await.map_err(http_kind)?;
    let status = reply.status();
    if !status.is_success() {
        return Err(format!("http-{}", status.as_u16()));
    }
    reply.json().await.map_err(http_kind)
}

fn http_kind(error: reqwest::Error) -> FailureKind {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_decode() {
        "decode"
    } else {
        "other"
    };
    format!("http-{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_their_names_and_urls() {
        // Goal: every documented spelling parses, and a bare host without scheme does not.
        let parse = |text: &str| text.parse::<TargetSpec>();
        assert_eq!(parse("echo"), Ok(TargetSpec::Echo));
        assert_eq!(parse("quorumkv"), Ok(TargetSpec::Quorumkv));
        let redis = TargetSpec::Redis("127.0.0.1:6379".into());
        assert_eq!(parse("redis://127.0.0.1:6379/"), Ok(redis));
        let etcd = TargetSpec::Etcd("127.0.0.1:2379".into());
        assert_eq!(parse("etcd://127.0.0.1:2379"), Ok(etcd.clone()));
        assert_eq!(etcd.to_string(), "etcd://127.0.0.1:2379");
        assert!(parse("127.0.0.1:6379").is_err());
        assert!(parse("redis://").is_err());
    }
}
