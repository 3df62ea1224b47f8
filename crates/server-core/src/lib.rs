#![doc = include_str!("../README.md")]

mod board;
mod cluster_board;
mod core;
mod output;

pub use board::{Board, BoardRefusal, ClusterStatus};
pub use cluster_board::ClusterBoard;
pub use core::{DrainState, Login, LoginAnswer, OutboxLimits, ServerCore, TokenSource};
pub use output::{Counted, MemberAt, RoutedMember, ServerOutput};
