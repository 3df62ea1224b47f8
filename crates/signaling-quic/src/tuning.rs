//! Transport settings, tuned for signaling plus real-time audio.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Our ALPN: a peer that does not speak it fails the handshake.
pub const ALPN: &[u8] = b"opencalling/1";

/// How long a silent connection lives: long enough to ride out a short
/// network loss, short enough to free a dead client's state.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12);

/// Keep-alive period: well inside the idle timeout and NAT bindings.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The settings both ends use (quinn's defaults, changed as the design
/// brief says):
///
/// - idle timeout 12 s (default 30 s) and keep-alive every 5 s (default off);
/// - at most 2 bidirectional streams (one is used) and no unidirectional ones
///   (default 100 / 100);
/// - stream window 64 KiB, connection window 256 KiB, send window 256 KiB
///   (signaling frames are at most 16 KiB);
/// - datagram send buffer 16 KiB (default 1 MiB, seconds of stale audio:
///   quinn drops the oldest datagrams past it) and receive buffer 64 KiB.
pub fn transport_config() -> Arc<TransportConfig> {
    Arc::new(tuned())
}

/// Unidirectional streams a server lets each client open: HTTP/3 needs 3
/// (its control stream, QPACK's encoder and decoder) allowed from the
/// handshake on, or a browser gives up. A native client opens none, and the
/// server reads them only on a browser's connection; the connection window
/// bounds what they can hold.
pub const SERVER_UNI_STREAMS: u32 = 3;

/// [`transport_config`], with [`SERVER_UNI_STREAMS`] unidirectional streams
/// for the client: the server's.
pub fn server_transport_config() -> Arc<TransportConfig> {
    let mut config = tuned();
    config.max_concurrent_uni_streams(VarInt::from_u32(SERVER_UNI_STREAMS));
    Arc::new(config)
}

fn tuned() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_bidi_streams(VarInt::from_u32(2))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .receive_window(VarInt::from_u32(256 * 1024))
        .send_window(256 * 1024)
        .datagram_send_buffer_size(16 * 1024)
        .datagram_receive_buffer_size(Some(64 * 1024));
    config
}
