//! The hub: the one task that owns the switchboard and drives it with the
//! real clock. Connection tasks talk to it over channels; it never awaits a
//! client, so a slow client cannot hold up the others.
//!
//! It publishes the audio relay's routes from the switchboard's
//! [`Output::Membership`]: each member of a call with someone to hear it
//! gets a [`Route`] to the others' media links. It knows connections only
//! by their [`MediaLink`], whatever the transport.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use calling_api::{CallId, ErrorCode, UserId};
use signaling_link::MediaLink;
use signaling_proto::{
    CallMember, ClientMessage, ConnId, FlowId, Output, ServerMessage, Switchboard,
    SwitchboardConfig,
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
        media: Arc<dyn MediaLink>,
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
    /// Invites refused over a session's invitation limits.
    pub invitations_rate_limited: u64,
    /// Invitees answered busy because their messages piled up.
    pub invitees_congested: u64,
}

/// What the hub knows besides the switchboard: how to reach each
/// connection, and who was routed to whom.
#[derive(Debug, Default)]
struct Links {
    outboxes: HashMap<ConnId, mpsc::Sender<Outbound>>,
    media: HashMap<ConnId, Arc<dyn MediaLink>>,
    /// The connections each call's routes were last published for.
    routed: HashMap<CallId, Vec<ConnId>>,
    /// Connections given messages by the last dispatch, or still congested:
    /// the ones whose outbox fill is checked after it.
    to_check: HashSet<ConnId>,
    /// Connections whose outbox is nearly full.
    congested: HashSet<ConnId>,
}

/// Queued messages above which a connection counts as congested…
const CONGESTED_ABOVE: usize = OUTBOX_CAPACITY * 3 / 4;
/// …and below which it no longer does.
const RELIEVED_BELOW: usize = OUTBOX_CAPACITY / 2;

pub(crate) async fn run(
    config: SwitchboardConfig,
    mut inputs: mpsc::Receiver<HubInput>,
    routes: Arc<MediaRoutes>,
) {
    let mut switchboard = Switchboard::new(config);
    let mut links = Links::default();
    let mut shutting_down = false;
    loop {
        let deadline = switchboard.poll_timeout();
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = signaling_link::sleep_until(deadline), if deadline.is_some() => {
                switchboard.handle_timeout(Instant::now());
                dispatch(&mut switchboard, &mut links, &routes);
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
                media,
            } => {
                if shutting_down {
                    let _ = outbox.try_send(Outbound::Close(ErrorCode::SERVER_SHUTDOWN));
                    continue;
                }
                links.outboxes.insert(conn, outbox);
                links.media.insert(conn, media);
                switchboard.handle_login(now, conn, user);
            }
            HubInput::Message { conn, message } => switchboard.handle_message(now, conn, message),
            HubInput::Disconnect { conn } => {
                links.media.remove(&conn);
                routes.set(conn, None);
                if links.outboxes.remove(&conn).is_some() {
                    switchboard.handle_disconnect(now, conn);
                }
            }
            HubInput::Shutdown { done } => {
                shutting_down = true;
                switchboard.shutdown(now);
                dispatch(&mut switchboard, &mut links, &routes);
                let _ = done.send(());
                continue;
            }
            HubInput::Stats { reply } => {
                let counters = switchboard.counters();
                let _ = reply.send(HubStats {
                    online: switchboard.online_count(),
                    calls: switchboard.call_count(),
                    invitations_rate_limited: counters.invitations_rate_limited,
                    invitees_congested: counters.invitees_congested,
                });
            }
        }
        dispatch(&mut switchboard, &mut links, &routes);
    }
}

/// Tells the switchboard which connections' outboxes are nearly full (so
/// invitations to them are answered busy) and which have drained again.
fn update_congestion(switchboard: &mut Switchboard, links: &mut Links) {
    let mut to_check = std::mem::take(&mut links.to_check);
    to_check.extend(links.congested.iter().copied());
    for conn in to_check {
        let queued = links
            .outboxes
            .get(&conn)
            .map_or(0, |outbox| OUTBOX_CAPACITY - outbox.capacity());
        let was = links.congested.contains(&conn);
        let now = if was {
            queued >= RELIEVED_BELOW
        } else {
            queued > CONGESTED_ABOVE
        };
        if now != was {
            debug!(?conn, queued, congested = now, "outbox fill");
            switchboard.set_congested(conn, now);
            if now {
                links.congested.insert(conn);
            } else {
                links.congested.remove(&conn);
            }
        }
    }
}

/// Republishes the routes of a call whose members changed: each member
/// hears every other one; a member alone in it, or gone from it, has none.
fn publish_routes(
    call_id: CallId,
    members: &[CallMember],
    links: &mut Links,
    routes: &MediaRoutes,
) {
    let now_routed: Vec<ConnId> = members.iter().map(|member| member.conn).collect();
    for gone in links
        .routed
        .remove(&call_id)
        .unwrap_or_default()
        .into_iter()
        .filter(|conn| !now_routed.contains(conn))
    {
        routes.set(gone, None);
    }
    for member in members {
        let peers: Vec<(FlowId, Arc<dyn MediaLink>)> = members
            .iter()
            .filter(|other| other.conn != member.conn)
            .filter_map(|other| Some((other.flow, links.media.get(&other.conn)?.clone())))
            .collect();
        let route = (!peers.is_empty()).then_some(Route {
            flow: member.flow,
            peers,
        });
        routes.set(member.conn, route);
    }
    if !now_routed.is_empty() {
        links.routed.insert(call_id, now_routed);
    }
}

/// Carries out every switchboard output without waiting: messages go to
/// their connection task's outbox, membership to the relay's routes. A
/// client whose outbox is full is disconnected, which may produce more
/// output for the others: repeat until nothing is left.
fn dispatch(switchboard: &mut Switchboard, links: &mut Links, routes: &MediaRoutes) {
    loop {
        let mut stuck = Vec::new();
        while let Some(output) = switchboard.poll_output() {
            match output {
                Output::Send { conn, message } => {
                    let Some(outbox) = links.outboxes.get(&conn) else {
                        continue;
                    };
                    links.to_check.insert(conn);
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
                    routes.set(conn, None);
                    if let Some(outbox) = links.outboxes.remove(&conn) {
                        // If the outbox is full the close is lost too; the
                        // task then sees its channel closed and closes anyway.
                        let _ = outbox.try_send(Outbound::Close(code));
                    }
                }
                Output::Membership { call_id, members } => {
                    publish_routes(call_id, &members, links, routes);
                }
                Output::Unrouted { user, message } => {
                    // One server: a user without a session here is offline.
                    debug!(%user, ?message, "message for a user not on this server: dropped");
                }
            }
        }
        if stuck.is_empty() {
            update_congestion(switchboard, links);
            return;
        }
        for conn in stuck {
            // Dropping the sender tells the connection task to close.
            if links.outboxes.remove(&conn).is_some() {
                switchboard.handle_disconnect(Instant::now(), conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The hub and the relay on in-memory links: no sockets, no QUIC.

    use super::*;
    use calling_api::CallType;
    use signaling_link::memory::{MemoryMedia, pair};
    use signaling_link::{DatagramSource, Link};
    use signaling_proto::message::RequestId;
    use signaling_proto::{DatagramKind, LossReport, MediaHeader};

    struct Client {
        conn: ConnId,
        outbox: mpsc::Receiver<Outbound>,
        /// The client's end of its media link.
        media: MemoryMedia,
    }

    async fn log_in(hub: &mpsc::Sender<HubInput>, conn: u64, user: &str) -> Client {
        let (client, server): (
            Link<signaling_link::memory::Memory, ServerMessage, ClientMessage>,
            _,
        ) = pair();
        let (outbox_tx, mut outbox) = mpsc::channel(OUTBOX_CAPACITY);
        let conn = ConnId(conn);
        hub.send(HubInput::Login {
            conn,
            user: UserId::new(user).unwrap(),
            outbox: outbox_tx,
            media: Arc::new(server.media),
        })
        .await
        .unwrap();
        assert!(matches!(
            outbox.recv().await,
            Some(Outbound::Message(ServerMessage::LoginResult { .. }))
        ));
        Client {
            conn,
            outbox,
            media: client.media,
        }
    }

    async fn next(client: &mut Client) -> ServerMessage {
        match client.outbox.recv().await {
            Some(Outbound::Message(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Returns once the hub has carried out every earlier input: it takes
    /// one input at a time and publishes routes before the next.
    async fn barrier(hub: &mpsc::Sender<HubInput>, client: &mut Client) {
        hub.send(HubInput::Message {
            conn: client.conn,
            message: ClientMessage::Ping { nonce: 1 },
        })
        .await
        .unwrap();
        while !matches!(next(client).await, ServerMessage::Pong { .. }) {}
    }

    fn datagram(kind: DatagramKind, flow: u32, payload: &[u8]) -> Vec<u8> {
        let header = MediaHeader {
            kind,
            flow_id: FlowId(flow),
            sequence: 1,
            timestamp: 960,
            voice_activity: true,
            level_dbov: 20,
        };
        let mut buffer = vec![0; 64];
        let len = header.encode(payload, &mut buffer).unwrap();
        buffer.truncate(len);
        buffer
    }

    fn audio(claimed_flow: u32) -> Vec<u8> {
        datagram(DatagramKind::Audio, claimed_flow, b"opus")
    }

    #[tokio::test]
    async fn membership_routes_audio_between_members_only() {
        let routes = Arc::new(MediaRoutes::default());
        let (hub, inputs) = mpsc::channel(64);
        tokio::spawn(run(SwitchboardConfig::DEFAULT, inputs, Arc::clone(&routes)));
        let mut alice = log_in(&hub, 1, "alice").await;
        let mut bob = log_in(&hub, 2, "bob").await;
        let message = |conn: &Client, message| HubInput::Message {
            conn: conn.conn,
            message,
        };
        hub.send(message(
            &alice,
            ClientMessage::Invite {
                request_id: RequestId(1),
                call_id: None,
                user_ids: vec![UserId::new("bob").unwrap()],
                call_type: CallType::Audio,
                timeout_ms: None,
                user_data: None,
            },
        ))
        .await
        .unwrap();
        let ServerMessage::Ack {
            call_id: Some(call_id),
            ..
        } = next(&mut alice).await
        else {
            panic!("no call id");
        };
        assert!(matches!(
            next(&mut bob).await,
            ServerMessage::Invited { .. }
        ));
        // Ringing: alice is alone in the call, her audio goes nowhere.
        routes.relay(alice.conn, &audio(0));
        assert_eq!(routes.counts().dropped_not_in_call, 1);

        hub.send(message(
            &bob,
            ClientMessage::Accept {
                request_id: RequestId(1),
                call_id,
            },
        ))
        .await
        .unwrap();
        assert!(matches!(next(&mut bob).await, ServerMessage::Ack { .. }));
        let ServerMessage::UserEntered {
            flow_id: alice_flow,
            ..
        } = next(&mut bob).await
        else {
            panic!("bob did not meet alice");
        };
        let ServerMessage::UserEntered {
            flow_id: bob_flow, ..
        } = next(&mut alice).await
        else {
            panic!("bob did not enter");
        };
        barrier(&hub, &mut alice).await;

        routes.relay(bob.conn, &audio(999));
        let heard = alice.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!((header.flow_id, payload), (bob_flow, &b"opus"[..]));
        assert_eq!(routes.counts().forwarded, 1);

        // A loss report reaches only the sender it names, restamped with
        // the reporter's flow.
        let report = LossReport { loss_percent: 7 }.to_payload();
        routes.relay(bob.conn, &datagram(DatagramKind::Report, 12_345, &report));
        assert_eq!(routes.counts().forwarded, 1, "nobody has flow 12345");
        routes.relay(
            bob.conn,
            &datagram(DatagramKind::Report, alice_flow.0, &report),
        );
        let heard = alice.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!(header.kind, DatagramKind::Report);
        assert_eq!(header.flow_id, bob_flow);
        assert_eq!(
            LossReport::from_payload(payload),
            Some(LossReport { loss_percent: 7 })
        );
        assert_eq!(routes.counts().forwarded, 2);

        hub.send(message(
            &bob,
            ClientMessage::Hangup {
                request_id: RequestId(2),
            },
        ))
        .await
        .unwrap();
        while !matches!(next(&mut alice).await, ServerMessage::CallEnded { .. }) {}
        barrier(&hub, &mut alice).await;
        routes.relay(alice.conn, &audio(0));
        routes.relay(bob.conn, &audio(0));
        assert_eq!(routes.counts().dropped_not_in_call, 3);
        assert_eq!(routes.counts().forwarded, 2);
        drop(bob.media);
    }
}
