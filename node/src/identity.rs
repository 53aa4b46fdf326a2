//! Who this node is, kept in its data dir.
//!
//! A version dot names an actor: the node id plus an epoch. Each start takes a new epoch
//! and writes it durably before the node serves anything, so a node whose memory or disk
//! was lost can never issue a dot it issued before (the Riak KV679 family of bugs: a
//! reused dot makes a new write look like one the replicas already saw, and it is dropped).
//!
//! The epoch is drawn at random from the node's seeded RNG rather than counted up from the
//! previous one: a wiped or replaced data dir has no previous epoch to count from, and a
//! counter would start over at one and reuse dots. 64 random bits make a repeat across a
//! node's lifetime negligible (63 bits, as TOML integers are signed). While data lives
//! only in memory every start loses everything, so every start must take a new epoch; a
//! durable store may keep the epoch when its data survived. The cost is one clock entry
//! per start in keys this node coordinates.

use std::path::Path;

use quorumkv_client::NodeId;
use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::versions::Actor;

const IDENTITY_FILE: &str = "identity.toml";

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: String,
    epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data dir {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("data dir {dir} has an unreadable identity file: {reason}")]
    Corrupt { dir: String, reason: String },
    #[error("data dir {dir} belongs to node {found}, not {expected}")]
    WrongNode {
        dir: String,
        found: String,
        expected: String,
    },
}

/// Checks the identity in `data_dir`, takes a fresh epoch and stores it durably.
pub async fn take_new_epoch<E: Env>(
    env: &E,
    data_dir: &Path,
    node: &NodeId,
    rng: &mut impl rand::Rng,
) -> Result<Actor, IdentityError> {
    let dir = data_dir.display().to_string();
    let io = |source| IdentityError::Io {
        dir: dir.clone(),
        source,
    };
    env.create_dir_all(data_dir).await.map_err(io)?;

    let path = data_dir.join(IDENTITY_FILE);
    let previous = match env.read_file(&path).await.map_err(io)? {
        Some(bytes) => Some(parse(&bytes, &dir)?),
        None => None,
    };
    if let Some(previous) = &previous {
        if previous.node_id != node.0 {
            return Err(IdentityError::WrongNode {
                dir,
                found: previous.node_id.clone(),
                expected: node.0.clone(),
            });
        }
    }

    // 63 bits: TOML integers are signed 64-bit.
    let mut epoch = rng.gen::<u64>() >> 1;
    while previous.as_ref().is_some_and(|p| p.epoch == epoch) {
        epoch = rng.gen::<u64>() >> 1;
    }
    let next = Identity {
        node_id: node.0.clone(),
        epoch,
    };
    let text = toml::to_string(&next).expect("identity serializes");
    env.write_file_durably(&path, text.into_bytes())
        .await
        .map_err(io)?;
    Ok(Actor {
        node: node.clone(),
        epoch: next.epoch,
    })
}

fn parse(bytes: &[u8], dir: &str) -> Result<Identity, IdentityError> {
    let corrupt = |reason: String| IdentityError::Corrupt {
        dir: dir.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    toml::from_str(text).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::TokioEnv;
    use rand::SeedableRng;

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }

    #[tokio::test]
    async fn every_start_takes_a_new_epoch_and_another_nodes_dir_is_refused() {
        // Goal: epochs never repeat across restarts of one data dir, even when the RNG
        // repeats itself, and another node's data dir is refused.
        let dir = std::env::temp_dir().join(format!("quorumkv-identity-{}", std::process::id()));
        let env = TokioEnv;
        let n1 = NodeId::from("n1");

        let first = take_new_epoch(&env, &dir, &n1, &mut rng(7)).await.unwrap();
        let second = take_new_epoch(&env, &dir, &n1, &mut rng(7)).await.unwrap();
        assert_ne!(second.epoch, first.epoch);

        let error = take_new_epoch(&env, &dir, &NodeId::from("n2"), &mut rng(8)).await;
        let error = error.unwrap_err();
        assert!(matches!(error, IdentityError::WrongNode { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
