//! End-to-end encrypted audio (version 7), on the switchboard itself: a
//! call rings only devices that encrypt as its caller's, is refused when
//! an invitee has none, and members' key words pass between members of one
//! call and nowhere else.

use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, DeviceId, ErrorCode};
use signaling_proto::{
    ClientMessage, ConnId, DeviceLogin, MAX_MEMBER_KEY_LEN, MediaEncryption, Output,
    PROTOCOL_VERSION, RequestId, ServerMessage, Switchboard, SwitchboardConfig,
};

use crate::user;

const ALICE: ConnId = ConnId(1);
const BOB: ConnId = ConnId(2);
const BOB_LAPTOP: ConnId = ConnId(3);
const CAROL: ConnId = ConnId(4);

fn device(name: &str, media_encryption: MediaEncryption) -> DeviceLogin {
    DeviceLogin {
        device: DeviceId::new(name).ok(),
        max_devices: 2,
        media_encryption,
    }
}

/// What the switchboard sent, by connection.
fn sent(switchboard: &mut Switchboard) -> Vec<(ConnId, ServerMessage)> {
    std::iter::from_fn(|| switchboard.poll_output())
        .filter_map(|output| match output {
            Output::Send { conn, message } => Some((conn, message)),
            _ => None,
        })
        .collect()
}

fn invite(to: &str) -> ClientMessage {
    ClientMessage::Invite {
        request_id: RequestId(1),
        call_id: None,
        user_ids: vec![user(to)],
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: None,
    }
}

fn member_key(to: &str, payload: Vec<u8>) -> ClientMessage {
    ClientMessage::MemberKey {
        to: user(to),
        payload,
    }
}

/// Alice, bob and carol logged in, each encrypting as said.
fn logged_in(encryption: [MediaEncryption; 3]) -> Switchboard {
    let now = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    for ((conn, name), encryption) in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")]
        .into_iter()
        .zip(encryption)
    {
        switchboard.handle_device_login(
            now,
            conn,
            user(name),
            PROTOCOL_VERSION,
            device(name, encryption),
        );
    }
    sent(&mut switchboard);
    switchboard
}

#[test]
fn an_invite_to_a_user_who_does_not_encrypt_alike_is_refused_and_nobody_rings() {
    use MediaEncryption::{AppKeys, None};
    for (alice, bob) in [(AppKeys, None), (None, AppKeys)] {
        let mut switchboard = logged_in([alice, bob, alice]);
        switchboard.handle_message(Instant::now(), ALICE, invite("bob"));
        let told = sent(&mut switchboard);
        assert!(
            matches!(
                told.as_slice(),
                [(ALICE, ServerMessage::Error { request_id: Some(_), code, .. })]
                    if *code == ErrorCode::MEDIA_ENCRYPTION_MISMATCH
            ),
            "{told:?}"
        );
        assert_eq!(switchboard.call_count(), 0);
        // Carol encrypts as alice does: her call goes ahead.
        switchboard.handle_message(Instant::now(), ALICE, invite("carol"));
        let told = sent(&mut switchboard);
        assert!(
            told.iter().any(|(conn, message)| *conn == CAROL
                && matches!(message, ServerMessage::Invited { .. })),
            "{told:?}"
        );
    }
}

#[test]
fn only_the_devices_that_encrypt_as_the_call_does_ring() {
    use MediaEncryption::{AppKeys, None};
    let mut switchboard = logged_in([AppKeys, AppKeys, AppKeys]);
    let now = Instant::now();
    switchboard.handle_device_login(
        now,
        BOB_LAPTOP,
        user("bob"),
        PROTOCOL_VERSION,
        device("laptop", None),
    );
    sent(&mut switchboard);
    switchboard.handle_message(now, ALICE, invite("bob"));
    let rung: Vec<ConnId> = sent(&mut switchboard)
        .into_iter()
        .filter_map(|(conn, message)| {
            matches!(message, ServerMessage::Invited { .. }).then_some(conn)
        })
        .collect();
    assert_eq!(rung, [BOB], "the phone rings, the laptop does not");
    // The laptop has no invitation to accept.
    let call_id = switchboard.call_summaries()[0].call_id;
    switchboard.handle_message(
        now,
        BOB_LAPTOP,
        ClientMessage::Accept {
            request_id: RequestId(2),
            call_id,
        },
    );
    assert!(matches!(
        sent(&mut switchboard).as_slice(),
        [(BOB_LAPTOP, ServerMessage::Error { code, .. })] if *code == ErrorCode::NO_INVITATION
    ));
}

#[test]
fn key_words_pass_between_members_of_one_call_only() {
    use MediaEncryption::AppKeys;
    let mut switchboard = logged_in([AppKeys; 3]);
    let now = Instant::now();
    switchboard.handle_message(now, ALICE, invite("bob"));
    sent(&mut switchboard);
    let call_id: CallId = switchboard.call_summaries()[0].call_id;
    // Bob only rings: not a member yet.
    switchboard.handle_message(now, ALICE, member_key("bob", vec![1, 0]));
    assert_eq!(sent(&mut switchboard), []);
    switchboard.handle_message(
        now,
        BOB,
        ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        },
    );
    sent(&mut switchboard);
    switchboard.handle_message(now, ALICE, member_key("bob", vec![1, 0, 7]));
    assert_eq!(
        sent(&mut switchboard),
        [(
            BOB,
            ServerMessage::MemberKey {
                call_id,
                from: user("alice"),
                payload: vec![1, 0, 7],
            }
        )]
    );
    // Not to carol, who is in no call; not from carol; not to oneself.
    switchboard.handle_message(now, ALICE, member_key("carol", vec![1]));
    switchboard.handle_message(now, CAROL, member_key("alice", vec![1]));
    switchboard.handle_message(now, ALICE, member_key("alice", vec![1]));
    assert_eq!(sent(&mut switchboard), []);
    // Too long: an error notice, nothing passed on.
    switchboard.handle_message(
        now,
        ALICE,
        member_key("bob", vec![0; MAX_MEMBER_KEY_LEN + 1]),
    );
    assert!(matches!(
        sent(&mut switchboard).as_slice(),
        [(ALICE, ServerMessage::Error { request_id: None, code, .. })]
            if *code == ErrorCode::INVALID_PARAMETER
    ));
    switchboard.handle_message(now, ALICE, member_key("bob", vec![0; MAX_MEMBER_KEY_LEN]));
    assert_eq!(
        sent(&mut switchboard).len(),
        1,
        "the longest allowed passes"
    );
}

#[test]
fn an_offline_invitation_does_not_ring_a_device_that_encrypts_otherwise() {
    use MediaEncryption::{AppKeys, None};
    let now = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    switchboard.handle_device_login(
        now,
        ALICE,
        user("alice"),
        PROTOCOL_VERSION,
        device("alice", AppKeys),
    );
    sent(&mut switchboard);
    switchboard.handle_message(now, ALICE, invite("bob"));
    let told = sent(&mut switchboard);
    assert!(
        told.iter()
            .any(|(_, message)| matches!(message, ServerMessage::InviteeOffline { .. })),
        "{told:?}"
    );
    let later = now + Duration::from_secs(1);
    switchboard.handle_device_login(
        later,
        BOB,
        user("bob"),
        PROTOCOL_VERSION,
        device("bob", None),
    );
    let told = sent(&mut switchboard);
    assert!(
        !told
            .iter()
            .any(|(_, message)| matches!(message, ServerMessage::Invited { .. })),
        "{told:?}"
    );
    assert!(
        told.iter()
            .any(|(conn, message)| *conn == ALICE
                && matches!(message, ServerMessage::NoResponse { .. })),
        "the invitation ends as unanswered: {told:?}"
    );
    assert_eq!(switchboard.call_count(), 0);
}
