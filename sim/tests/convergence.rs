//! Replicas converge after faults: hinted handoff, anti-entropy, sloppy quorums and the
//! tombstone purge, each shown in a scripted simulated cluster (real node code on
//! `SimEnv`), including the data-loss cases Dynamo-style systems have had in production.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use quorumkv_client::{Client, Consistency, Error, WriteOptions};
use quorumkv_sim::scenario::Scenario;

/// Writes in flight at once when a scenario loads many keys.
const WRITERS: usize = 32;
/// Long enough for the failure detector (1 s in the simulator) to see a change.
const DETECT: Duration = Duration::from_millis(1_500);

fn sloppy(consistency: Consistency) -> WriteOptions {
    WriteOptions {
        consistency,
        sloppy: true,
    }
}

async fn put_many(client: &Client, keys: usize) -> anyhow::Result<()> {
    stream::iter(0..keys)
        .map(|i| {
            client.put(
                format!("key-{i}"),
                format!("v{i}"),
                None,
                Consistency::Quorum,
            )
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The keys among `0..keys` that `node` does not hold with their value.
async fn missing_on(node: &str, keys: usize) -> anyhow::Result<Vec<usize>> {
    let client = Scenario::client(&[node]);
    let mut missing = Vec::new();
    for i in 0..keys {
        let state = client.inspect(format!("key-{i}")).await?;
        let value = Bytes::from(format!("v{i}"));
        if !state
            .siblings
            .iter()
            .any(|s| s.value.as_ref() == Some(&value))
        {
            missing.push(i);
        }
    }
    Ok(missing)
}

/// The live values `node` holds for `key`.
async fn values_on(node: &str, key: &str) -> anyhow::Result<Vec<Bytes>> {
    let state = Scenario::client(&[node]).inspect(key.to_owned()).await?;
    Ok(state.siblings.into_iter().filter_map(|s| s.value).collect())
}

async fn purged_total(nodes: Vec<String>) -> anyhow::Result<u64> {
    let mut total = 0;
    for node in nodes {
        let status = Scenario::client(&[&node]).status().await?;
        total += status.convergence.tombstones_purged;
    }
    Ok(total)
}

#[test]
fn a_node_that_was_down_gets_every_write_by_hinted_handoff() -> anyhow::Result<()> {
    // Goal: scenario 1. n3 is down while 1,000 keys are written at quorum; once it is
    // back, handoff alone (anti-entropy off, nothing read) puts every key on it within
    // a detection time and two handoff rounds (250 ms each in the simulator).
    let mut sim = Scenario::new(1, 3, |node| {
        node.anti_entropy_interval = Duration::ZERO;
        node.hint_window = Duration::from_secs(600);
        node.tombstone_grace = Duration::from_secs(700);
    })?;
    sim.wait(DETECT)?;
    sim.crash("n3");
    sim.wait(DETECT)?;
    sim.run(async { put_many(&Scenario::client(&["n1", "n2"]), 1_000).await })?;

    sim.restart("n3");
    sim.wait(DETECT + Duration::from_millis(500))?;
    let missing = sim.run(missing_on("n3", 1_000))?;
    assert!(
        missing.is_empty(),
        "n3 lacks {} keys: {missing:?}",
        missing.len()
    );
    let pending = sim.run(async { Ok(Scenario::client(&["n1"]).status().await?) })?;
    assert!(pending.convergence.hints_pending.is_empty(), "{pending:?}");
    assert!(pending.convergence.hints_delivered > 0, "{pending:?}");
    Ok(())
}

#[test]
fn a_node_that_was_down_converges_by_anti_entropy_alone() -> anyhow::Result<()> {
    // Goal: scenario 2. The same outage with hints switched off: hash-tree exchanges
    // alone bring n3 to the state of the others, without any client read.
    let mut sim = Scenario::new(2, 3, |node| node.hints = false)?;
    sim.wait(DETECT)?;
    sim.crash("n3");
    sim.wait(DETECT)?;
    sim.run(async { put_many(&Scenario::client(&["n1", "n2"]), 1_000).await })?;

    sim.restart("n3");
    sim.wait(Duration::from_secs(10))?;
    let missing = sim.run(missing_on("n3", 1_000))?;
    assert!(
        missing.is_empty(),
        "n3 lacks {} keys: {missing:?}",
        missing.len()
    );
    let status = sim.run(async { Ok(Scenario::client(&["n3"]).status().await?) })?;
    assert!(!status.convergence.anti_entropy.is_empty(), "{status:?}");
    assert!(status.convergence.anti_entropy_repaired > 0, "{status:?}");
    Ok(())
}

#[test]
fn a_key_deleted_while_a_replica_was_partitioned_stays_deleted_after_the_grace(
) -> anyhow::Result<()> {
    // Goal: scenario 3. A quorum delete reaches two homes while the third, holding the
    // old value, is cut off for longer than the tombstone grace and the hint window (its
    // hint expires). After heal the key reads as deleted through every node, read after
    // read, and the tombstone is purged only once every home holds it.
    let mut sim = Scenario::new(3, 3, |_| {})?;
    let key = "doomed";
    sim.wait(DETECT)?;
    sim.run(async move {
        Ok(Scenario::client(&["n1"])
            .put(key, "old", None, Consistency::All)
            .await?)
    })?;
    sim.isolate("n3");
    sim.wait(DETECT)?;
    sim.run(async move {
        let client = Scenario::client(&["n1"]);
        let read = client.get(key, Consistency::Quorum).await?;
        Ok(client
            .delete(key, Some(&read.context), Consistency::Quorum)
            .await?)
    })?;
    sim.wait(Duration::from_secs(12))?;
    let names = sim.names.clone();
    assert_eq!(
        sim.run(purged_total(names.clone()))?,
        0,
        "purged with a home cut off"
    );

    sim.heal();
    for round in 0..20 {
        let node = names[round % names.len()].clone();
        let read = sim.run(async move {
            Ok(Scenario::client(&[&node])
                .get(key, Consistency::Quorum)
                .await?)
        })?;
        assert!(read.values.is_empty(), "round {round}: {:?}", read.values);
        sim.wait(Duration::from_millis(500))?;
    }
    sim.wait(Duration::from_secs(10))?;
    assert!(
        sim.run(purged_total(names.clone()))? >= 1,
        "the tombstone was never purged"
    );
    for node in names {
        let values = sim.run(async move { values_on(&node, key).await })?;
        assert!(values.is_empty(), "the value came back: {values:?}");
    }
    Ok(())
}

#[test]
fn an_expired_hint_from_a_returning_holder_does_not_undo_a_purged_delete() -> anyhow::Result<()> {
    // Goal: scenario 4. A fallback takes a sloppy write for a partitioned home, then goes
    // down with the hint. The key is deleted on every home and its tombstone purged. When
    // the fallback returns its hint is past the window: it is dropped, not delivered, and
    // the key stays deleted.
    let mut sim = Scenario::new(4, 4, |_| {})?;
    let key = sim.key_with("n1", "n4");
    let missing_home = sim.homes(&key)[2].clone();
    sim.wait(DETECT)?;
    let k = key.clone();
    sim.run(async move {
        Ok(Scenario::client(&["n1"])
            .put(k, "v1", None, Consistency::All)
            .await?)
    })?;
    sim.isolate(&missing_home);
    sim.wait(DETECT)?;
    let k = key.clone();
    sim.run(async move {
        let client = Scenario::client(&["n1"]);
        let read = client.get(k.clone(), Consistency::Quorum).await?;
        Ok(client
            .put(k, "v2", Some(&read.context), sloppy(Consistency::All))
            .await?)
    })?;
    sim.crash("n4");
    sim.heal();
    sim.wait(DETECT)?;

    let k = key.clone();
    sim.run(async move {
        let client = Scenario::client(&["n1"]);
        let read = client.get(k.clone(), Consistency::All).await?;
        Ok(client
            .delete(k, Some(&read.context), Consistency::All)
            .await?)
    })?;
    sim.wait(Duration::from_secs(10))?;
    let homes = sim.homes(&key);
    assert!(
        sim.run(purged_total(homes.clone()))? >= 1,
        "the tombstone was never purged"
    );

    sim.restart("n4");
    sim.wait(Duration::from_secs(3))?;
    for node in homes {
        let k = key.clone();
        let values = sim.run(async move { values_on(&node, &k).await })?;
        assert!(
            values.is_empty(),
            "the hint brought a value back: {values:?}"
        );
    }
    let status = sim.run(async { Ok(Scenario::client(&["n4"]).status().await?) })?;
    assert!(status.convergence.hints_dropped >= 1, "{status:?}");
    Ok(())
}

#[test]
fn fallback_data_reaches_its_home_after_a_restart_without_traffic() -> anyhow::Result<()> {
    // Goal: scenario 5. A fallback holding a sloppy write for a cut-off home crashes and
    // restarts; with anti-entropy off and no client touching the key, its journal of
    // hints still gets the write to the home.
    let mut sim = Scenario::new(5, 4, |node| {
        node.anti_entropy_interval = Duration::ZERO;
        node.hint_window = Duration::from_secs(600);
        node.tombstone_grace = Duration::from_secs(700);
    })?;
    let key = sim.key_with("n1", "n4");
    let missing_home = sim.homes(&key)[2].clone();
    sim.wait(DETECT)?;
    sim.isolate(&missing_home);
    sim.wait(DETECT)?;
    let k = key.clone();
    sim.run(async move {
        Ok(Scenario::client(&["n1"])
            .put(k, "kept", None, sloppy(Consistency::All))
            .await?)
    })?;
    sim.crash("n4");
    sim.heal();
    sim.wait(DETECT)?;
    let before = sim.run({
        let (node, k) = (missing_home.clone(), key.clone());
        async move { values_on(&node, &k).await }
    })?;
    assert!(
        before.is_empty(),
        "the home got the write some other way: {before:?}"
    );

    sim.restart("n4");
    sim.wait(Duration::from_secs(3))?;
    let after = sim.run(async move { values_on(&missing_home, &key).await })?;
    assert_eq!(after, vec![Bytes::from("kept")]);
    Ok(())
}

/// One client's read-modify-write loop: each round reads at `one`, takes the union of
/// the elements in every sibling, adds its own, and writes it back sloppily at quorum.
/// Returns the elements whose write was acknowledged.
async fn add_elements(
    via: &str,
    key: &str,
    prefix: &str,
    rounds: usize,
) -> anyhow::Result<Vec<String>> {
    let client = Scenario::client(&[via]);
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        let Ok(read) = client.get(key.to_owned(), Consistency::One).await else {
            continue;
        };
        let mut elements = union(&read.values);
        let element = format!("{prefix}{round}");
        elements.insert(element.clone());
        let value = elements.into_iter().collect::<Vec<_>>().join(",");
        let written = client
            .put(
                key.to_owned(),
                value,
                Some(&read.context),
                sloppy(Consistency::Quorum),
            )
            .await;
        if written.is_ok() {
            acknowledged.push(element);
        }
    }
    Ok(acknowledged)
}

fn union(values: &[Bytes]) -> BTreeSet<String> {
    let text = values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    text.flat_map(|v| {
        v.split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })
    .collect()
}

#[test]
fn sloppy_read_modify_writes_on_both_sides_of_a_partition_keep_every_element() -> anyhow::Result<()>
{
    // Goal: scenario 6. Clients on both sides of a partition each add unique elements to
    // one key with sloppy quorums (one side has a single home and a fallback). After
    // heal, the siblings merged by a client hold every acknowledged element.
    let mut sim = Scenario::new(6, 5, |_| {})?;
    let key = sim.key_with("n1", "n4");
    let homes = sim.homes(&key);
    let fallbacks = sim.fallbacks(&key);
    let (lonely, others) = (homes[0].clone(), &homes[1..]);
    let side: Vec<&str> = vec![&lonely, &fallbacks[0]];
    let rest: Vec<&str> = others
        .iter()
        .chain(&fallbacks[1..])
        .map(String::as_str)
        .collect();
    sim.wait(DETECT)?;
    sim.split(&side, &rest);
    sim.wait(DETECT)?;

    let acknowledged: Rc<RefCell<Vec<String>>> = Rc::default();
    let (out, k, far) = (acknowledged.clone(), key.clone(), others[0].clone());
    sim.run(async move {
        let (a, b) = futures::join!(
            add_elements(&lonely, &k, "a", 10),
            add_elements(&far, &k, "b", 10)
        );
        let (a, b) = (a?, b?);
        anyhow::ensure!(
            !a.is_empty() && !b.is_empty(),
            "a side acknowledged nothing: {a:?} {b:?}"
        );
        out.borrow_mut().extend(a.into_iter().chain(b));
        Ok(())
    })?;
    sim.heal();
    sim.wait(Duration::from_secs(5))?;
    let read =
        sim.run(async move { Ok(Scenario::client(&["n2"]).get(key, Consistency::All).await?) })?;
    let merged = union(&read.values);
    let lost: Vec<String> = acknowledged
        .borrow()
        .iter()
        .filter(|e| !merged.contains(*e))
        .cloned()
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged elements lost: {lost:?}; read {merged:?}"
    );
    Ok(())
}

#[test]
fn a_strict_write_acknowledged_by_one_home_fails_even_when_fallbacks_could_take_it(
) -> anyhow::Result<()> {
    // Goal: scenario 7. At W = 2 with the other two homes cut off just before the write
    // (the coordinator still believes them up, so they time out), a strict write fails
    // with Timeout and one acknowledgement; the same write sloppy succeeds through the
    // fallbacks, so the fallbacks were there and were not counted.
    let mut sim = Scenario::new(7, 5, |_| {})?;
    let key = sim.key_with("n1", "n4");
    let homes = sim.homes(&key);
    sim.wait(DETECT)?;
    sim.split(&["n1"], &[&homes[1], &homes[2]]);
    let k = key.clone();
    let strict = sim.run(async move {
        Ok(Scenario::client(&["n1"])
            .put(k, "strict", None, Consistency::Two)
            .await)
    })?;
    assert!(
        matches!(
            strict,
            Err(Error::Timeout {
                required: 2,
                acknowledged: 1
            })
        ),
        "{strict:?}"
    );
    let relaxed = sim.run(async move {
        Ok(Scenario::client(&["n1"])
            .put(key, "sloppy", None, sloppy(Consistency::Two))
            .await)
    })?;
    assert!(relaxed.is_ok(), "{relaxed:?}");
    Ok(())
}

#[test]
fn a_replication_delivered_late_cannot_bring_back_a_purged_delete() -> anyhow::Result<()> {
    // Goal: the purge rule holds against the network, not only against the sender's
    // timeout. A home's replication of a write stalls on its link; the sender gives up
    // and hints, the hint expires, the key is deleted and its tombstone purged; then the
    // link delivers the stale replication. The receiver must refuse it as older than the
    // hint window, and the value must stay gone. (Found by a breaker session; before the
    // stamp on replication it came back on every replica.)
    let mut sim = Scenario::new(11, 3, |_| {})?;
    let key = "late".to_owned();
    let homes = sim.homes(&key);
    let (first, x, y) = (homes[0].clone(), homes[1].clone(), homes[2].clone());
    sim.wait(DETECT)?;
    sim.hold(&x, &y);
    let (k, via) = (key.clone(), x.clone());
    sim.run(async move {
        Ok(Scenario::client(&[&via])
            .put(k, "v", None, Consistency::Two)
            .await?)
    })?;
    let (k, via) = (key.clone(), first.clone());
    sim.run(async move {
        let client = Scenario::client(&[&via]);
        let read = client.get(k.clone(), Consistency::Quorum).await?;
        anyhow::ensure!(read.values == vec![Bytes::from("v")], "{read:?}");
        Ok(client
            .delete(k, Some(&read.context), Consistency::All)
            .await?)
    })?;
    sim.wait(Duration::from_secs(10))?;
    let names = sim.names.clone();
    assert!(
        sim.run(purged_total(names.clone()))? >= 1,
        "the tombstone was never purged"
    );

    sim.release(&x, &y);
    sim.wait(Duration::from_secs(5))?;
    for node in names {
        let k = key.clone();
        let values = sim.run(async move { values_on(&node, &k).await })?;
        assert!(
            values.is_empty(),
            "the stale replication brought back {values:?}"
        );
    }
    let read =
        sim.run(async move { Ok(Scenario::client(&["n1"]).get(key, Consistency::All).await?) })?;
    assert!(read.values.is_empty(), "{:?}", read.values);
    Ok(())
}
