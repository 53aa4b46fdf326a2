//! Simulated clients: gets, read-modify-write puts and deletes, and blind puts over a
//! small key space, so that writers collide and siblings form.
//!
//! Each client draws from its own RNG seeded from the run's seed. Every operation is
//! recorded with its simulated start and end and what it returned. A read-modify-write is
//! two operations: the read, then the write carrying the read's context; the write's
//! `covers` lists the values the read saw.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::client::{BoxStream, Dialer, WriteOptions};
use quorumkv_client::{Client, ClientConfig, Consistency, Context, Error};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::history::{Op, OpKind, Outcome};

/// Longer than a forwarded write can take inside the cluster (two replica timeouts), so
/// the client sees the node's own Timeout rather than a dropped connection.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Think time between operations, at most.
const MAX_PAUSE_MS: u64 = 40;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub client: usize,
    pub seed: u64,
    pub ops: usize,
    pub keys: usize,
    pub read: Consistency,
    pub write: Consistency,
    pub sloppy: bool,
    pub nodes: Vec<String>,
}

pub type History = Rc<RefCell<Vec<Op>>>;

/// A client over turmoil's simulated TCP.
pub fn sim_client(nodes: Vec<String>) -> Client {
    let dialer: Dialer = Arc::new(|address: String| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    });
    let mut config = ClientConfig::new(&nodes);
    config.request_timeout = CLIENT_REQUEST_TIMEOUT;
    config.connect_timeout = CLIENT_CONNECT_TIMEOUT;
    Client::with_dialer(config, dialer).expect("a simulated cluster has nodes")
}

pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

struct Worker {
    config: WorkloadConfig,
    client: Client,
    history: History,
    rng: ChaCha8Rng,
    written: usize,
}

pub async fn run(config: WorkloadConfig, history: History) -> turmoil::Result {
    let rng = ChaCha8Rng::seed_from_u64(config.seed);
    let client = sim_client(config.nodes.clone());
    let mut worker = Worker {
        config,
        client,
        history,
        rng,
        written: 0,
    };
    let mut done = 0;
    while done < worker.config.ops {
        done += worker.step().await;
        let pause = worker.rng.gen_range(0..=MAX_PAUSE_MS);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Ok(())
}

impl Worker {
    /// One action; returns how many operations it recorded.
    async fn step(&mut self) -> usize {
        let key = format!("k{}", self.rng.gen_range(0..self.config.keys));
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=34 => {
                self.get(&key).await;
                1
            }
            35..=74 => self.read_modify_write(&key, true).await,
            75..=84 => {
                self.write(&key, true, None, Vec::new()).await;
                1
            }
            _ => self.read_modify_write(&key, false).await,
        }
    }

    async fn get(&mut self, key: &str) -> Option<(Vec<String>, Context)> {
        let start = now();
        let result = self.client.get(key.to_owned(), self.config.read).await;
        let (outcome, seen) = match result {
            Ok(read) => {
                let values: Vec<String> = read.values.iter().map(text).collect();
                let outcome = Outcome::Read {
                    values: values.clone(),
                };
                (outcome, Some((values, read.context)))
            }
            Err(error) => (failure(&error), None),
        };
        self.record(
            key,
            OpKind::Get,
            self.config.read,
            start,
            outcome,
            Vec::new(),
        );
        seen
    }

    async fn read_modify_write(&mut self, key: &str, put: bool) -> usize {
        match self.get(key).await {
            Some((values, context)) => {
                self.write(key, put, Some(context), values).await;
                2
            }
            None => 1,
        }
    }

    async fn write(&mut self, key: &str, put: bool, context: Option<Context>, covers: Vec<String>) {
        let options = WriteOptions {
            consistency: self.config.write,
            sloppy: self.config.sloppy,
        };
        let start = now();
        let (kind, result) = if put {
            self.written += 1;
            let value = format!("c{}-{}", self.config.client, self.written);
            let bytes = Bytes::from(value.clone());
            let result = self
                .client
                .put(key.to_owned(), bytes, context.as_ref(), options);
            (OpKind::Put { value }, result.await)
        } else {
            let result = self
                .client
                .delete(key.to_owned(), context.as_ref(), options);
            (OpKind::Delete, result.await)
        };
        let outcome = match result {
            Ok(()) => Outcome::Written,
            Err(error) => failure(&error),
        };
        self.record(key, kind, self.config.write, start, outcome, covers);
    }

    fn record(
        &mut self,
        key: &str,
        kind: OpKind,
        level: Consistency,
        start: Duration,
        outcome: Outcome,
        covers: Vec<String>,
    ) {
        let mut history = self.history.borrow_mut();
        let id = history.len();
        history.push(Op {
            id,
            client: self.config.client,
            key: key.to_owned(),
            kind,
            level,
            start,
            end: now(),
            outcome,
            covers,
        });
    }
}

pub fn text(value: &Bytes) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Refusals are known not to have written anything; every other failure may have.
fn failure(error: &Error) -> Outcome {
    match error {
        Error::Unavailable { .. }
        | Error::InvalidConsistency { .. }
        | Error::Rejected { .. }
        | Error::NoNodeReachable { .. } => Outcome::Refused { kind: error.kind() },
        _ => Outcome::Indeterminate { kind: error.kind() },
    }
}
