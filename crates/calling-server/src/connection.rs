//! One task per connection: handshake, authentication, then frames in to the
//! hub and the hub's messages out, until either side ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use calling_api::{ErrorCode, UserId};
use signaling_proto::frame::{decode_payload, handshake_version};
use signaling_proto::message::MAX_USER_SIG_LEN;
use signaling_proto::{ClientMessage, ConnId, PROTOCOL_VERSION, ServerMessage};
use signaling_quic::{AcceptedConnection, ServerConnection, TransportError, close};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::hub::{HubInput, OUTBOX_CAPACITY, Outbound};
use crate::usersig;

/// How long a new connection has to send its login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(accepted: AcceptedConnection, shared: Arc<Shared>) {
    let remote = accepted.remote_address();
    let mut connection = match accepted.establish().await {
        Ok(connection) => connection,
        Err(error) => {
            debug!(%remote, %error, "handshake failed");
            return;
        }
    };
    let user = match tokio::time::timeout(LOGIN_TIMEOUT, login(&mut connection, &shared)).await {
        Ok(Ok(user)) => user,
        Ok(Err((code, why))) => {
            info!(%remote, ?code, why, "login refused");
            let refusal = ServerMessage::LoginResult {
                protocol_version: PROTOCOL_VERSION,
                code,
                message: why,
            };
            if connection.send.send(&refusal).await.is_ok() {
                connection.send.finish_and_flush(shared.grace).await;
            }
            close(&connection.connection, code, code.message());
            return;
        }
        Err(_) => {
            debug!(%remote, "no login in time");
            close(
                &connection.connection,
                ErrorCode::TIMEOUT,
                "no login in time",
            );
            return;
        }
    };
    let conn = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let (outbox, mut inbox) = mpsc::channel(OUTBOX_CAPACITY);
    let login = HubInput::Login {
        conn,
        user: user.clone(),
        outbox,
        connection: connection.connection.clone(),
    };
    if shared.hub.send(login).await.is_err() {
        close(
            &connection.connection,
            ErrorCode::SERVER_SHUTDOWN,
            "server stopping",
        );
        return;
    }
    info!(%user, %remote, ?conn, "logged in");
    let ended = session(&mut connection, &shared, conn, &mut inbox).await;
    let _ = shared.hub.send(HubInput::Disconnect { conn }).await;
    match ended {
        Ended::ClientLeft => {}
        Ended::Closed(code) => {
            connection.send.finish_and_flush(shared.grace).await;
            close(&connection.connection, code, code.message());
        }
        Ended::Broken(error) => {
            debug!(%user, %error, "connection ended");
            close(&connection.connection, error.code(), error.code().message());
        }
    }
    info!(%user, ?conn, "disconnected");
}

/// Reads and checks the login frame; the user it proves, or why not.
async fn login(
    connection: &mut ServerConnection,
    shared: &Shared,
) -> Result<UserId, (ErrorCode, String)> {
    let payload = match connection.recv.recv_payload().await {
        Ok(Some(payload)) => payload,
        Ok(None) => {
            return Err((
                ErrorCode::PROTOCOL_ERROR,
                "the stream ended before a login".into(),
            ));
        }
        Err(error) => return Err((ErrorCode::PROTOCOL_ERROR, error.to_string())),
    };
    match handshake_version(&payload) {
        Ok(PROTOCOL_VERSION) => {}
        Ok(other) => {
            return Err((
                ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
                format!(
                    "protocol version {other} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        Err(_) => {
            return Err((
                ErrorCode::PROTOCOL_ERROR,
                "the first frame must be a login".into(),
            ));
        }
    }
    let Ok(ClientMessage::Login {
        sdk_app_id,
        user_id,
        user_sig,
        ..
    }) = decode_payload::<ClientMessage>(&payload)
    else {
        return Err((
            ErrorCode::PROTOCOL_ERROR,
            "the first frame must be a login".into(),
        ));
    };
    let Some(secret_key) = shared.apps.get(&sdk_app_id) else {
        return Err((
            ErrorCode::UNKNOWN_APP,
            format!("sdkAppId {sdk_app_id} is not served here"),
        ));
    };
    if user_sig.0.len() > MAX_USER_SIG_LEN {
        return Err((ErrorCode::USERSIG_MALFORMED, "UserSig too long".into()));
    }
    let now = (shared.clock.0)();
    match usersig::verify(
        &user_sig.0,
        u64::from(sdk_app_id),
        secret_key.expose(),
        user_id.as_str(),
        now,
    ) {
        Ok(_) => Ok(user_id),
        Err(error) => Err((error.code(), error.to_string())),
    }
}

enum Ended {
    /// The client finished its stream or closed the connection.
    ClientLeft,
    /// The hub closed the session with this code (logout, kick, shutdown, slow client).
    Closed(ErrorCode),
    /// The connection or the client's bytes failed.
    Broken(TransportError),
}

async fn session(
    connection: &mut ServerConnection,
    shared: &Shared,
    conn: ConnId,
    inbox: &mut mpsc::Receiver<Outbound>,
) -> Ended {
    loop {
        tokio::select! {
            received = connection.recv.recv() => match received {
                Ok(Some(message)) => {
                    if shared.hub.send(HubInput::Message { conn, message }).await.is_err() {
                        return Ended::Closed(ErrorCode::SERVER_SHUTDOWN);
                    }
                }
                Ok(None) => return Ended::ClientLeft,
                Err(TransportError::Protocol(error)) => {
                    warn!(?conn, %error, "malformed frame: closing");
                    let notice = ServerMessage::Error {
                        request_id: None,
                        code: ErrorCode::PROTOCOL_ERROR,
                        message: error.to_string(),
                    };
                    let _ = connection.send.send(&notice).await;
                    return Ended::Closed(ErrorCode::PROTOCOL_ERROR);
                }
                Err(error) => {
                    return if matches!(&error, TransportError::Connection(_) | TransportError::Read(_)) {
                        Ended::ClientLeft
                    } else {
                        Ended::Broken(error)
                    };
                }
            },
            datagram = connection.connection.read_datagram() => match datagram {
                Ok(datagram) => shared.routes.relay(conn, &datagram),
                // The connection is gone; the stream branch says the same.
                Err(_) => return Ended::ClientLeft,
            },
            outbound = inbox.recv() => match outbound {
                Some(Outbound::Message(message)) => {
                    if let Err(error) = connection.send.send(&message).await {
                        return Ended::Broken(error);
                    }
                }
                Some(Outbound::Close(code)) => return Ended::Closed(code),
                // The hub dropped us: a stuck client, or the hub is gone.
                None => return Ended::Closed(ErrorCode::SERVER_BUSY),
            },
        }
    }
}
