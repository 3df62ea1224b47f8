//! Length-prefixed framing of signaling messages on a byte stream.
//!
//! A frame is a 4-byte big-endian payload length, then that many bytes of
//! postcard-encoded message. Lengths above [`MAX_FRAME_LEN`] are refused as
//! soon as the prefix arrives, before anything is buffered, so a peer cannot
//! make us hold more than one maximum frame.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest frame payload either side sends or accepts, in bytes.
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Why bytes are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes, or a
    /// message would encode to more.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced or encoded length.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// A zero-length frame: no message is empty.
    #[error("empty frame")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[source] postcard::Error),
    /// The payload holds a valid message followed by extra bytes.
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The decoder already failed; the stream cannot be resynchronised.
    #[error("the stream already failed to decode")]
    Poisoned,
}

/// Encodes `message` as one frame (prefix and payload), appended to `out`.
pub fn encode_frame<M: Serialize>(message: &M, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload = postcard::to_allocvec(message).map_err(FrameError::Malformed)?;
    let len = payload.len();
    let prefix = match u32::try_from(len) {
        Ok(prefix) if len <= MAX_FRAME_LEN => prefix,
        _ => {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
    };
    out.reserve(LENGTH_PREFIX_LEN + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Encodes `message` as one frame in a new buffer.
pub fn frame_to_vec<M: Serialize>(message: &M) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame(message, &mut out)?;
    Ok(out)
}

/// Decodes one whole payload (without its prefix) as a message; extra bytes
/// after the message are an error.
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let (message, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Ok(message)
}

/// The protocol version of a handshake payload (a `Login` or `LoginResult`),
/// read without decoding the rest, so that a peer of another version gets a
/// clear "unsupported version" instead of a decode error.
pub fn handshake_version(payload: &[u8]) -> Result<u16, FrameError> {
    #[derive(serde::Deserialize)]
    enum Handshake {
        First(u16),
    }
    // Variant 0's first field of both handshake messages is the version; serde
    // reads a single-field tuple variant as exactly that prefix.
    let (Handshake::First(version), _) =
        postcard::take_from_bytes::<Handshake>(payload).map_err(FrameError::Malformed)?;
    Ok(version)
}

/// Splits a byte stream into frame payloads.
///
/// Feed it whatever arrives with [`FrameDecoder::push`], then take frames
/// with [`FrameDecoder::next_frame`] until it returns `Ok(None)`. After an
/// error it stays failed: a framing error means the stream is out of step and
/// the connection must be closed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    read: usize,
    failed: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.read > 0 && self.read == self.buffer.len() {
            self.buffer.clear();
            self.read = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.read
    }

    /// The next whole frame's payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.failed {
            return Err(FrameError::Poisoned);
        }
        let pending = &self.buffer[self.read..];
        let Some(prefix) = pending.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME_LEN {
            self.failed = true;
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if len == 0 {
            self.failed = true;
            return Err(FrameError::Empty);
        }
        let Some(payload) = pending.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.read += LENGTH_PREFIX_LEN + len;
        if self.read == self.buffer.len() {
            self.buffer.clear();
            self.read = 0;
        } else if self.read > MAX_FRAME_LEN {
            self.buffer.drain(..self.read);
            self.read = 0;
        }
        Ok(Some(payload))
    }

    /// The next whole frame decoded as a message.
    pub fn next_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(payload) => decode_payload(&payload).map(Some).inspect_err(|_| {
                self.failed = true;
            }),
        }
    }

    /// Call when the stream ends: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMessage, PROTOCOL_VERSION, RequestId, ServerMessage};
    use calling_api::{ErrorCode, UserId};

    fn login() -> ClientMessage {
        ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: 1_400_000_000,
            user_id: UserId::new("alice").unwrap(),
            user_sig: "sig".into(),
            device_id: None,
            media_encryption: crate::MediaEncryption::None,
        }
    }

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let messages = [
            login(),
            ClientMessage::Hangup {
                request_id: RequestId(7),
            },
            ClientMessage::Ping { nonce: u64::MAX },
        ];
        let mut stream = Vec::new();
        for message in &messages {
            encode_frame(message, &mut stream).unwrap();
        }
        for chunk in 1..stream.len() {
            let mut decoder = FrameDecoder::new();
            let mut decoded = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                while let Some(message) = decoder.next_message::<ClientMessage>().unwrap() {
                    decoded.push(message);
                }
            }
            assert_eq!(decoded, messages);
            decoder.finish().unwrap();
        }
    }

    #[test]
    fn oversized_prefix_fails_before_buffering() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert_eq!(decoder.next_frame(), Err(FrameError::Poisoned));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let message = ClientMessage::Login {
            protocol_version: 1,
            sdk_app_id: 1,
            user_id: UserId::new("a").unwrap(),
            user_sig: "x".repeat(MAX_FRAME_LEN).into(),
            device_id: None,
            media_encryption: crate::MediaEncryption::None,
        };
        let mut out = vec![9];
        assert!(matches!(
            encode_frame(&message, &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(out, [9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn truncated_stream_is_reported() {
        let frame = frame_to_vec(&login()).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.push(&frame[..frame.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                buffered: frame.len() - 1
            })
        );
    }

    #[test]
    fn empty_frames_and_trailing_bytes_are_errors() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 0]);
        assert_eq!(decoder.next_frame(), Err(FrameError::Empty));

        let mut payload = postcard::to_allocvec(&ClientMessage::Ping { nonce: 1 }).unwrap();
        payload.push(0);
        assert_eq!(
            decode_payload::<ClientMessage>(&payload),
            Err(FrameError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn handshake_version_reads_only_the_prefix() {
        let payload = postcard::to_allocvec(&login()).unwrap();
        assert_eq!(handshake_version(&payload), Ok(PROTOCOL_VERSION));
        let reply = postcard::to_allocvec(&ServerMessage::LoginResult {
            protocol_version: 9,
            code: ErrorCode::OK,
            message: String::new(),
        })
        .unwrap();
        assert_eq!(handshake_version(&reply), Ok(9));
        // A future login with fields we cannot parse still shows its version.
        assert_eq!(handshake_version(&[0, 42, 0xff, 0xff, 0xff]), Ok(42));
        assert!(
            handshake_version(&[1, 0]).is_err(),
            "not a handshake variant"
        );
    }
}
