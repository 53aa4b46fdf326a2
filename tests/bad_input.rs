//! What a misbehaving client sends is answered with an error, and the node keeps serving
//! everyone else.

use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::codec::{decode, encode};
use quorumkv_client::connection::framed;
use quorumkv_client::protocol::{
    Context, Envelope, ErrorReply, Hello, HelloReply, Response, Role, PROTOCOL_VERSION,
    UNKNOWN_REQUEST_ID,
};
use quorumkv_client::{Consistency, Error};
use quorumkv_tests::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn hello(cluster: &str) -> Bytes {
    encode(&Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        role: Role::Client,
    })
}

/// Opens a raw connection and completes the hello.
async fn greeted(address: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(address).await?;
    let body = hello("quorumkv");
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(&body).await?;
    let reply: HelloReply = decode(&read_frame(&mut stream).await?)?;
    assert!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    Ok(stream)
}

async fn read_frame(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut header)).await??;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut body)).await??;
    Ok(body)
}

/// The error a node sent about a frame it could not read, then the connection's end.
async fn refusal(stream: &mut TcpStream) -> anyhow::Result<ErrorReply> {
    let envelope: Envelope<Response> = decode(&read_frame(stream).await?)?;
    assert_eq!(envelope.id, UNKNOWN_REQUEST_ID);
    let mut rest = Vec::new();
    tokio::time::timeout(READ_TIMEOUT, stream.read_to_end(&mut rest)).await??;
    match envelope.body {
        Response::Error(reply) => Ok(reply),
        other => anyhow::bail!("expected an error, got {other:?}"),
    }
}

async fn still_serving(cluster: &Cluster) -> anyhow::Result<()> {
    let client = cluster.client_of(0)?;
    client.put("alive", "yes", None, Consistency::All).await?;
    let read = client.get("alive", Consistency::All).await?;
    assert_eq!(read.values, vec![Bytes::from_static(b"yes")]);
    Ok(())
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_the_node_keeps_serving() -> anyhow::Result<()> {
    // Goal: a header announcing 1 GiB gets a Rejected reply naming the limit, the
    // connection closes, and other clients are unaffected.
    let cluster = Cluster::start(3, 3).await?;
    let mut stream = greeted(&cluster.addresses[0]).await?;
    stream.write_all(&(1u32 << 30).to_be_bytes()).await?;
    stream.write_all(&[0u8; 4096]).await?;

    let reply = refusal(&mut stream).await?;
    let ErrorReply::Rejected { reason } = reply else {
        anyhow::bail!("{reply:?}")
    };
    assert!(reason.contains("limit"), "{reason}");
    still_serving(&cluster).await
}

#[tokio::test]
async fn garbage_after_the_hello_gets_a_protocol_error() -> anyhow::Result<()> {
    // Goal: a well-framed body that is not MessagePack of a request is reported as a
    // protocol error, and the node keeps serving.
    let cluster = Cluster::start(3, 3).await?;
    let mut stream = greeted(&cluster.addresses[1]).await?;
    let garbage = b"\xc1\xc1 this is not messagepack";
    stream
        .write_all(&(garbage.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(garbage).await?;

    let reply = refusal(&mut stream).await?;
    assert!(matches!(reply, ErrorReply::Protocol { .. }), "{reply:?}");
    still_serving(&cluster).await
}

#[tokio::test]
async fn garbage_instead_of_a_hello_is_refused() -> anyhow::Result<()> {
    // Goal: random bytes where the hello belongs close the connection with a refusal;
    // a hello for another cluster is refused with a reason naming the cluster.
    let cluster = Cluster::start(3, 3).await?;
    let mut stream = TcpStream::connect(&cluster.addresses[2]).await?;
    stream.write_all(b"\x00\x00\x00\x05hello").await?;
    let reply: HelloReply = decode(&read_frame(&mut stream).await?)?;
    assert!(matches!(reply, HelloReply::Refused { .. }), "{reply:?}");

    let stream = TcpStream::connect(&cluster.addresses[2]).await?;
    let (mut reader, mut writer) = framed(stream, 1 << 20);
    use futures_like::*;
    send(&mut writer, hello("someone-else")).await?;
    let reply: HelloReply = decode(&next(&mut reader).await?)?;
    let HelloReply::Refused { reason } = reply else {
        anyhow::bail!("{reply:?}")
    };
    assert!(reason.contains("someone-else"), "{reason}");
    still_serving(&cluster).await
}

#[tokio::test]
async fn a_malformed_context_is_rejected_and_nothing_is_written() -> anyhow::Result<()> {
    // Goal: a context that does not decode is a clear Rejected error, not a blind write.
    let cluster = Cluster::start(3, 3).await?;
    let client = cluster.client()?;
    let bogus = Context(Bytes::from_static(b"\x92\xff\xff not a context"));
    let error = client
        .put("k", "v", Some(&bogus), Consistency::Quorum)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Rejected { .. }), "{error}");
    assert!(!client.get("k", Consistency::All).await?.is_found());
    Ok(())
}

#[tokio::test]
async fn a_forged_context_cannot_exhaust_a_coordinators_dots() -> anyhow::Result<()> {
    // Goal: a context claiming 2^64-1 writes by the coordinator is refused (it would wrap
    // the next dot to zero and make every later write vanish), and honest writes go on.
    let cluster = Cluster::start(3, 3).await?;
    let client = cluster.client_of(0)?;
    client.put("victim", "v1", None, Consistency::All).await?;
    let read = client.get("victim", Consistency::All).await?;

    let clock = quorumkv_node::versions::VersionVector::decode(&read.context.0)?;
    let forged: Vec<_> = clock
        .iter()
        .map(|(actor, _)| (actor.clone(), u64::MAX))
        .collect();
    let forged = Context(Bytes::from(rmp_serde::to_vec(&forged)?));
    let error = client
        .put("victim", "v2", Some(&forged), Consistency::All)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Rejected { .. }), "{error}");

    client
        .put("victim", "v3", Some(&read.context), Consistency::All)
        .await?;
    let read = cluster
        .client_of(2)?
        .get("victim", Consistency::All)
        .await?;
    assert_eq!(read.values, vec![Bytes::from_static(b"v3")]);
    Ok(())
}

#[tokio::test]
async fn a_write_that_would_outgrow_the_frame_limit_is_refused() -> anyhow::Result<()> {
    // Goal: siblings that together could no longer be replicated or returned in one frame
    // are refused up front with a clear reason; the key stays readable everywhere.
    let cluster = Cluster::start(3, 3).await?;
    let client = cluster.client()?;
    let big = Bytes::from(vec![7u8; 9 * 1024 * 1024]);
    client
        .put("big", big.clone(), None, Consistency::All)
        .await?;

    let error = client
        .put("big", big.clone(), None, Consistency::All)
        .await
        .unwrap_err();
    let Error::Rejected { reason } = error else {
        anyhow::bail!("{error}")
    };
    assert!(reason.contains("frame limit"), "{reason}");
    let read = client.get("big", Consistency::All).await?;
    assert_eq!(read.values, vec![big]);
    still_serving(&cluster).await
}

/// Tiny helpers over the framed halves, to keep the tests free of sink and stream traits.
mod futures_like {
    use bytes::{Bytes, BytesMut};
    use quorumkv_client::connection::{FrameReader, FrameWriter};
    use tokio::net::TcpStream;

    pub async fn send(writer: &mut FrameWriter<TcpStream>, frame: Bytes) -> anyhow::Result<()> {
        use futures::SinkExt;
        Ok(writer.send(frame).await?)
    }

    pub async fn next(reader: &mut FrameReader<TcpStream>) -> anyhow::Result<BytesMut> {
        use futures::StreamExt;
        Ok(reader
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("connection closed"))??)
    }
}
