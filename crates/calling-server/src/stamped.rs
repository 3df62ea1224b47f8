//! [`StampedEvent`]: a call event as the operator's side receives it (the
//! metrics, the webhooks, the call records): stamped with the wall clock.

use std::time::{Duration, SystemTime};

use signaling_proto::CallEvent;

/// A call event with the wall-clock time it happened, and for an `Ended`
/// how long the call lasted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampedEvent {
    /// When.
    pub at: SystemTime,
    /// What.
    pub event: CallEvent,
    /// For [`CallEvent::Ended`]: from `Started` to the end.
    pub duration: Option<Duration>,
}
