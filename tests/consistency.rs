//! Every consistency level against a real cluster, and writes forwarded by nodes that are
//! not home replicas of the key.

use bytes::Bytes;
use quorumkv_client::{Consistency, Error};
use quorumkv_tests::Cluster;

const LEVELS: [Consistency; 7] = [
    Consistency::One,
    Consistency::Two,
    Consistency::Three,
    Consistency::Quorum,
    Consistency::All,
    Consistency::Any,
    Consistency::Count(2),
];

#[tokio::test]
async fn a_write_at_every_level_is_read_back_at_every_level() -> anyhow::Result<()> {
    // Goal: each write level succeeds on a healthy cluster; a read at `all` sees it at
    // once, and reads at every level see it once replication has settled.
    let cluster = Cluster::start(3, 3).await?;
    let client = cluster.client()?;
    for (i, level) in LEVELS.iter().enumerate() {
        let key = format!("level-{i}");
        client
            .put(key.clone(), format!("v{i}"), None, *level)
            .await?;
        let read = client.get(key.clone(), Consistency::All).await?;
        assert_eq!(
            read.values,
            vec![Bytes::from(format!("v{i}"))],
            "written at {level}"
        );
    }
    for (i, level) in LEVELS
        .iter()
        .filter(|l| **l != Consistency::Any)
        .enumerate()
    {
        let read = client.get(format!("level-{i}"), *level).await?;
        assert_eq!(
            read.values,
            vec![Bytes::from(format!("v{i}"))],
            "read at {level}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_quorum_read_sees_a_quorum_write_from_any_coordinator() -> anyhow::Result<()> {
    // Goal: with R + W > N, a read through any node sees the latest acknowledged write.
    let cluster = Cluster::start(3, 3).await?;
    for round in 0..10 {
        let writer = cluster.client_of(round % 3)?;
        let reader = cluster.client_of((round + 1) % 3)?;
        let current = reader.get("counter", Consistency::Quorum).await?;
        let value = format!("round-{round}");
        writer
            .put(
                "counter",
                value.clone(),
                Some(&current.context),
                Consistency::Quorum,
            )
            .await?;
        let read = reader.get("counter", Consistency::Quorum).await?;
        assert_eq!(read.values, vec![Bytes::from(value)]);
    }
    Ok(())
}

#[tokio::test]
async fn levels_that_can_never_be_met_are_refused_at_once() -> anyhow::Result<()> {
    // Goal: R or W above N fails with InvalidConsistency before anything is written, and
    // `any` is refused for reads.
    let cluster = Cluster::start(3, 2).await?;
    let client = cluster.client()?;

    let error = client
        .put("k", "v", None, Consistency::Three)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidConsistency { .. }), "{error}");
    let error = client.get("k", Consistency::Count(3)).await.unwrap_err();
    assert!(matches!(error, Error::InvalidConsistency { .. }), "{error}");
    let error = client.get("k", Consistency::Any).await.unwrap_err();
    assert!(matches!(error, Error::InvalidConsistency { .. }), "{error}");

    let read = client.get("k", Consistency::All).await?;
    assert!(!read.is_found(), "a refused write must not be stored");
    Ok(())
}

#[tokio::test]
async fn a_write_through_a_node_that_is_not_a_home_replica_is_forwarded() -> anyhow::Result<()> {
    // Goal: with 4 nodes and N = 2, keys whose home replicas exclude n1 are still written
    // through n1, and every home replica holds them (a read at `all` needs both).
    let cluster = Cluster::start(4, 2).await?;
    let via_n1 = cluster.client_of(0)?;
    let mut forwarded = 0;
    for i in 0..40 {
        let key = Bytes::from(format!("fwd-{i}"));
        let ring = via_n1.ring(Some(key.clone())).await?;
        let homes = &ring.entries[0].home;
        if homes.iter().any(|home| home.0 == "n1") {
            continue;
        }
        forwarded += 1;
        via_n1.put(key.clone(), "v", None, Consistency::All).await?;
        let home_index = homes[0].0[1..].parse::<usize>()? - 1;
        let read = cluster
            .client_of(home_index)?
            .get(key, Consistency::All)
            .await?;
        assert_eq!(read.values, vec![Bytes::from_static(b"v")]);
    }
    assert!(
        forwarded >= 5,
        "too few keys exercised forwarding: {forwarded}"
    );
    Ok(())
}
