//! The audio relay, with raw protocol clients: datagrams reach the other
//! members of the call only, stamped with the sender's own flow id.

use std::time::Duration;

use calling_api::{CallType, UserId};
use signaling_proto::{ClientMessage, DatagramKind, FlowId, MediaHeader, RequestId, ServerMessage};
use signaling_quic::ClientConnection;

use crate::support::*;

/// A raw client logged in with protocol version 1: it owes the server no
/// heartbeats (a version-2 session must acknowledge what it receives, see
/// docs/protocol.md, "Resume").
pub async fn raw_login(server: &TestServer, user: &str) -> ClientConnection {
    let mut client = server.raw_client().await;
    client
        .send
        .send(&ClientMessage::Login {
            protocol_version: 1,
            sdk_app_id: server.app.sdk_app_id,
            user_id: UserId::new(user).unwrap(),
            user_sig: server.sig(user).into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    assert!(
        matches!(client.recv.recv().await.unwrap(), Some(ServerMessage::LoginResult { code, .. }) if code.is_ok())
    );
    client
}

/// Reads messages until one matches; returns it.
pub async fn until(
    client: &mut ClientConnection,
    want: impl Fn(&ServerMessage) -> bool,
) -> ServerMessage {
    tokio::time::timeout(EVENT_WAIT, async {
        loop {
            let message = client.recv.recv().await.unwrap().unwrap();
            if want(&message) {
                return message;
            }
        }
    })
    .await
    .unwrap()
}

pub fn datagram(claimed_flow: u32, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let header = MediaHeader {
        kind: DatagramKind::Audio,
        flow_id: FlowId(claimed_flow),
        sequence,
        timestamp: sequence * 960,
        voice_activity: true,
        level_dbov: 20,
    };
    let mut buffer = vec![0; 64 + payload.len()];
    let len = header.encode(payload, &mut buffer).unwrap();
    buffer.truncate(len);
    buffer
}

/// `caller` calls `callee` (logged in as `callee_name`), who accepts; both
/// see each other enter. Returns the caller's flow, as the callee got it.
pub async fn raw_call(
    caller: &mut ClientConnection,
    callee: &mut ClientConnection,
    callee_name: &str,
) -> FlowId {
    caller
        .send
        .send(&ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![UserId::new(callee_name).unwrap()],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        })
        .await
        .unwrap();
    let caller_flow = raw_accept(callee).await;
    until(caller, |m| matches!(m, ServerMessage::UserEntered { .. })).await;
    caller_flow
}

/// `peer` sends a feedback datagram (a loss report, its features) about
/// `flow`, as a receiver does.
pub fn send_about(peer: &ClientConnection, kind: DatagramKind, flow: FlowId, payload: &[u8]) {
    let mut datagram = [0; 32];
    let len = MediaHeader::about(kind, flow)
        .encode(payload, &mut datagram)
        .unwrap();
    peer.connection
        .send_datagram(datagram[..len].to_vec().into())
        .unwrap();
}

/// `callee` accepts the invitation that rings next and sees its caller
/// enter. Returns the caller's flow.
pub async fn raw_accept(callee: &mut ClientConnection) -> FlowId {
    let ServerMessage::Invited { call_id, .. } =
        until(callee, |m| matches!(m, ServerMessage::Invited { .. })).await
    else {
        unreachable!()
    };
    callee
        .send
        .send(&ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        })
        .await
        .unwrap();
    let ServerMessage::UserEntered {
        flow_id: caller_flow,
        ..
    } = until(callee, |m| matches!(m, ServerMessage::UserEntered { .. })).await
    else {
        unreachable!()
    };
    caller_flow
}

#[tokio::test]
async fn datagrams_reach_the_other_members_stamped_and_nobody_else() {
    let server = TestServer::start("relay").await;
    let mut alice = raw_login(&server, "alice").await;
    let mut bob = raw_login(&server, "bob").await;
    let mallory = raw_login(&server, "mallory").await;

    let alice_flow = raw_call(&mut alice, &mut bob, "bob").await;

    // Alice claims to be flow 999: bob receives it as alice's flow.
    alice
        .connection
        .send_datagram(datagram(999, 1, b"hello").into())
        .unwrap();
    let received = tokio::time::timeout(EVENT_WAIT, bob.connection.read_datagram())
        .await
        .unwrap()
        .unwrap();
    let (header, payload) = MediaHeader::decode(&received).unwrap();
    assert_eq!(
        header.flow_id, alice_flow,
        "the server stamps the sender's own flow"
    );
    assert_eq!((header.sequence, payload), (1, &b"hello"[..]));

    // Mallory, in no call, cannot speak into it; garbage is dropped too.
    mallory
        .connection
        .send_datagram(datagram(alice_flow.0, 2, b"inject").into())
        .unwrap();
    mallory
        .connection
        .send_datagram(vec![0xff; 10].into())
        .unwrap();
    // Bob answers; alice hears him and never herself.
    bob.connection
        .send_datagram(datagram(0, 7, b"hi").into())
        .unwrap();
    let received = tokio::time::timeout(EVENT_WAIT, alice.connection.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(MediaHeader::decode(&received).unwrap().1, b"hi");
    let nothing_more =
        tokio::time::timeout(Duration::from_millis(300), bob.connection.read_datagram()).await;
    assert!(
        nothing_more.is_err(),
        "bob got something else: {nothing_more:?}"
    );
    let counts = server.server.relay_counts();
    assert_eq!(counts.forwarded, 2);
    assert_eq!(counts.dropped_not_in_call, 1);
    assert_eq!(counts.dropped_malformed, 1);

    // After bob leaves, alice's audio goes nowhere.
    bob.send
        .send(&ClientMessage::Hangup {
            request_id: RequestId(2),
        })
        .await
        .unwrap();
    until(&mut alice, |m| matches!(m, ServerMessage::CallEnded { .. })).await;
    alice
        .connection
        .send_datagram(datagram(0, 3, b"anyone?").into())
        .unwrap();
    let nothing =
        tokio::time::timeout(Duration::from_millis(300), bob.connection.read_datagram()).await;
    assert!(nothing.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.server.relay_counts().dropped_not_in_call, 2);
}

/// Logs users in until two sit on different QUIC endpoints of `server`
/// (told apart by which endpoint's count grew); returns them and their
/// names.
async fn users_on_two_endpoints(server: &TestServer) -> [(ClientConnection, String, usize); 2] {
    let mut first: Option<(ClientConnection, String, usize)> = None;
    // Each login lands on a random endpoint; 40 tries fail to find a
    // second one with probability 4^-39.
    for n in 0..40 {
        let before = server.server.connections_per_endpoint();
        let name = format!("spread{n}");
        let client = raw_login(server, &name).await;
        let after = server.server.connections_per_endpoint();
        let endpoint = (0..after.len())
            .find(|&index| after[index] > before[index])
            .expect("the login's connection is counted on its endpoint");
        match first.take() {
            None => first = Some((client, name, endpoint)),
            Some(found) if found.2 != endpoint => return [found, (client, name, endpoint)],
            Some(found) => first = Some(found),
        }
    }
    panic!("every connection landed on one endpoint");
}

/// A server with four QUIC endpoints on one port: two users whose
/// connections sit on different endpoints call each other and each hears
/// the other (the relay sends through any endpoint's connection).
#[tokio::test]
async fn members_on_different_endpoints_hear_each_other() {
    let mut config = test_config("endpoints");
    config.quic_endpoints = 4;
    let server = TestServer::start_with(config).await;
    assert_eq!(server.server.connections_per_endpoint().len(), 4);
    let [
        (mut alice, _, alice_endpoint),
        (mut bob, bob_name, bob_endpoint),
    ] = users_on_two_endpoints(&server).await;
    assert_ne!(alice_endpoint, bob_endpoint);
    let alice_flow = raw_call(&mut alice, &mut bob, &bob_name).await;
    for sequence in 1..=5 {
        alice
            .connection
            .send_datagram(datagram(0, sequence, b"from alice").into())
            .unwrap();
        let received = tokio::time::timeout(EVENT_WAIT, bob.connection.read_datagram())
            .await
            .unwrap()
            .unwrap();
        let (header, payload) = MediaHeader::decode(&received).unwrap();
        assert_eq!((header.flow_id, header.sequence), (alice_flow, sequence));
        assert_eq!(payload, b"from alice");
        bob.connection
            .send_datagram(datagram(0, sequence, b"from bob").into())
            .unwrap();
        let received = tokio::time::timeout(EVENT_WAIT, alice.connection.read_datagram())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(MediaHeader::decode(&received).unwrap().1, b"from bob");
    }
    assert_eq!(server.server.relay_counts().forwarded, 10);
}
