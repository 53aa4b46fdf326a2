//! The single-key and cluster commands: parse, call the library, print.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use quorumkv_client::{Client, ClientConfig};
use tokio::io::AsyncReadExt;

use crate::args::{DeleteArgs, GetArgs, GlobalArgs, PutArgs};
use crate::exit;
use crate::output;

/// The VALUE that means "read the value from standard input".
const STDIN_VALUE: &str = "-";

/// Compaction copies a node's live data: on a large node that takes minutes, far longer
/// than any single-key request, and giving up early would only hide the outcome.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn get(client: &Client, args: &GetArgs) -> anyhow::Result<u8> {
    let result = client.get(args.key.clone(), args.consistency).await?;

    // The context is printed even for a missing key: it covers the tombstones, and a
    // write that passes it replaces them instead of adding a sibling beside them.
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", output::get_json(&result))?;
    } else {
        output::write_values(&mut stdout, &result.values)?;
    }
    stdout.flush()?;
    if args.show_context {
        eprintln!("context: {}", result.context);
    }

    if !result.is_found() {
        output::complain(&format!("not found: {}", args.key));
        return Ok(exit::NOT_FOUND);
    }
    Ok(exit::OK)
}

pub async fn put(client: &Client, args: &PutArgs) -> anyhow::Result<u8> {
    let value = if args.value == STDIN_VALUE {
        read_stdin().await?
    } else {
        Bytes::from(args.value.clone())
    };
    let write = &args.write;
    let key = args.key.clone();
    client
        .put(key, value, write.context.as_ref(), write.options())
        .await?;
    Ok(exit::OK)
}

/// Without `--context`, deletes what a read at the same level sees: a tombstone that
/// covers nothing would leave every value in place, which no one asking to delete wants.
pub async fn delete(client: &Client, args: &DeleteArgs) -> anyhow::Result<u8> {
    let write = &args.write;
    let context = match &write.context {
        Some(context) => context.clone(),
        None => {
            let level = crate::import::read_level(write.consistency);
            client.get(args.key.clone(), level).await?.context
        }
    };
    client
        .delete(args.key.clone(), Some(&context), write.options())
        .await?;
    Ok(exit::OK)
}

/// The members as one node sees them, then each node's own hints and anti-entropy.
pub async fn status(client: &Client, global: &GlobalArgs) -> anyhow::Result<u8> {
    let report = client.status().await?;
    output::print(&output::status(&report))?;

    let mut nodes = Vec::new();
    for member in &report.members {
        let mut config = crate::client_config(global);
        config.nodes = vec![member.address.clone()];
        let own = match Client::new(config) {
            Ok(one) => one.status().await.ok().map(|r| r.convergence),
            Err(_) => None,
        };
        nodes.push((member.node.clone(), own));
    }
    output::print(&format!("\n{}", output::convergence(&nodes)))?;
    Ok(exit::OK)
}

pub async fn ring(client: &Client, key: Option<&str>) -> anyhow::Result<u8> {
    let report = client
        .ring(key.map(|key| Bytes::from(key.to_owned())))
        .await?;
    let text = match key {
        Some(key) => output::ring_for_key(key, &report)
            .ok_or_else(|| anyhow!("the node's ring report names no partition for the key"))?,
        None => output::ring_table(&report),
    };
    output::print(&text)?;
    Ok(exit::OK)
}

/// Shows one node's own copy of a key.
pub async fn inspect(
    client: &Client,
    global: &GlobalArgs,
    key: &str,
    node: &str,
) -> anyhow::Result<u8> {
    let Some(config) = config_for_node(client, global, node).await? else {
        return Ok(exit::USAGE);
    };
    let state = Client::new(config)?.inspect(key.to_owned()).await?;
    output::print(&output::local_state(key, &state))?;
    Ok(exit::OK)
}

/// Asks one node to compact its storage, and waits however long that takes.
pub async fn compact(client: &Client, global: &GlobalArgs, node: &str) -> anyhow::Result<u8> {
    let Some(mut config) = config_for_node(client, global, node).await? else {
        return Ok(exit::USAGE);
    };
    config.request_timeout = config.request_timeout.max(COMPACT_TIMEOUT);
    let report = Client::new(config)?.compact().await?;
    output::print(&format!("{}\n", output::compact_report(&report)))?;
    Ok(exit::OK)
}

/// A client config that reaches only `node`, whose address `status` tells; `None` (after
/// saying why) when no member has that id.
async fn config_for_node(
    client: &Client,
    global: &GlobalArgs,
    node: &str,
) -> anyhow::Result<Option<ClientConfig>> {
    let report = client.status().await?;
    let member = report.members.iter().find(|member| member.node.0 == node);
    let Some(member) = member else {
        let known: Vec<&str> = report.members.iter().map(|m| m.node.0.as_str()).collect();
        output::complain(&format!("no node {node}; members: {}", known.join(", ")));
        return Ok(None);
    };

    let mut config = crate::client_config(global);
    config.nodes = vec![member.address.clone()];
    Ok(Some(config))
}

async fn read_stdin() -> anyhow::Result<Bytes> {
    let mut value = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut value)
        .await
        .context("cannot read the value from standard input")?;
    Ok(Bytes::from(value))
}
