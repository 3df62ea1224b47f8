//! Whole messages over a byte stream, as `signaling-proto` frames them.

use std::marker::PhantomData;
use std::time::Duration;

use calling_api::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use signaling_proto::FrameDecoder;
use signaling_proto::frame::encode_frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The writing half of a signaling stream.
pub trait SignalWrite: AsyncWrite + Unpin + Send + 'static {
    /// Completes once the peer has received everything written up to the
    /// end of the stream (after a shutdown), or can no longer receive it.
    fn delivered(&mut self) -> impl Future<Output = ()> + Send;
}

/// Why a framed stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer sent bytes that are not valid frames or messages.
    #[error("protocol: {0}")]
    Protocol(#[from] signaling_proto::FrameError),
    /// The stream or the link under it failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl LinkError {
    /// The error code an application should see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Protocol(_) => ErrorCode::PROTOCOL_ERROR,
            Self::Io(_) => ErrorCode::CONNECTION_LOST,
        }
    }
}

/// The sending half of the signaling stream: whole frames of `M`.
#[derive(Debug)]
pub struct FramedSend<W, M> {
    writer: W,
    buffer: Vec<u8>,
    _message: PhantomData<fn(M)>,
}

impl<W: SignalWrite, M: Serialize> FramedSend<W, M> {
    /// Frames messages onto `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            buffer: Vec::with_capacity(256),
            _message: PhantomData,
        }
    }

    /// The same sender over `map(writer)`: for wrapping the writer in
    /// another type (see [`crate::either`]).
    pub fn map_writer<V: SignalWrite>(self, map: impl FnOnce(W) -> V) -> FramedSend<V, M> {
        FramedSend {
            writer: map(self.writer),
            buffer: self.buffer,
            _message: PhantomData,
        }
    }

    /// Writes one message as one frame.
    pub async fn send(&mut self, message: &M) -> Result<(), LinkError> {
        self.buffer.clear();
        encode_frame(message, &mut self.buffer)?;
        self.writer.write_all(&self.buffer).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Ends the stream after what was written.
    pub async fn finish(&mut self) {
        // Already finished or reset: nothing left to do.
        let _ = self.writer.shutdown().await;
    }

    /// Ends the stream and waits, at most `limit`, until the peer has
    /// received everything written: call before closing the link, which
    /// would otherwise discard the last frames (a login refusal, a kick, a
    /// shutdown notice).
    pub async fn finish_and_flush(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            self.finish().await;
            self.writer.delivered().await;
        })
        .await;
    }

    /// The stream itself.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.writer
    }
}

/// The receiving half of the signaling stream: whole frames of `M`.
#[derive(Debug)]
pub struct FramedRecv<R, M> {
    reader: R,
    decoder: FrameDecoder,
    chunk: Box<[u8]>,
    _message: PhantomData<fn() -> M>,
}

impl<R: AsyncRead + Unpin, M: DeserializeOwned> FramedRecv<R, M> {
    /// Reads frames of `M` from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            decoder: FrameDecoder::new(),
            chunk: vec![0; 4096].into_boxed_slice(),
            _message: PhantomData,
        }
    }

    /// The same receiver, what it has buffered included, over
    /// `map(reader)` (see [`crate::either`]).
    pub fn map_reader<Q: AsyncRead + Unpin>(self, map: impl FnOnce(R) -> Q) -> FramedRecv<Q, M> {
        FramedRecv {
            reader: map(self.reader),
            decoder: self.decoder,
            chunk: self.chunk,
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream
    /// cleanly between frames. Cancel-safe: a message is never half-taken.
    pub async fn recv(&mut self) -> Result<Option<M>, LinkError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next raw frame payload (the login check reads the version before
    /// decoding the rest). Cancel-safe like [`FramedRecv::recv`].
    pub async fn recv_payload(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            if let Some(payload) = self.decoder.next_frame()? {
                return Ok(Some(payload));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads what the stream has into the decoder; `false` at a clean end.
    async fn fill(&mut self) -> Result<bool, LinkError> {
        match self.reader.read(&mut self.chunk).await? {
            0 => {
                self.decoder.finish()?;
                Ok(false)
            }
            read => {
                self.decoder.push(&self.chunk[..read]);
                Ok(true)
            }
        }
    }
}
