//! A node killed with SIGKILL: quorum keeps working, `all` reports Unavailable with
//! numbers, and the node rejoins.

use bytes::Bytes;
use quorumkv_client::{Consistency, Error};
use quorumkv_tests::Cluster;

#[tokio::test]
async fn a_killed_node_leaves_quorum_working_and_makes_all_unavailable() -> anyhow::Result<()> {
    // Goal: with one of three nodes dead, quorum reads and writes succeed, while `all`
    // fails at once with Unavailable { required: 3, alive: 2 } and writes nothing.
    let mut cluster = Cluster::start(3, 3).await?;
    let client = cluster.client()?;
    for i in 0..20 {
        client
            .put(format!("k{i}"), format!("v{i}"), None, Consistency::Quorum)
            .await?;
    }

    cluster.kill(2).await?;
    for i in 0..20 {
        let read = client.get(format!("k{i}"), Consistency::Quorum).await?;
        assert_eq!(read.values, vec![Bytes::from(format!("v{i}"))]);
    }
    client
        .put("after-kill", "x", None, Consistency::Quorum)
        .await?;

    let error = client.get("k0", Consistency::All).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                required: 3,
                alive: 2
            }
        ),
        "read at all: {error}"
    );
    let error = client
        .put("refused", "x", None, Consistency::All)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                required: 3,
                alive: 2
            }
        ),
        "write at all: {error}"
    );
    assert!(!client.get("refused", Consistency::Quorum).await?.is_found());
    Ok(())
}

#[tokio::test]
async fn a_restarted_node_is_repaired_by_reads_at_all() -> anyhow::Result<()> {
    // Goal: a node that lost its memory comes back, `all` works again, and a read at
    // `all` returns (and repairs) what was written while it was down.
    let mut cluster = Cluster::start(3, 3).await?;
    let client = cluster.client()?;
    cluster.kill(1).await?;
    for i in 0..10 {
        client
            .put(format!("k{i}"), format!("v{i}"), None, Consistency::Quorum)
            .await?;
    }
    cluster.restart(1).await?;
    for i in 0..10 {
        let read = client.get(format!("k{i}"), Consistency::All).await?;
        assert_eq!(read.values, vec![Bytes::from(format!("v{i}"))]);
    }
    // Every replica now holds the key: a read through the restarted node at `one` that
    // happens to be answered by itself first must still find it.
    let restarted = cluster.client_of(1)?;
    for i in 0..10 {
        let read = restarted.get(format!("k{i}"), Consistency::All).await?;
        assert!(read.is_found());
    }
    Ok(())
}
