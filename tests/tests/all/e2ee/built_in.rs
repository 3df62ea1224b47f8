//! Built-in keys through a real server: what the server passed a member
//! who left opens nothing sealed after she left, the members who stay
//! hear no gap, and a member's new identity key is told as changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calling_api::{CallType, CallingEvent, EndReason, UserId};
use calling_facade::{CaptureDevice, ClientOptions, Identity, MediaKeys, PlaybackDevice};
use media_e2ee::{BuiltInWord, FrameOpener, IdentityKey, SenderKey};

use super::{Frame, frames, loudest, refused_for_encryption, shared_key};
use crate::audio::ONE_AT_A_TIME;
use crate::support::*;

fn toned(options: &mut ClientOptions, frequency: f32, identity: &Arc<Identity>) {
    options.audio = calling_facade::AudioDevices {
        capture: CaptureDevice::Synthetic(audio_device::Signal::Tone {
            frequency,
            amplitude: 0.3,
        }),
        playback: PlaybackDevice::Null,
    };
    options.media_encryption = Some(MediaKeys::BuiltIn(Arc::clone(identity)));
}

/// A key word the server passed on: when, from whom, what.
type Word = (Instant, (UserId, Vec<u8>));

/// What `me` (with `identity`) received of the words the server passed
/// on: each sender's keys, opened, with when they passed.
fn keys_received(
    identity: &Identity,
    me: &str,
    words: &[Word],
) -> Vec<(Instant, UserId, SenderKey)> {
    let mut identities: HashMap<&UserId, IdentityKey> = HashMap::new();
    let mut keys = Vec::new();
    for (at, (from, payload)) in words {
        match BuiltInWord::read(payload) {
            Some(Ok(BuiltInWord::Identity(key))) => {
                identities.insert(from, key);
            }
            Some(Ok(BuiltInWord::Key(sealed))) => {
                let theirs = identities[from];
                // Only the words sealed to `me` open.
                if let Ok(key) = identity.open_key(me, from.as_str(), theirs, &sealed) {
                    keys.push((*at, from.clone(), key));
                }
            }
            other => panic!("not a built-in word: {other:?}"),
        }
    }
    keys
}

fn opener(keys: &[(Instant, UserId, SenderKey)], sender: &str) -> FrameOpener {
    let mut opener = FrameOpener::new();
    for (_, from, key) in keys {
        if from.as_str() == sender {
            opener
                .add_key(&key.material, sender, &key.announcement)
                .unwrap();
        }
    }
    opener
}

/// A three-way call with built-in keys; carol leaves. What the server
/// passed carol, opened with her identity, opens alice's frames while
/// she was there and none that alice sealed with the key she made when
/// carol left; that key went to bob before alice's first frame sealed
/// with it; bob heard alice throughout and was never told of a key
/// problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_cannot_open_what_follows() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("e2ee-rotation").await;
    let words = server.server.tap_member_keys();
    let relayed = server.server.tap_relay();
    let [alice_identity, bob_identity, carol_identity] =
        std::array::from_fn(|_| Arc::new(Identity::generate().unwrap()));
    let mut users = Vec::new();
    for (name, frequency, identity) in [
        ("alice", 440.0, &alice_identity),
        ("bob", 660.0, &bob_identity),
        ("carol", 880.0, &carol_identity),
    ] {
        let mut options = server.options();
        toned(&mut options, frequency, identity);
        users.push(server.user_with(name, options).await);
    }
    let [mut alice, mut bob, mut carol] = <[User; 3]>::try_from(users).ok().unwrap();
    connect(&mut alice, &mut bob).await;
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.expect(&[invited("alice", &["bob"])]).await;
    carol.calling.accept().await.unwrap();
    alice.expect(&enter("carol")).await;
    bob.expect(&enter("carol")).await;
    let ((bob_before, bob_problems), (carol_hears, _)) = tokio::join!(
        loudest(&mut bob, "alice", Duration::from_secs(2)),
        loudest(&mut carol, "alice", Duration::from_secs(2)),
    );
    assert!(
        bob_before >= 20 && carol_hears >= 20,
        "{bob_before} {carol_hears}"
    );
    assert!(bob_problems.is_empty(), "{bob_problems:?}");

    let left = Instant::now();
    carol.calling.hangup().await.unwrap();
    carol.expect_end(EndReason::Hangup).await;
    let (bob_after, bob_problems) = loudest(&mut bob, "alice", Duration::from_secs(3)).await;
    assert!(
        bob_after >= 20,
        "bob hears alice after the rotation: {bob_after}"
    );
    assert!(bob_problems.is_empty(), "{bob_problems:?}");
    alice.calling.hangup().await.unwrap();

    let words: Vec<Word> = words.try_iter().collect();
    let carols = keys_received(&carol_identity, "carol", &words);
    let bobs = keys_received(&bob_identity, "bob", &words);
    let frames = frames(relayed.try_iter());
    // Alice's flow: the frames carol's keys from alice open.
    let mut carol_opens = opener(&carols, "alice");
    let opened_by_carol: Vec<&Frame> = frames
        .iter()
        .filter(|frame| carol_opens.open(&frame.header, &frame.sealed).is_ok())
        .collect();
    assert!(opened_by_carol.len() > 50, "{}", opened_by_carol.len());
    let alice_flow = opened_by_carol[0].flow;
    assert!(opened_by_carol.iter().all(|frame| frame.flow == alice_flow));
    // Alice's last key went to bob only, after carol left.
    let (word_at, _, last) = bobs
        .iter()
        .filter(|(_, from, _)| from.as_str() == "alice")
        .max_by_key(|(at, ..)| *at)
        .unwrap();
    assert!(*word_at > left);
    assert!(
        !carols
            .iter()
            .any(|(_, _, key)| key.announcement == last.announcement),
        "carol never received alice's last key"
    );
    let after: Vec<&Frame> = frames
        .iter()
        .filter(|frame| frame.flow == alice_flow && frame.key_id == Some(last.announcement.key_id))
        .filter(|frame| frame.at > left)
        .collect();
    assert!(after.len() > 50, "{} frames with the last key", after.len());
    let first_sealed = after.iter().map(|frame| frame.at).min().unwrap();
    println!(
        "rotation: alice's new key passed the server {:?} before her first frame sealed with it",
        first_sealed.duration_since(*word_at)
    );
    assert!(*word_at < first_sealed, "the key before the frames");
    let mut bob_opens = opener(&bobs, "alice");
    for frame in &after {
        assert!(carol_opens.open(&frame.header, &frame.sealed).is_err());
        assert!(bob_opens.open(&frame.header, &frame.sealed).is_ok());
    }
}

/// Both sides of a call with built-in keys get one safety number for the
/// pair; when bob comes back with a new identity key (a new device),
/// alice is told it changed, with a new number. A device with the
/// application's keys cannot call one with built-in keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_numbers_agree_and_a_new_identity_is_told() {
    let server = TestServer::start("e2ee-identity").await;
    let folder = temp_dir("e2ee-identity");
    std::fs::create_dir_all(&folder).unwrap();
    let alice_identity = Arc::new(Identity::load_or_create(&folder.join("alice")).unwrap());
    let mut options = server.options();
    toned(&mut options, 440.0, &alice_identity);
    let mut alice = server.user_with("alice", options).await;

    let mut numbers = Vec::new();
    for _ in 0..2 {
        let bob_identity = Arc::new(Identity::generate().unwrap());
        let mut options = server.options();
        toned(&mut options, 660.0, &bob_identity);
        let mut bob = server.user_with("bob", options).await;
        connect(&mut alice, &mut bob).await;
        let (on_alice, on_bob) = tokio::join!(identity_of(&mut alice), identity_of(&mut bob));
        assert_eq!(on_alice.0.as_str(), "bob");
        assert_eq!(on_bob.0.as_str(), "alice");
        assert_eq!(on_alice.1, on_bob.1, "one number on both devices");
        assert!(!on_bob.2, "bob had never met alice");
        numbers.push((on_alice.1, on_alice.2));
        alice.calling.hangup().await.unwrap();
        alice.expect_end(EndReason::Hangup).await;
        bob.calling.logout().await.unwrap();
    }
    assert!(!numbers[0].1, "the first of bob's keys alice sees");
    assert!(numbers[1].1, "bob's second identity is told as a change");
    assert_ne!(numbers[0].0, numbers[1].0);
    // Alice's file keeps both of bob's keys: a third device of his with
    // either would not be told as a change.
    let kept = std::fs::read_to_string(folder.join("alice")).unwrap();
    assert_eq!(
        kept.lines().filter(|line| line.ends_with(" bob")).count(),
        2
    );

    let mut options = server.options();
    options.media_encryption = Some(shared_key(3));
    let _carol = server.user_with("carol", options).await;
    refused_for_encryption(&alice, "carol").await;
    let _ = std::fs::remove_dir_all(&folder);
}

/// The next identity event of `user`: whose, the safety number, changed.
async fn identity_of(user: &mut User) -> (UserId, String, bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, user.events.recv()).await {
            Ok(Some(CallingEvent::MemberIdentity {
                user_id,
                safety_number,
                changed,
            })) => return (user_id, safety_number, changed),
            Ok(Some(_)) => {}
            other => panic!("{}: no identity event: {other:?}", user.id),
        }
    }
}
