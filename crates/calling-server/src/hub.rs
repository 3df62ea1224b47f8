//! The hub: the one task that owns the switchboard and drives it with the
//! real clock. Connection tasks talk to it over channels; it never awaits a
//! client, so a slow client cannot hold up the others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use calling_api::{ErrorCode, UserId};
use signaling_proto::{
    ClientMessage, ConnId, Output, ServerMessage, Switchboard, SwitchboardConfig,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::relay::{MediaRoutes, Route};

/// How many messages may wait for one client before it counts as stuck and
/// is disconnected.
pub(crate) const OUTBOX_CAPACITY: usize = 256;

/// What the hub tells a connection task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send this message.
    Message(ServerMessage),
    /// Flush what was sent, then close with this code.
    Close(ErrorCode),
}

#[derive(Debug)]
pub(crate) enum HubInput {
    /// An authenticated login.
    Login {
        conn: ConnId,
        user: UserId,
        outbox: mpsc::Sender<Outbound>,
        /// Where the relay sends this member's peers' audio.
        connection: signaling_quic::quinn::Connection,
    },
    Message {
        conn: ConnId,
        message: ClientMessage,
    },
    Disconnect {
        conn: ConnId,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<HubStats>,
    },
}

/// Live figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Users logged in.
    pub online: usize,
    /// Calls ringing or connected.
    pub calls: usize,
}

pub(crate) async fn run(
    config: SwitchboardConfig,
    mut inputs: mpsc::Receiver<HubInput>,
    routes: Arc<MediaRoutes>,
) {
    let mut switchboard = Switchboard::new(config);
    let mut outboxes: HashMap<ConnId, mpsc::Sender<Outbound>> = HashMap::new();
    let mut connections: HashMap<ConnId, signaling_quic::quinn::Connection> = HashMap::new();
    let mut touched: HashSet<ConnId> = HashSet::new();
    let mut shutting_down = false;
    loop {
        let deadline = switchboard.poll_timeout();
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = sleep_until(deadline), if deadline.is_some() => {
                switchboard.handle_timeout(Instant::now());
                dispatch(&mut switchboard, &mut outboxes, &mut touched);
                refresh_routes(&switchboard, &connections, &routes, &mut touched);
                continue;
            }
        };
        let Some(input) = input else {
            break;
        };
        let now = Instant::now();
        match input {
            HubInput::Login {
                conn,
                user,
                outbox,
                connection,
            } => {
                if shutting_down {
                    let _ = outbox.try_send(Outbound::Close(ErrorCode::SERVER_SHUTDOWN));
                    continue;
                }
                outboxes.insert(conn, outbox);
                connections.insert(conn, connection);
                switchboard.handle_login(now, conn, user);
            }
            HubInput::Message { conn, message } => switchboard.handle_message(now, conn, message),
            HubInput::Disconnect { conn } => {
                connections.remove(&conn);
                touched.insert(conn);
                if outboxes.remove(&conn).is_some() {
                    switchboard.handle_disconnect(now, conn);
                }
            }
            HubInput::Shutdown { done } => {
                shutting_down = true;
                switchboard.shutdown(now);
                dispatch(&mut switchboard, &mut outboxes, &mut touched);
                for conn in connections.keys() {
                    routes.set(*conn, None);
                }
                let _ = done.send(());
                continue;
            }
            HubInput::Stats { reply } => {
                let _ = reply.send(HubStats {
                    online: switchboard.online_count(),
                    calls: switchboard.call_count(),
                });
            }
        }
        dispatch(&mut switchboard, &mut outboxes, &mut touched);
        refresh_routes(&switchboard, &connections, &routes, &mut touched);
    }
}

/// Republishes the media route of every connection whose call changed (each
/// member of a changed call got a notification, so it is in `touched`).
fn refresh_routes(
    switchboard: &Switchboard,
    connections: &HashMap<ConnId, signaling_quic::quinn::Connection>,
    routes: &MediaRoutes,
    touched: &mut HashSet<ConnId>,
) {
    for conn in touched.drain() {
        let route = switchboard
            .joined_call_of(conn)
            .map(|(call_id, flow)| Route {
                flow,
                peers: switchboard
                    .members_of(call_id)
                    .into_iter()
                    .filter_map(|(_, _, member)| member.filter(|member| *member != conn))
                    .filter_map(|member| connections.get(&member).cloned())
                    .collect(),
            });
        routes.set(conn, route);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

/// Hands every switchboard output to its connection task, without waiting.
/// A client whose outbox is full is disconnected, which may produce more
/// output for the others: repeat until nothing is left.
fn dispatch(
    switchboard: &mut Switchboard,
    outboxes: &mut HashMap<ConnId, mpsc::Sender<Outbound>>,
    touched: &mut HashSet<ConnId>,
) {
    loop {
        let mut stuck = Vec::new();
        while let Some(output) = switchboard.poll_output() {
            match output {
                Output::Send { conn, message } => {
                    if matches!(
                        message,
                        ServerMessage::UserEntered { .. }
                            | ServerMessage::UserLeft { .. }
                            | ServerMessage::CallEnded { .. }
                    ) {
                        touched.insert(conn);
                    }
                    let Some(outbox) = outboxes.get(&conn) else {
                        continue;
                    };
                    match outbox.try_send(Outbound::Message(message)) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            warn!(
                                ?conn,
                                "client is not reading its messages: disconnecting it"
                            );
                            stuck.push(conn);
                        }
                        Err(TrySendError::Closed(_)) => {
                            debug!(?conn, "connection task already gone");
                            stuck.push(conn);
                        }
                    }
                }
                Output::Close { conn, code } => {
                    touched.insert(conn);
                    if let Some(outbox) = outboxes.remove(&conn) {
                        // If the outbox is full the close is lost too; the
                        // task then sees its channel closed and closes anyway.
                        let _ = outbox.try_send(Outbound::Close(code));
                    }
                }
            }
        }
        if stuck.is_empty() {
            return;
        }
        for conn in stuck {
            // Dropping the sender tells the connection task to close.
            if outboxes.remove(&conn).is_some() {
                switchboard.handle_disconnect(Instant::now(), conn);
            }
        }
    }
}
