//! OpenCalling's cluster rules, sans-IO: how several server nodes share one
//! address book and one set of call rules through a shared store (Redis)
//! and links between them.
//!
//! The design (docs/decisions/0007): one node at a time holds the
//! **control** role, a lease in the store counted in terms. It hosts the
//! cluster's one [`Switchboard`](signaling_proto::Switchboard) in a
//! [`Control`]: every client's login and message, on whatever node it
//! arrived, travels over a node link to the control, and the switchboard's
//! decisions travel back to the nodes the clients are on. Every rule of a
//! single server (busy, glare, one clock per call, a second login kicking
//! the first) therefore holds across nodes without a distributed protocol
//! of its own. The store holds only leases: the node registry and the
//! control role; media never waits for it.
//!
//! - [`wire`]: what nodes and the control say to each other;
//! - [`link`]: exactly-once, in-order delivery over links that break;
//! - [`lease`]: holding something the store grants for a while;
//! - [`store`]: what is asked of the store, and [`MemoryStore`] for tests;
//! - [`control`]: the switchboard of record for many nodes;
//! - [`node`]: one node, tying the rest together.
//!
//! Never here: sockets, tasks, clocks, Redis. Every input carries `now`;
//! the server is the glue.

pub mod control;
pub mod lease;
pub mod link;
pub mod node;
pub mod store;
pub mod wire;

pub use control::{Control, ControlOutput};
pub use lease::{Lease, LeaseReply, LeaseRequest, LeaseTiming};
pub use link::{ACK_EVERY, LinkBooks, LinkError};
pub use node::{ClusterNode, NodeConfig, NodeError, NodeOutput};
pub use store::{ControlHolder, MemoryStore, StoreReply, StoreRequest};
pub use wire::{ClusterMember, FromControl, LinkFrame, NodeConn, NodeId, ToControl};
