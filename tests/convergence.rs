//! Convergence on real processes: a node that missed writes is brought back by hinted
//! handoff alone or by anti-entropy alone, a sloppy write reaches its home through the
//! fallback that took it, and a purged tombstone does not let a deleted key come back.
//!
//! Every check of a replica reads that node's own copy with `inspect`, never a client
//! get, so no read repair can do the work the mechanism under test is meant to do.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use quorumkv_client::protocol::{ConvergenceStatus, NodeId};
use quorumkv_client::{Client, ClientConfig, Consistency, Error, WriteOptions};
use quorumkv_tests::{Cluster, REQUEST_TIMEOUT_MS};

/// Keys written while a node is down: enough that a mechanism which repairs only some
/// keys (one batch, one bucket, one partition) is caught.
const KEYS: usize = 300;
/// Short, so a test waits a fraction of a second between handoff rounds.
const HANDOFF_INTERVAL_MS: &str = "200";
const ANTI_ENTROPY_INTERVAL_MS: &str = "300";
/// How long a test waits for replicas to converge. Rounds come every few hundred ms;
/// the rest is room for a loaded two-core machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `None`; otherwise it returns what is still wrong,
/// which the error names once `timeout` has passed.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let wrong = match check().await? {
            None => return Ok(()),
            Some(wrong) => wrong,
        };
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {timeout:?}; {wrong}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Writes `count` fresh keys at quorum, spread over `clients`; returns key → value.
async fn write_keys(
    clients: &[Client],
    prefix: &str,
    count: usize,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut written = BTreeMap::new();
    for i in 0..count {
        let (key, value) = (format!("{prefix}-{i}"), format!("{prefix}-value-{i}"));
        let client = &clients[i % clients.len()];
        client
            .put(key.clone(), value.clone(), None, Consistency::Quorum)
            .await?;
        written.insert(key, value);
    }
    Ok(written)
}

/// The values of one node's own copy of `key`; a tombstone shows as `None`.
async fn local_values(node: &Client, key: &str) -> anyhow::Result<Vec<Option<Bytes>>> {
    let state = node.inspect(key.to_owned()).await?;
    Ok(state.siblings.into_iter().map(|s| s.value).collect())
}

/// The keys whose copy on `node` is not exactly their written value, or `None`.
async fn missing_on(
    node: &Client,
    expected: &BTreeMap<String, String>,
) -> anyhow::Result<Option<String>> {
    let mut missing = Vec::new();
    for (key, value) in expected {
        if local_values(node, key).await? != vec![Some(Bytes::from(value.clone()))] {
            missing.push(key.as_str());
        }
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let examples = &missing[..missing.len().min(5)];
    Ok(Some(format!(
        "{} of {} keys missing, e.g. {examples:?}",
        missing.len(),
        expected.len()
    )))
}

/// The convergence counters of each node in `indexes`, asked of that node alone.
async fn convergence(
    cluster: &Cluster,
    indexes: &[usize],
) -> anyhow::Result<Vec<ConvergenceStatus>> {
    let mut statuses = Vec::new();
    for &index in indexes {
        statuses.push(cluster.client_of(index)?.status().await?.convergence);
    }
    Ok(statuses)
}

/// Hints pending for `target`, summed over `statuses`.
fn pending_for(statuses: &[ConvergenceStatus], target: &str) -> u64 {
    statuses
        .iter()
        .flat_map(|status| &status.hints_pending)
        .filter(|(node, _)| node.0 == target)
        .map(|(_, count)| count)
        .sum()
}

/// A 3-node cluster started with `flags`, n3 killed, and KEYS written at quorum through
/// n1 and n2 while it is down; returns the cluster and what was written.
async fn outage_of_n3(
    flags: &[&str],
    prefix: &str,
) -> anyhow::Result<(Cluster, BTreeMap<String, String>)> {
    let mut cluster = Cluster::start_with(3, 3, flags).await?;
    cluster.kill(2).await?;
    let writers = [cluster.client_of(0)?, cluster.client_of(1)?];
    let written = write_keys(&writers, prefix, KEYS).await?;
    Ok((cluster, written))
}

/// Waits until n3's own copy (inspect, so no read repair) of every written key is right.
async fn until_n3_holds(
    cluster: &Cluster,
    written: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let n3 = &cluster.client_of(2)?;
    eventually(
        "n3 holds every key written while it was down",
        CONVERGE_TIMEOUT,
        || missing_on(n3, written),
    )
    .await
}

/// Whether `status` records a completed anti-entropy exchange with `peer`.
fn exchanged_with(status: &ConvergenceStatus, peer: &str) -> bool {
    status.anti_entropy.iter().any(|(node, _)| node.0 == peer)
}

#[tokio::test]
async fn a_node_that_was_down_gets_every_write_from_hints_alone() -> anyhow::Result<()> {
    // Goal: hinted handoff alone repairs a node that missed writes. Method: anti-entropy
    // off, n3 killed, KEYS written at quorum through n1 and n2, n3 restarted; n3's own
    // copy of every key (inspect, so no read repair) must become the written value.
    let flags = [
        "--anti-entropy-interval-ms",
        "0",
        "--handoff-interval-ms",
        HANDOFF_INTERVAL_MS,
    ];
    let (mut cluster, written) = outage_of_n3(&flags, "hinted").await?;

    // Each write's coordinator stores its hint after answering; wait until all are there.
    let cluster_ref = &cluster;
    eventually(
        "n1 and n2 hold one hint for n3 per key",
        CONVERGE_TIMEOUT,
        || async move {
            let pending = pending_for(&convergence(cluster_ref, &[0, 1]).await?, "n3");
            Ok((pending != KEYS as u64).then(|| format!("{pending} hints pending for n3")))
        },
    )
    .await?;

    cluster.restart(2).await?;
    until_n3_holds(&cluster, &written).await?;

    let cluster_ref = &cluster;
    eventually(
        "n1 and n2 have no hint left for n3",
        CONVERGE_TIMEOUT,
        || async move {
            let pending = pending_for(&convergence(cluster_ref, &[0, 1]).await?, "n3");
            Ok((pending > 0).then(|| format!("{pending} hints pending for n3")))
        },
    )
    .await?;
    let statuses = convergence(&cluster, &[0, 1]).await?;
    let delivered: u64 = statuses.iter().map(|s| s.hints_delivered).sum();
    assert!(
        delivered >= KEYS as u64,
        "n1 and n2 report {delivered} hints delivered for {KEYS} keys"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_that_was_down_converges_by_anti_entropy_without_hints() -> anyhow::Result<()> {
    // Goal: anti-entropy alone repairs a node that missed writes. Method: hints off,
    // anti-entropy every few hundred ms, n3 killed, KEYS written at quorum, n3 restarted;
    // n3's own copy of every key must become the written value, with no hint involved.
    let flags = [
        "--hints",
        "false",
        "--anti-entropy-interval-ms",
        ANTI_ENTROPY_INTERVAL_MS,
    ];
    let (mut cluster, written) = outage_of_n3(&flags, "entropy").await?;

    cluster.restart(2).await?;
    until_n3_holds(&cluster, &written).await?;

    // n3 completed an exchange with a peer, or a peer with n3: keys can reach n3 no other
    // way here, but the counters must say so too.
    let statuses = convergence(&cluster, &[0, 1, 2]).await?;
    let with_n3 = exchanged_with(&statuses[0], "n3")
        || exchanged_with(&statuses[1], "n3")
        || ["n1", "n2"].iter().any(|p| exchanged_with(&statuses[2], p));
    assert!(with_n3, "no completed exchange involves n3: {statuses:?}");
    let repaired: u64 = statuses.iter().map(|s| s.anti_entropy_repaired).sum();
    assert!(repaired > 0, "anti-entropy reports no key repaired");
    for (index, status) in statuses.iter().enumerate() {
        let name = Cluster::name(index);
        assert!(status.hints_pending.is_empty(), "{name} holds hints");
        assert_eq!(status.hints_delivered, 0, "{name} delivered hints");
    }
    Ok(())
}

#[tokio::test]
async fn a_sloppy_write_succeeds_through_a_fallback_and_reaches_the_home_later(
) -> anyhow::Result<()> {
    // Goal: with a home replica down, a sloppy write at `all` counts the key's fallback
    // and succeeds, while the strict one is refused; the fallback's hint brings the value
    // to the home once it is back. Anti-entropy is off, so only that hint can.
    let flags = [
        "--anti-entropy-interval-ms",
        "0",
        "--handoff-interval-ms",
        HANDOFF_INTERVAL_MS,
    ];
    let mut cluster = Cluster::start_with(4, 3, &flags).await?;
    let key = "sloppy";
    let ring = cluster.client()?.ring(Some(Bytes::from(key))).await?;
    let entry = ring
        .entries
        .first()
        .context("the ring names the key's partition")?;
    let homes: Vec<usize> = indexes(&cluster, &entry.home)?;
    let fallbacks: Vec<usize> = indexes(&cluster, &entry.fallbacks)?;
    assert_eq!((homes.len(), fallbacks.len()), (3, 1), "{entry:?}");
    let (down, fallback) = (homes[0], fallbacks[0]);

    // Through the fallback, which forwards the write to a live home to coordinate.
    cluster.kill(down).await?;
    let through_fallback = cluster.client_of(fallback)?;
    let sloppy = WriteOptions {
        consistency: Consistency::All,
        sloppy: true,
    };
    through_fallback
        .put(key, "sloppy-value", None, sloppy)
        .await?;
    let strict = WriteOptions {
        consistency: Consistency::All,
        sloppy: false,
    };
    let error = through_fallback
        .put(key, "strict-value", None, strict)
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
        "strict write at all: {error}"
    );
    let pending = pending_for(
        &convergence(&cluster, &[fallback]).await?,
        &Cluster::name(down),
    );
    assert_eq!(
        pending, 1,
        "the fallback holds the hint for the home that is down"
    );

    cluster.restart(down).await?;
    let home = &cluster.client_of(down)?;
    let expected = &BTreeMap::from([(key.to_owned(), "sloppy-value".to_owned())]);
    eventually(
        "the home that was down holds the sloppy value",
        CONVERGE_TIMEOUT,
        || missing_on(home, expected),
    )
    .await?;
    Ok(())
}

/// A hint window of a second, so that tombstone tests wait seconds, not hours.
const HINT_WINDOW_MS: u64 = 1_000;
/// The least grace the node accepts (window plus request timeout), and a margin.
const TOMBSTONE_GRACE_MS: u64 = HINT_WINDOW_MS + REQUEST_TIMEOUT_MS + 500;

/// The short hint window and grace, and anti-entropy (which also runs the purge) and
/// handoff (which also expires hints) every few hundred ms.
fn purge_flags() -> Vec<String> {
    let flags = [
        "--hint-window-ms".to_owned(),
        HINT_WINDOW_MS.to_string(),
        "--tombstone-grace-ms".to_owned(),
        TOMBSTONE_GRACE_MS.to_string(),
        "--anti-entropy-interval-ms".to_owned(),
        ANTI_ENTROPY_INTERVAL_MS.to_owned(),
        "--handoff-interval-ms".to_owned(),
        HANDOFF_INTERVAL_MS.to_owned(),
    ];
    flags.to_vec()
}

/// Reads each key at `read` and deletes it with that read's context, so the tombstone
/// replaces the value; without a context it would stand beside it as a sibling.
async fn delete_keys(client: &Client, keys: &[String], level: Consistency) -> anyhow::Result<()> {
    for key in keys {
        let read = client.get(key.clone(), level).await?;
        assert!(read.is_found(), "{key} was written");
        client
            .delete(key.clone(), Some(&read.context), level)
            .await?;
    }
    Ok(())
}

/// Waits until no node holds anything of `keys` and at least one purge per key counted.
async fn wait_until_purged(
    cluster: &Cluster,
    nodes: &[Client],
    keys: &[String],
) -> anyhow::Result<()> {
    // Two graces: one for the tombstone to stand, one for a replica that took it late.
    let timeout = CONVERGE_TIMEOUT + Duration::from_secs(10);
    let indexes: Vec<usize> = (0..nodes.len()).collect();
    let indexes = &indexes;
    eventually(
        "every tombstone is purged everywhere",
        timeout,
        || async move {
            let statuses = convergence(cluster, indexes).await?;
            let purged: u64 = statuses.iter().map(|s| s.tombstones_purged).sum();
            let held = held_anywhere(nodes, keys).await?;
            Ok((purged < keys.len() as u64 || !held.is_empty())
                .then(|| format!("{purged} purged; still held: {held:?}")))
        },
    )
    .await
}

/// After a purge, waits for a full round of anti-entropy, which would spread back any
/// copy a purge left behind, then checks that no node holds anything of `keys` and that
/// a read at `all` finds none of them.
async fn assert_stays_purged(
    cluster: &Cluster,
    nodes: &[Client],
    keys: &[String],
) -> anyhow::Result<()> {
    let indexes: Vec<usize> = (0..nodes.len()).collect();
    let now = convergence(cluster, &indexes).await?;
    let since: Vec<u64> = now.iter().map(|s| s.now_ms).collect();
    wait_for_exchanges_since(cluster, &indexes, &since).await?;

    let held = held_anywhere(nodes, keys).await?;
    assert!(held.is_empty(), "back after the purge: {held:?}");
    let client = cluster.client()?;
    for key in keys {
        let read = client.get(key.clone(), Consistency::All).await?;
        assert!(!read.is_found(), "{key} reads {:?}", read.values);
    }
    Ok(())
}

#[tokio::test]
async fn a_deleted_key_stays_deleted_after_its_tombstone_is_purged() -> anyhow::Result<()> {
    // Goal: tombstone GC purges a delete everywhere and nothing brings the value back.
    // Method: keys written and deleted at `all` under a short grace; once no node holds
    // them, a full round of anti-entropy later, no node's copy nor a read has them.
    let flags = purge_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(3, 3, &flags).await?;
    let client = cluster.client()?;
    let keys: Vec<String> = (0..5).map(|i| format!("deleted-{i}")).collect();
    for key in &keys {
        client
            .put(key.clone(), "doomed", None, Consistency::All)
            .await?;
    }
    delete_keys(&client, &keys, Consistency::All).await?;
    let nodes: Vec<Client> = (0..3)
        .map(|i| cluster.client_of(i))
        .collect::<Result<_, _>>()?;
    for node in &nodes {
        let values = local_values(node, &keys[0]).await?;
        assert_eq!(values, vec![None], "a tombstone before the grace");
    }

    wait_until_purged(&cluster, &nodes, &keys).await?;
    assert_stays_purged(&cluster, &nodes, &keys).await
}

#[tokio::test]
async fn a_node_back_after_a_long_absence_brings_no_deleted_value_back() -> anyhow::Result<()> {
    // Goal: a home replica that still holds a deleted value and comes back after the hint
    // window and the grace have passed does not resurrect it. Method: keys written at
    // `all`, n3 killed, keys deleted at quorum; n3 stays away until its hints expired and
    // n1 and n2 ran purge rounds past the grace, which must not purge without n3. Then n3
    // comes back with the old values; anti-entropy gives it the tombstones and the keys
    // are purged everywhere, never read back.
    let flags = purge_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, 3, &flags).await?;
    let client = cluster.client()?;
    // Enough keys that each node is the first home, which runs the purge, of some.
    let keys: Vec<String> = (0..30).map(|i| format!("absent-{i}")).collect();
    for key in &keys {
        client
            .put(key.clone(), "doomed", None, Consistency::All)
            .await?;
    }
    let count = keys.len() as u64;
    cluster.kill(2).await?;
    let survivors = Client::new(ClientConfig::new(&cluster.addresses[0..2]))?;
    delete_keys(&survivors, &keys, Consistency::Quorum).await?;

    // The hints that would carry the tombstones to n3 expire within the window.
    let cluster_ref = &cluster;
    eventually(
        "n1 and n2 dropped their hints for n3",
        CONVERGE_TIMEOUT,
        || async move {
            let statuses = convergence(cluster_ref, &[0, 1]).await?;
            let dropped: u64 = statuses.iter().map(|s| s.hints_dropped).sum();
            let pending = pending_for(&statuses, "n3");
            Ok((dropped < count || pending > 0)
                .then(|| format!("{dropped} dropped, {pending} pending")))
        },
    )
    .await?;
    // A purge round follows every exchange, so once n1 and n2 have each completed an
    // exchange past the grace and one more after it, each has tried to purge with n3
    // away, and must have refused.
    for margin_ms in [TOMBSTONE_GRACE_MS, 0] {
        let now = convergence(&cluster, &[0, 1]).await?;
        let since: Vec<u64> = now.iter().map(|s| s.now_ms + margin_ms).collect();
        wait_for_exchanges_since(&cluster, &[0, 1], &since).await?;
    }
    let purged: u64 = convergence(&cluster, &[0, 1])
        .await?
        .iter()
        .map(|s| s.tombstones_purged)
        .sum();
    assert_eq!(purged, 0, "tombstones purged while a home replica was away");

    cluster.restart(2).await?;
    let nodes: Vec<Client> = (0..3)
        .map(|i| cluster.client_of(i))
        .collect::<Result<_, _>>()?;
    wait_until_purged(&cluster, &nodes, &keys).await?;
    assert_stays_purged(&cluster, &nodes, &keys).await
}

/// Waits until each node in `indexes` has completed an anti-entropy exchange with each
/// of the others after `since[i]`, a time by node `indexes[i]`'s own clock.
async fn wait_for_exchanges_since(
    cluster: &Cluster,
    indexes: &[usize],
    since: &[u64],
) -> anyhow::Result<()> {
    let what = "every pair of nodes completed an anti-entropy exchange";
    eventually(what, CONVERGE_TIMEOUT, || async move {
        let statuses = convergence(cluster, indexes).await?;
        let mut stale = Vec::new();
        for (at, status) in statuses.iter().enumerate() {
            let fresh = |peer: &usize| {
                let name = Cluster::name(*peer);
                let times = status.anti_entropy.iter().filter(|(n, _)| n.0 == name);
                times.map(|(_, ms)| *ms).any(|ms| ms > since[at])
            };
            let peers = indexes.iter().filter(|p| **p != indexes[at]);
            for peer in peers.filter(|p| !fresh(p)) {
                stale.push((Cluster::name(indexes[at]), Cluster::name(*peer)));
            }
        }
        Ok((!stale.is_empty()).then(|| format!("no exchange yet between {stale:?}")))
    })
    .await
}

/// `(node, key)` for every key some node still holds anything of, tombstones included.
async fn held_anywhere(nodes: &[Client], keys: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut held = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        for key in keys {
            if node.inspect(key.clone()).await?.exists {
                held.push((Cluster::name(index), key.clone()));
            }
        }
    }
    Ok(held)
}

/// The cluster indexes of nodes named in a ring entry.
fn indexes(cluster: &Cluster, nodes: &[NodeId]) -> anyhow::Result<Vec<usize>> {
    nodes.iter().map(|node| cluster.index_of(&node.0)).collect()
}
