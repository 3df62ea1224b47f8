#![doc = include_str!("../README.md")]

pub mod control;
pub mod lease;
pub mod link;
pub mod local;
pub mod node;
pub mod store;
pub mod wire;

pub use control::{Control, ControlOutput};
pub use lease::{Lease, LeaseReply, LeaseRequest, LeaseTiming};
pub use link::{ACK_EVERY, LinkBooks, LinkError};
pub use local::{LocalSession, LocalSessions};
pub use node::{ClusterNode, NodeConfig, NodeError, NodeOutput};
pub use store::{ControlHolder, MemoryStore, StoreReply, StoreRequest};
pub use wire::{ClusterMember, FromControl, LinkFrame, NodeConn, NodeId, ToControl};
