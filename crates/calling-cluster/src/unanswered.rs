//! The requests a node forwarded to the control and has not seen answered.
//!
//! A trunk's books make delivery exactly-once while one control lives. When
//! it dies, what it received and never answered dies with it, and so does
//! what it answered while the answer was on its way. A node therefore keeps
//! each request until the answer passes through it, and after a takeover
//! sends the ones still open to the new control, which answers each of them
//! once: the client sees one answer, whichever control gave it.
//!
//! A request is a login, a resume, or a client message with a request id;
//! its answer is the login's result, the resume's outcome, or the `Ack` or
//! `Error` naming that id. A session's end (closed by the control, or
//! expelled by the node) forgets its requests: nobody waits for them.

use std::collections::BTreeMap;

use signaling_proto::{RequestId, ServerMessage};
use tracing::warn;

use crate::wire::{FromControl, ToControl};

/// What identifies a request among one connection's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Asked {
    Login,
    Resume,
    Request(RequestId),
}

/// A node's open requests, oldest first. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Unanswered {
    /// By the order the node forwarded them.
    requests: BTreeMap<u64, ToControl>,
    /// Each open request's place in `requests`, by connection.
    places: BTreeMap<(u64, Asked), u64>,
    next: u64,
    capacity: usize,
}

impl Unanswered {
    /// Keeps at most `capacity` requests (the oldest go first, with a
    /// warning: a control that answers nothing for that long is gone).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            requests: BTreeMap::new(),
            places: BTreeMap::new(),
            next: 0,
            capacity,
        }
    }

    /// How many wait for an answer.
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// A client's input on its way to the control.
    pub(crate) fn forwarded(&mut self, message: &ToControl) {
        let (conn, asked) = match message {
            ToControl::Login { conn, .. } => (*conn, Asked::Login),
            ToControl::Resume { conn } => (*conn, Asked::Resume),
            ToControl::Message { conn, message } => match message.request_id() {
                Some(id) => (*conn, Asked::Request(id)),
                None => return,
            },
            ToControl::Expelled { conn } => {
                self.forget_connection(*conn);
                return;
            }
            ToControl::Disconnected { .. }
            | ToControl::Congested { .. }
            | ToControl::Restore(_)
            | ToControl::RestoreDone => return,
        };
        let place = self.next;
        self.next += 1;
        // A client that reuses a request id gets one answer for the two.
        if let Some(earlier) = self.places.insert((conn, asked), place) {
            self.requests.remove(&earlier);
        }
        self.requests.insert(place, message.clone());
        if self.requests.len() > self.capacity
            && let Some((_, oldest)) = self.requests.pop_first()
        {
            warn!("the control has left too many requests unanswered: the oldest is forgotten");
            self.places
                .retain(|_, kept| self.requests.contains_key(kept));
            drop(oldest);
        }
    }

    /// Something the control sent this node: an answer closes its request.
    pub(crate) fn delivered(&mut self, message: &FromControl) {
        let (conn, asked) = match message {
            FromControl::Send { conn, message } => match message {
                ServerMessage::LoginResult { .. } => (*conn, Asked::Login),
                ServerMessage::Ack { request_id, .. }
                | ServerMessage::Error {
                    request_id: Some(request_id),
                    ..
                } => (*conn, Asked::Request(*request_id)),
                _ => return,
            },
            FromControl::Resumed { conn, .. } => (*conn, Asked::Resume),
            FromControl::Close { conn, .. } => {
                self.forget_connection(*conn);
                return;
            }
            FromControl::Membership { .. } => return,
        };
        if let Some(place) = self.places.remove(&(conn, asked)) {
            self.requests.remove(&place);
        }
    }

    /// The open requests, oldest first, for a new control; they stay open
    /// until it answers.
    pub(crate) fn to_resend(&self) -> impl Iterator<Item = &ToControl> {
        self.requests.values()
    }

    /// Every session of the node is over.
    pub(crate) fn clear(&mut self) {
        self.requests.clear();
        self.places.clear();
    }

    fn forget_connection(&mut self, conn: u64) {
        let open: Vec<(u64, Asked)> = self
            .places
            .range((conn, Asked::Login)..)
            .take_while(|((of, _), _)| *of == conn)
            .map(|(key, _)| *key)
            .collect();
        for key in open {
            if let Some(place) = self.places.remove(&key) {
                self.requests.remove(&place);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use calling_api::{CallId, ErrorCode, UserId};
    use signaling_proto::{ClientMessage, DeviceLogin};

    use super::*;

    fn hangup(conn: u64, id: u32) -> ToControl {
        ToControl::Message {
            conn,
            message: ClientMessage::Hangup {
                request_id: RequestId(id),
            },
        }
    }

    fn ack(conn: u64, id: u32) -> FromControl {
        FromControl::Send {
            conn,
            message: ServerMessage::Ack {
                request_id: RequestId(id),
                call_id: None,
            },
        }
    }

    fn login(conn: u64) -> ToControl {
        ToControl::Login {
            conn,
            user: UserId::new("alice").unwrap(),
            protocol_version: 5,
            device: DeviceLogin::ONE_DEVICE,
        }
    }

    #[test]
    fn an_answer_closes_its_request_and_only_its_own() {
        let mut open = Unanswered::new(100);
        open.forwarded(&login(1));
        open.forwarded(&hangup(1, 7));
        open.forwarded(&hangup(2, 7));
        open.forwarded(&ToControl::Resume { conn: 3 });
        open.forwarded(&ToControl::Disconnected { conn: 4 });
        assert_eq!(open.len(), 4, "a disconnection asks nothing");
        open.delivered(&ack(2, 7));
        open.delivered(&FromControl::Send {
            conn: 1,
            message: ServerMessage::LoginResult {
                protocol_version: 5,
                code: ErrorCode::OK,
                message: String::new(),
            },
        });
        open.delivered(&FromControl::Send {
            conn: 1,
            message: ServerMessage::Cancelled { call_id: CallId(9) },
        });
        let left: Vec<_> = open.to_resend().cloned().collect();
        assert_eq!(left, [hangup(1, 7), ToControl::Resume { conn: 3 }]);
        open.delivered(&FromControl::Resumed {
            conn: 3,
            resumed: true,
        });
        open.delivered(&FromControl::Send {
            conn: 1,
            message: ServerMessage::Error {
                request_id: Some(RequestId(7)),
                code: ErrorCode::NOT_IN_CALL,
                message: String::new(),
            },
        });
        assert_eq!(open.len(), 0);
    }

    #[test]
    fn a_sessions_end_forgets_its_requests_and_the_oldest_go_past_capacity() {
        let mut open = Unanswered::new(3);
        open.forwarded(&hangup(1, 1));
        open.forwarded(&hangup(2, 1));
        open.forwarded(&hangup(1, 2));
        open.delivered(&FromControl::Close {
            conn: 1,
            code: ErrorCode::KICKED_OFFLINE,
        });
        assert_eq!(
            open.to_resend().cloned().collect::<Vec<_>>(),
            [hangup(2, 1)]
        );
        open.forwarded(&hangup(3, 1));
        open.forwarded(&ToControl::Expelled { conn: 2 });
        assert_eq!(
            open.to_resend().cloned().collect::<Vec<_>>(),
            [hangup(3, 1)]
        );
        for id in 2..=5 {
            open.forwarded(&hangup(3, id));
        }
        let left: Vec<_> = open.to_resend().cloned().collect();
        assert_eq!(left, [hangup(3, 3), hangup(3, 4), hangup(3, 5)]);
        open.delivered(&ack(3, 1));
        assert_eq!(
            open.len(),
            3,
            "a forgotten request's late answer changes nothing"
        );
    }
}
