//! Durability on real processes: every acknowledged write survives SIGKILL of the whole
//! cluster, and a node whose data dir is wiped never hides later writes behind versions it
//! issued before the wipe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::{Client, Consistency};
use quorumkv_tests::Cluster;

/// Writer tasks of the load; each writes its own keys, so every key has one value.
const WRITERS: usize = 16;
/// How long the load runs before every node is killed under it.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1_500);

/// Writes fresh keys at quorum until told to stop; returns the keys it saw acknowledged.
async fn write_until_stopped(client: Client, writer: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{writer}-{sequence}");
        sequence += 1;
        let written = client
            .put(key.clone(), key.clone(), None, Consistency::Quorum)
            .await;
        match written {
            Ok(()) => acknowledged.push(key),
            // Once the nodes are gone every write fails; back off rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    acknowledged
}

#[tokio::test]
async fn every_acknowledged_write_survives_sigkill_of_every_node_at_once() -> anyhow::Result<()> {
    // Goal: with the default `sync = always`, a write is acknowledged only once two of
    // three replicas have it on disk; killing all three mid-load loses none of those.
    let mut cluster = Cluster::start(3, 3).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let task = write_until_stopped(cluster.client()?, writer, stop.clone());
        writers.push(tokio::spawn(task));
    }
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    cluster.kill_all()?;
    // Writes in flight at the kill fail; give them a moment to say so before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await?);
    }
    assert!(
        acknowledged.len() > 100,
        "the load acknowledged only {} writes before the kill",
        acknowledged.len()
    );

    cluster.restart_all().await?;
    let client = cluster.client()?;
    let mut missing = Vec::new();
    for key in &acknowledged {
        let read = client.get(key.clone(), Consistency::All).await?;
        if read.values != vec![Bytes::from(key.clone())] {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(())
}

#[tokio::test]
async fn a_node_with_a_wiped_data_dir_never_hides_writes_it_coordinates_afterwards(
) -> anyhow::Result<()> {
    // Goal: after a wipe, the node's new writes carry dots of a new epoch. Were it to count
    // its dots from one again, the other replicas would take its new writes for ones they
    // have already seen and drop them.
    let mut cluster = Cluster::start(3, 3).await?;
    let through_n1 = cluster.client_of(0)?;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for round in 0..3 {
        for key in &keys {
            let read = through_n1.get(key.clone(), Consistency::Quorum).await?;
            let value = format!("{key}-before-{round}");
            let context = Some(&read.context).filter(|_| read.is_found());
            through_n1
                .put(key.clone(), value, context, Consistency::All)
                .await?;
        }
    }

    cluster.kill(0).await?;
    cluster.wipe(0)?;
    cluster.restart(0).await?;

    // Blind writes through the wiped node: nothing local to build on, so each must come
    // back as a sibling of the value written before the wipe, never vanish.
    for key in &keys {
        let value = format!("{key}-blind");
        through_n1
            .put(key.clone(), value, None, Consistency::All)
            .await?;
    }
    for key in &keys {
        let read = cluster.client()?.get(key.clone(), Consistency::All).await?;
        let mut values = read.values.clone();
        values.sort();
        let expected = vec![
            Bytes::from(format!("{key}-before-2")),
            Bytes::from(format!("{key}-blind")),
        ];
        assert_eq!(values, expected, "{key}");

        // A write with the context of that read replaces both siblings everywhere.
        let value = format!("{key}-after");
        through_n1
            .put(
                key.clone(),
                value.clone(),
                Some(&read.context),
                Consistency::All,
            )
            .await?;
        let read = cluster.client()?.get(key.clone(), Consistency::All).await?;
        assert_eq!(read.values, vec![Bytes::from(value)], "{key}");
    }
    Ok(())
}
