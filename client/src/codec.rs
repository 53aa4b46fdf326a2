//! Frames: a 4-byte big-endian length, then a MessagePack body.
//!
//! The length prefix is read before any buffer is sized, so a frame above the limit is
//! refused without allocating for it (tokio-util's length-delimited codec checks the
//! header first). What is too large or does not decode becomes an error the caller can
//! turn into a reply; nothing here panics on what a peer sends.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::LengthDelimitedCodec;

use crate::error::Error;

/// 16 MiB: room for large values and their siblings, small enough that a hostile or
/// broken sender cannot make a node allocate without bound.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The framing shared by clients and peers.
pub fn frame_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Encodes a message body. Positional (compact) MessagePack: the hello's protocol
/// version, not field names, is what keeps both ends in step.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    let body = rmp_serde::to_vec(message).expect("protocol types always serialize");
    Bytes::from(body)
}

/// Decodes a message body, turning malformed input into a protocol error.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(frame).map_err(|e| Error::Protocol {
        reason: format!("malformed MessagePack frame: {e}"),
    })
}

/// True when a codec error means the frame header announced more than the limit.
pub fn is_oversized(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::InvalidData
        && error
            .get_ref()
            .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Envelope, Request};
    use crate::Consistency;
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    #[test]
    fn requests_round_trip_through_messagepack() {
        // Goal: what one end encodes the other decodes unchanged.
        let request = Envelope {
            id: 7,
            body: Request::Get {
                key: Bytes::from_static(b"k"),
                read: Consistency::Quorum,
            },
        };
        let decoded: Envelope<Request> = decode(&encode(&request)).unwrap();
        assert_eq!(decoded.id, 7);
        assert!(matches!(
            decoded.body,
            Request::Get {
                read: Consistency::Quorum,
                ..
            }
        ));
    }

    #[test]
    fn garbage_bytes_are_a_protocol_error_not_a_panic() {
        // Goal: malformed input from a peer is reported, never trusted.
        for garbage in [&b""[..], b"\xff\xff\xff", b"\x93\x01", b"hello world"] {
            let result: Result<Envelope<Request>, _> = decode(garbage);
            assert!(matches!(result, Err(Error::Protocol { .. })));
        }
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        // Goal: a header announcing more than the limit fails before the body arrives.
        let header = (1_000_000u32).to_be_bytes();
        let mut frames = FramedRead::new(&header[..], frame_codec(1024));
        let error = frames.next().await.unwrap().unwrap_err();
        assert!(is_oversized(&error), "{error}");
    }
}
