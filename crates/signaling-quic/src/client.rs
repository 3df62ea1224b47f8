//! The client side: connecting to a server, trusting its certificate as
//! a [`ServerTrust`] says.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use signaling_proto::{ClientMessage, ServerMessage};
use signaling_tls::{ServerTrust, tls_client_config};

use signaling_link::{FramedRecv, FramedSend, Link};

use crate::{Quic, QuicMedia, QuicSend, TransportError, transport_config};

/// A connected client: the connection and its signaling stream.
#[derive(Debug)]
pub struct ClientConnection {
    /// The QUIC connection (datagrams, stats, close).
    pub connection: quinn::Connection,
    /// Frames to the server.
    pub send: FramedSend<QuicSend, ClientMessage>,
    /// Frames from the server.
    pub recv: FramedRecv<quinn::RecvStream, ServerMessage>,
    /// Keeps the client's UDP socket alive as long as the connection.
    pub endpoint: quinn::Endpoint,
}

impl ClientConnection {
    /// The connection as the transport seam sees it, and the endpoint to
    /// keep as long as it is open.
    pub fn into_link(self) -> (Link<Quic, ServerMessage, ClientMessage>, quinn::Endpoint) {
        let link = Link {
            media: QuicMedia(self.connection),
            send: self.send,
            recv: self.recv,
        };
        (link, self.endpoint)
    }
}

/// Connects to the server at `addr`, presenting `server_name` for TLS, and
/// opens the signaling stream.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    trust: &ServerTrust,
) -> Result<ClientConnection, TransportError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(trust)?);
    connect_on(&endpoint, addr, server_name).await
}

/// Connects through an existing client endpoint (whose default client
/// configuration says how to trust the server): many connections can share
/// one UDP socket, as a load generator's do.
pub async fn connect_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<ClientConnection, TransportError> {
    let connection = endpoint.connect(addr, server_name)?.await?;
    let (send, recv) = connection.open_bi().await?;
    Ok(ClientConnection {
        connection,
        send: FramedSend::new(QuicSend(send)),
        recv: FramedRecv::new(recv),
        endpoint: endpoint.clone(),
    })
}

/// The client's QUIC configuration for `trust`.
pub fn client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = tls_client_config(trust)?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|error| {
        TransportError::Certificate(format!("TLS 1.3 with a QUIC suite is required: {error}"))
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}
