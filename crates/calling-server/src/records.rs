//! Call records: one JSON line per ended call, appended to a file that is
//! reopened on request (SIGHUP, after a log rotation moved it).
//!
//! [`CallRecorder`] builds the records from the hub's call events (pure,
//! tested on its own); the writer task appends them. A record names the
//! call, its type, who opened it, every member with the device it joined
//! on, when it joined and left and why, every invitation with who invited whom, how it ended and
//! when, the call's outcome, end reason and duration.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use calling_api::{CallId, CallType, DeviceId, EndReason, UserId};
use serde_json::{Value, json};
use signaling_proto::{CallEvent, InvitationOutcome};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::metrics::{Metrics, reason_label};
use crate::stamped::StampedEvent;

/// Events the writer may have waiting; more are dropped and counted.
pub const QUEUE: usize = 8192;

/// `audio` or `video`.
pub(crate) fn call_type_name(call_type: CallType) -> &'static str {
    match call_type {
        CallType::Video => "video",
        _ => "audio",
    }
}

/// `at` in unix milliseconds (0 before 1970).
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[derive(Debug)]
struct Membership {
    user: UserId,
    device: Option<DeviceId>,
    joined: SystemTime,
    left: Option<(SystemTime, EndReason)>,
}

#[derive(Debug)]
struct InvitationRecord {
    inviter: UserId,
    invitee: UserId,
    invited: Option<SystemTime>,
    offline: bool,
    ended: Option<(SystemTime, InvitationOutcome)>,
}

#[derive(Debug)]
struct OpenCall {
    call_type: CallType,
    caller: UserId,
    started: SystemTime,
    members: Vec<Membership>,
    invitations: Vec<InvitationRecord>,
}

/// Builds call records from call events.
#[derive(Debug, Default)]
pub struct CallRecorder {
    open: HashMap<CallId, OpenCall>,
}

impl CallRecorder {
    /// Takes one event; the call's record (a JSON object) when it ended.
    pub fn record(&mut self, stamped: &StampedEvent) -> Option<Value> {
        let at = stamped.at;
        match &stamped.event {
            CallEvent::Started {
                call_id,
                call_type,
                caller,
            } => {
                self.open.insert(
                    *call_id,
                    OpenCall {
                        call_type: *call_type,
                        caller: caller.clone(),
                        started: at,
                        members: Vec::new(),
                        invitations: Vec::new(),
                    },
                );
            }
            CallEvent::Invited {
                call_id,
                inviter,
                invitee,
                offline,
                ..
            } => {
                let call = self.open.get_mut(call_id)?;
                call.invitations.push(InvitationRecord {
                    inviter: inviter.clone(),
                    invitee: invitee.clone(),
                    invited: Some(at),
                    offline: *offline,
                    ended: None,
                });
            }
            CallEvent::InvitationEnded {
                call_id,
                inviter,
                invitee,
                outcome,
                offline,
            } => {
                let call = self.open.get_mut(call_id)?;
                let ringing = call.invitations.iter_mut().find(|invitation| {
                    invitation.invitee == *invitee && invitation.ended.is_none()
                });
                match ringing {
                    Some(invitation) => invitation.ended = Some((at, *outcome)),
                    // One that never rang (busy, offline).
                    None => call.invitations.push(InvitationRecord {
                        inviter: inviter.clone(),
                        invitee: invitee.clone(),
                        invited: None,
                        offline: *offline,
                        ended: Some((at, *outcome)),
                    }),
                }
            }
            CallEvent::Joined {
                call_id,
                user,
                device,
            } => {
                let call = self.open.get_mut(call_id)?;
                call.members.push(Membership {
                    user: user.clone(),
                    device: device.clone(),
                    joined: at,
                    left: None,
                });
            }
            CallEvent::Left {
                call_id,
                user,
                reason,
            } => {
                let call = self.open.get_mut(call_id)?;
                if let Some(member) = call
                    .members
                    .iter_mut()
                    .find(|member| member.user == *user && member.left.is_none())
                {
                    member.left = Some((at, *reason));
                }
            }
            CallEvent::Ended { call_id, reason } => {
                let call = self.open.remove(call_id)?;
                return Some(finish(*call_id, call, at, *reason));
            }
        }
        None
    }
}

fn finish(call_id: CallId, call: OpenCall, ended: SystemTime, reason: EndReason) -> Value {
    let connected = call.members.len() > 1;
    let members: Vec<Value> = call
        .members
        .iter()
        .map(|member| {
            json!({
                "user_id": member.user.as_str(),
                "device_id": member.device.as_ref().map(DeviceId::as_str),
                "joined_at_ms": unix_millis(member.joined),
                "left_at_ms": member.left.map(|(at, _)| unix_millis(at)),
                "left_reason": member.left.map(|(_, reason)| reason_label(reason)),
            })
        })
        .collect();
    let invitations: Vec<Value> = call
        .invitations
        .iter()
        .map(|invitation| {
            json!({
                "inviter": invitation.inviter.as_str(),
                "invitee": invitation.invitee.as_str(),
                "invited_at_ms": invitation.invited.map(unix_millis),
                "offline": invitation.offline,
                "outcome": invitation.ended.map(|(_, outcome)| outcome.as_str()),
                "ended_at_ms": invitation.ended.map(|(at, _)| unix_millis(at)),
            })
        })
        .collect();
    let duration = ended.duration_since(call.started).unwrap_or_default();
    json!({
        "call_id": call_id.0.to_string(),
        "call_type": call_type_name(call.call_type),
        "caller": call.caller.as_str(),
        "started_at_ms": unix_millis(call.started),
        "ended_at_ms": unix_millis(ended),
        "duration_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        "outcome": if connected { "connected" } else { "not_connected" },
        "end_reason": reason_label(reason),
        "members": members,
        "invitations": invitations,
    })
}

fn open(path: &PathBuf) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends the records of the hub's events to `path`; reopens it when
/// `reopen` is notified.
pub(crate) async fn run(
    mut events: mpsc::Receiver<Arc<StampedEvent>>,
    path: PathBuf,
    reopen: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut recorder = CallRecorder::default();
    let mut file = match open(&path) {
        Ok(file) => Some(file),
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot open the call records file");
            None
        }
    };
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let Some(record) = recorder.record(&event) else { continue };
                let mut line = record.to_string();
                line.push('\n');
                // Small appends to a local file: brief enough for this task.
                let written = match &mut file {
                    Some(file) => file.write_all(line.as_bytes()),
                    None => Err(std::io::Error::other("not open")),
                };
                match written {
                    Ok(()) => metrics.call_record("written"),
                    Err(error) => {
                        metrics.call_record("failed");
                        warn!(path = %path.display(), %error, "call record not written");
                    }
                }
            }
            () = reopen.notified() => {
                match open(&path) {
                    Ok(reopened) => {
                        info!(path = %path.display(), "call records file reopened");
                        file = Some(reopened);
                    }
                    Err(error) => warn!(path = %path.display(), %error, "cannot reopen the call records file"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap_or_else(|error| panic!("{error}"))
    }

    const START_SECS: u64 = 1_000;

    fn at(secs: u64, event: CallEvent) -> StampedEvent {
        StampedEvent {
            at: UNIX_EPOCH + Duration::from_secs(START_SECS + secs),
            event,
            duration: None,
        }
    }

    /// Alice calls carol (busy) and bob (offline, answers 4 s later);
    /// they talk a minute and hang up.
    fn scripted_call(call_id: CallId) -> Vec<StampedEvent> {
        vec![
            at(
                0,
                CallEvent::Started {
                    call_id,
                    call_type: CallType::Audio,
                    caller: user("alice"),
                },
            ),
            at(
                0,
                CallEvent::Joined {
                    call_id,
                    user: user("alice"),
                    device: None,
                },
            ),
            at(
                0,
                CallEvent::InvitationEnded {
                    call_id,
                    inviter: user("alice"),
                    invitee: user("carol"),
                    outcome: InvitationOutcome::Busy,
                    offline: false,
                },
            ),
            at(
                0,
                CallEvent::Invited {
                    call_id,
                    inviter: user("alice"),
                    invitee: user("bob"),
                    timeout: Duration::from_secs(30),
                    offline: true,
                },
            ),
            at(
                4,
                CallEvent::InvitationEnded {
                    call_id,
                    inviter: user("alice"),
                    invitee: user("bob"),
                    outcome: InvitationOutcome::Answered,
                    offline: true,
                },
            ),
            at(
                4,
                CallEvent::Joined {
                    call_id,
                    user: user("bob"),
                    device: Some(DeviceId::new("bobs-phone").unwrap()),
                },
            ),
            at(
                64,
                CallEvent::Left {
                    call_id,
                    user: user("bob"),
                    reason: EndReason::Hangup,
                },
            ),
            at(
                64,
                CallEvent::Left {
                    call_id,
                    user: user("alice"),
                    reason: EndReason::Hangup,
                },
            ),
        ]
    }

    #[test]
    fn a_record_tells_the_whole_call() {
        let call_id = CallId(7);
        let events = scripted_call(call_id);
        let mut recorder = CallRecorder::default();
        for event in &events {
            assert_eq!(recorder.record(event), None);
        }
        let record = recorder
            .record(&at(
                64,
                CallEvent::Ended {
                    call_id,
                    reason: EndReason::Hangup,
                },
            ))
            .unwrap_or_else(|| panic!("no record"));
        assert_eq!(
            record,
            json!({
                "call_id": "7",
                "call_type": "audio",
                "caller": "alice",
                "started_at_ms": 1_000_000,
                "ended_at_ms": 1_064_000,
                "duration_ms": 64_000,
                "outcome": "connected",
                "end_reason": "hangup",
                "members": [
                    {"user_id": "alice", "device_id": null, "joined_at_ms": 1_000_000, "left_at_ms": 1_064_000, "left_reason": "hangup"},
                    {"user_id": "bob", "device_id": "bobs-phone", "joined_at_ms": 1_004_000, "left_at_ms": 1_064_000, "left_reason": "hangup"},
                ],
                "invitations": [
                    {"inviter": "alice", "invitee": "carol", "invited_at_ms": null, "offline": false, "outcome": "busy", "ended_at_ms": 1_000_000},
                    {"inviter": "alice", "invitee": "bob", "invited_at_ms": 1_000_000, "offline": true, "outcome": "answered", "ended_at_ms": 1_004_000},
                ],
            })
        );
        assert!(recorder.open.is_empty(), "an ended call is forgotten");
    }
}
