//! Concurrent writes become siblings; a write with the merged context resolves them.

use std::collections::BTreeSet;

use bytes::Bytes;
use quorumkv_client::Consistency;
use quorumkv_tests::Cluster;

fn set(values: &[Bytes]) -> BTreeSet<Bytes> {
    values.iter().cloned().collect()
}

#[tokio::test]
async fn concurrent_writers_produce_siblings_and_the_merged_context_resolves_them(
) -> anyhow::Result<()> {
    // Goal: two writers that read the same version and write through different nodes
    // both survive as siblings; a write carrying the read's context replaces both.
    let cluster = Cluster::start(3, 3).await?;
    let (alice, bob) = (cluster.client_of(0)?, cluster.client_of(1)?);
    alice.put("cart", "start", None, Consistency::All).await?;

    let seen = alice.get("cart", Consistency::Quorum).await?;
    alice
        .put("cart", "alice", Some(&seen.context), Consistency::Quorum)
        .await?;
    bob.put("cart", "bob", Some(&seen.context), Consistency::Quorum)
        .await?;

    let both = alice.get("cart", Consistency::All).await?;
    assert_eq!(
        set(&both.values),
        set(&[Bytes::from("alice"), Bytes::from("bob")])
    );

    bob.put(
        "cart",
        "alice+bob",
        Some(&both.context),
        Consistency::Quorum,
    )
    .await?;
    let resolved = alice.get("cart", Consistency::All).await?;
    assert_eq!(resolved.values, vec![Bytes::from("alice+bob")]);
    Ok(())
}

#[tokio::test]
async fn two_writes_with_one_stale_context_through_one_node_are_not_overwritten(
) -> anyhow::Result<()> {
    // Goal: the same coordinator receiving two writes with the same context keeps both
    // (dotted version vectors), where a per-node vector clock would lose one.
    let cluster = Cluster::start(3, 3).await?;
    let client = cluster.client_of(0)?;
    client.put("k", "v0", None, Consistency::All).await?;
    let seen = client.get("k", Consistency::All).await?;
    client
        .put("k", "first", Some(&seen.context), Consistency::All)
        .await?;
    client
        .put("k", "second", Some(&seen.context), Consistency::All)
        .await?;

    let read = cluster.client_of(2)?.get("k", Consistency::All).await?;
    assert_eq!(
        set(&read.values),
        set(&[Bytes::from("first"), Bytes::from("second")])
    );
    Ok(())
}

#[tokio::test]
async fn a_delete_with_the_read_context_removes_every_sibling() -> anyhow::Result<()> {
    // Goal: a delete covering all siblings leaves the key not found on every replica, and
    // a blind write afterwards brings it back as a single value.
    let cluster = Cluster::start(3, 3).await?;
    let client = cluster.client()?;
    client.put("gone", "a", None, Consistency::All).await?;
    client.put("gone", "b", None, Consistency::All).await?;
    let seen = client.get("gone", Consistency::All).await?;
    assert_eq!(seen.values.len(), 2);

    client
        .delete("gone", Some(&seen.context), Consistency::Quorum)
        .await?;
    let read = client.get("gone", Consistency::All).await?;
    assert!(!read.is_found());

    client
        .put("gone", "again", Some(&read.context), Consistency::Quorum)
        .await?;
    let read = client.get("gone", Consistency::All).await?;
    assert_eq!(read.values, vec![Bytes::from("again")]);
    Ok(())
}
