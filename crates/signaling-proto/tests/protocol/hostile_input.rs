//! Random and mutated bytes never panic a decoder, and a hostile client
//! never takes the server's state down with it.

use proptest::prelude::*;

use super::*;
use signaling_proto::frame::{FrameDecoder, decode_payload, handshake_version};
use signaling_proto::{MediaHeader, ServerMessage};

fn valid_frames() -> Vec<u8> {
    let mut stream = Vec::new();
    let messages = [
        ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: 7,
            user_id: user("alice"),
            user_sig: "sig".into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        },
        ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![user("bob"), user("carol")],
            call_type: CallType::Video,
            timeout_ms: Some(5_000),
            user_data: Some("data".into()),
        },
        ClientMessage::Microphone { muted: true },
    ];
    for message in &messages {
        stream.extend(frame_to_vec(message).unwrap());
    }
    stream
}

/// Decodes everything it can; returns how many messages decoded.
fn decode_all(bytes: &[u8], chunk: usize) -> usize {
    let mut decoder = FrameDecoder::new();
    let mut decoded = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.push(piece);
        while let Ok(Some(_)) = decoder.next_message::<ClientMessage>() {
            decoded += 1;
        }
    }
    let _ = decoder.finish();
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        decode_all(&bytes, chunk);
        let _ = decode_payload::<ClientMessage>(&bytes);
        let _ = decode_payload::<ServerMessage>(&bytes);
        let _ = handshake_version(&bytes);
        let _ = MediaHeader::decode(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        chunk in 1usize..32,
    ) {
        let mut stream = valid_frames();
        for (at, value) in &flips {
            let index = at.index(stream.len());
            stream[index] = *value;
        }
        stream.truncate(cut.index(stream.len() + 1));
        let decoded = decode_all(&stream, chunk);
        prop_assert!(decoded <= 3);
    }

    #[test]
    fn a_hostile_client_does_not_disturb_a_call(garbage in prop::collection::vec(any::<u8>(), 1..256), after_login in any::<bool>()) {
        let mut sim = world(&["alice", "bob"]);
        let call = connect(&mut sim, "alice", "bob");
        if after_login {
            sim.add_logged_in("mallory", "mallory");
        } else {
            sim.add_client("mallory");
        }
        sim.send_raw("mallory", garbage);
        sim.settle();
        prop_assert_eq!(sim.switchboard().check_invariants(), Ok(()));
        prop_assert_eq!(events(&mut sim, "alice"), []);
        prop_assert_eq!(
            sim.engine("bob").status(),
            signaling_proto::EngineStatus::InCall { call_id: call, members: [user("alice")].into() }
        );
    }
}

#[test]
fn an_oversized_length_prefix_closes_only_that_connection() {
    let mut sim = world(&["alice", "bob"]);
    connect(&mut sim, "alice", "bob");
    sim.add_logged_in("mallory", "mallory");
    sim.send_raw("mallory", u32::MAX.to_be_bytes().to_vec());
    sim.settle();
    assert!(!sim.is_connected("mallory"));
    assert_eq!(sim.switchboard().online_count(), 2);
    assert!(sim.is_connected("alice") && sim.is_connected("bob"));
}

#[test]
fn a_message_before_login_is_refused() {
    let mut sim = world(&[]);
    sim.add_client("rude");
    sim.send_raw(
        "rude",
        frame_to_vec(&ClientMessage::Ping { nonce: 1 }).unwrap(),
    );
    sim.settle();
    assert!(!sim.is_connected("rude"));
    assert_eq!(sim.switchboard().online_count(), 0);
}
