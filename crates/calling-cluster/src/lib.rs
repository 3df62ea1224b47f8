#![doc = include_str!("../README.md")]

pub mod control;
pub mod lease;
pub mod local;
pub mod node;
pub mod store;
pub mod trunk;
mod unanswered;
pub mod wire;

pub use control::{Control, ControlOutput};
pub use lease::{Lease, LeaseReply, LeaseRequest, LeaseTiming};
pub use local::{LocalSession, LocalSessions};
pub use node::{ClusterNode, NodeConfig, NodeError, NodeOutput};
pub use store::{ControlHolder, MemoryStore, StoreReply, StoreRequest};
pub use trunk::{ACK_EVERY, TrunkBooks, TrunkError};
pub use wire::{ClusterMember, FromControl, NodeConn, NodeId, ToControl, TrunkFrame};
