use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use signaling_proto::FrameDecoder;
use signaling_proto::frame::encode_frame;

use crate::TransportError;

/// The sending half of the signaling stream: whole frames of `M`.
#[derive(Debug)]
pub struct FramedSend<M> {
    stream: quinn::SendStream,
    buffer: Vec<u8>,
    _message: PhantomData<fn(M)>,
}

impl<M: Serialize> FramedSend<M> {
    /// Wraps a QUIC send stream.
    pub fn new(stream: quinn::SendStream) -> Self {
        Self {
            stream,
            buffer: Vec::with_capacity(256),
            _message: PhantomData,
        }
    }

    /// Writes one message as one frame.
    pub async fn send(&mut self, message: &M) -> Result<(), TransportError> {
        self.buffer.clear();
        encode_frame(message, &mut self.buffer)?;
        self.stream.write_all(&self.buffer).await?;
        Ok(())
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) {
        // Already finished or reset: nothing left to do.
        let _ = self.stream.finish();
    }

    /// Ends the stream and waits, at most `limit`, until the peer has
    /// acknowledged everything written: call before closing the connection,
    /// which would otherwise discard the last frames (a login refusal, a
    /// kick, a shutdown notice).
    pub async fn finish_and_flush(&mut self, limit: std::time::Duration) {
        self.finish();
        let _ = tokio::time::timeout(limit, self.stream.stopped()).await;
    }
}

/// The receiving half of the signaling stream: whole frames of `M`.
#[derive(Debug)]
pub struct FramedRecv<M> {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
    chunk: Box<[u8]>,
    _message: PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned> FramedRecv<M> {
    /// Wraps a QUIC receive stream.
    pub fn new(stream: quinn::RecvStream) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(),
            chunk: vec![0; 4096].into_boxed_slice(),
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream
    /// cleanly between frames. Cancel-safe: a message is never half-taken.
    pub async fn recv(&mut self) -> Result<Option<M>, TransportError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            match self.stream.read(&mut self.chunk).await? {
                Some(read) => self.decoder.push(&self.chunk[..read]),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// The next raw frame payload (the handshake reads the version before
    /// decoding the rest).
    pub async fn recv_payload(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        loop {
            if let Some(payload) = self.decoder.next_frame()? {
                return Ok(Some(payload));
            }
            match self.stream.read(&mut self.chunk).await? {
                Some(read) => self.decoder.push(&self.chunk[..read]),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}
