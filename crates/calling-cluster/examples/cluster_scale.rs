//! The cluster at internet scale, on the virtual clock: what the control
//! costs per login, per call set up and ended, per invitation that times
//! out, per logout; its memory per session; what a node's death costs; how
//! long a new control takes to rebuild every session; and what a node
//! keeps per session of its own clients.
//!
//! `cargo run --release -p calling-cluster --example cluster_scale -- [USERS] [NODES]`
//! (default 1,000,000 users on 100 nodes; `cargo xtask bench` runs it).
//!
//! Everything runs in this one thread, as the control's task runs in a
//! server: the nodes' clients are `ToControl` messages from `NODES` node
//! ids, in the order a busy cluster would interleave them, and the
//! control's outputs are drained after each as a server drains them. CPU
//! is this process's CPU time (10 ms resolution: every phase is long);
//! memory is the bytes the allocator holds, counted by this example's own
//! global allocator. No socket, no trunk encoding except where said (the
//! takeover's reports are encoded by the nodes and decoded by the control,
//! as they travel).

#![allow(
    unsafe_code,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, ErrorCode, UserId};
use calling_cluster::wire::{ReportedCall, RestoreReport, decode, encode};
use calling_cluster::{
    ClusterMember, ClusterNode, Control, ControlHolder, ControlOutput, FromControl, LocalSessions,
    NodeConfig, NodeId, NodeOutput, StoreReply, StoreRequest, ToControl, TrunkFrame,
};
use process_stats::ProcessStats;
use signaling_proto::{
    ClientMessage, ConnId, DeviceLogin, Output, PROTOCOL_VERSION, RequestId, ServerMessage,
    Switchboard, SwitchboardConfig,
};

/// Bytes the allocator holds for the program now. Counted with a load and
/// a store, not an atomic add: this program allocates from one thread, and
/// a locked add on every allocation would weigh in the CPU figures.
static LIVE: AtomicI64 = AtomicI64::new(0);

fn count(bytes: i64) {
    LIVE.store(LIVE.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
}

struct Counting;

fn signed(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(signed(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-signed(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(signed(new_size) - signed(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn cpu() -> Duration {
    ProcessStats::own()
        .map(|stats| stats.cpu)
        .unwrap_or_default()
}

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

/// The control and its clients: user `i` is connection `i / nodes` of node
/// `i % nodes`.
struct Cluster {
    control: Control,
    now: Instant,
    nodes: u32,
    ids: Vec<UserId>,
    next_request: u32,
    /// The call each user is rung for.
    rung: HashMap<usize, CallId>,
    /// Calls with their members, as the nodes last heard.
    calls: HashMap<CallId, (CallType, Vec<ClusterMember>)>,
    messages_out: u64,
}

impl Cluster {
    fn node_of(&self, user: usize) -> NodeId {
        NodeId(u32::try_from(user % self.nodes as usize).unwrap())
    }

    fn conn_of(&self, user: usize) -> u64 {
        (user / self.nodes as usize) as u64
    }

    fn user_at(&self, node: NodeId, conn: u64) -> usize {
        usize::try_from(conn).unwrap() * self.nodes as usize + node.0 as usize
    }

    /// One client input, and the control's outputs drained; the virtual
    /// clock moves 2 µs.
    fn input(&mut self, user: usize, message: ToControl) {
        self.now += Duration::from_micros(2);
        self.control
            .handle_from_node(self.now, self.node_of(user), message);
        self.drain();
    }

    fn message(&mut self, user: usize, message: ClientMessage) {
        let conn = self.conn_of(user);
        self.input(user, ToControl::Message { conn, message });
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request = self.next_request.wrapping_add(1);
        RequestId(self.next_request)
    }

    fn login(&mut self, user: usize) {
        let login = ToControl::Login {
            conn: self.conn_of(user),
            user: self.ids[user].clone(),
            protocol_version: PROTOCOL_VERSION,
            device: DeviceLogin::ONE_DEVICE,
        };
        self.input(user, login);
    }

    fn invite(&mut self, caller: usize, callee: usize) {
        let request_id = self.request_id();
        let invite = ClientMessage::Invite {
            request_id,
            call_id: None,
            user_ids: vec![self.ids[callee].clone()],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        };
        self.message(caller, invite);
    }

    fn accept(&mut self, callee: usize) {
        let call_id = self.rung.remove(&callee).expect("the callee was rung");
        let request_id = self.request_id();
        self.message(
            callee,
            ClientMessage::Accept {
                request_id,
                call_id,
            },
        );
    }

    fn hangup(&mut self, user: usize) {
        let request_id = self.request_id();
        self.message(user, ClientMessage::Hangup { request_id });
    }

    fn logout(&mut self, user: usize) {
        let request_id = self.request_id();
        self.message(user, ClientMessage::Logout { request_id });
    }

    /// What the nodes would carry out, kept as far as a client and a node
    /// need it here: who is rung, who is in which call.
    fn drain(&mut self) {
        while let Some(output) = self.control.poll_output() {
            let ControlOutput::ToNode { node, message } = output else {
                continue;
            };
            self.messages_out += 1;
            match message {
                FromControl::Send {
                    conn,
                    message: ServerMessage::Invited { call_id, .. },
                } => {
                    let user = self.user_at(node, conn);
                    self.rung.insert(user, call_id);
                }
                FromControl::Membership {
                    call_id,
                    call_type,
                    members,
                } => {
                    if members.is_empty() {
                        self.calls.remove(&call_id);
                    } else {
                        self.calls.insert(call_id, (call_type, members));
                    }
                }
                _ => {}
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.control.handle_timeout(self.now);
        self.drain();
    }
}

/// CPU per operation of `count` operations done by `run`, in µs, printed
/// (wall time where the CPU time is below its clock's resolution).
fn phase(label: &str, count: usize, run: impl FnOnce()) -> f64 {
    let start = cpu();
    let wall = Instant::now();
    run();
    let wall = wall.elapsed();
    let used = cpu().saturating_sub(start);
    let (spent, clock) = if used >= Duration::from_millis(200) {
        (used, "CPU")
    } else {
        (wall, "wall, the CPU clock's 10 ms too coarse")
    };
    let per = spent.as_secs_f64() * 1e6 / count.max(1) as f64;
    if count == 1 {
        println!("  {label}: {:.1} ms ({clock})", per / 1e3);
    } else {
        println!(
            "  {label}: {count} in {:.2} s ({clock}): {per:.2} µs each, {:.0} a second on one core",
            spent.as_secs_f64(),
            1e6 / per.max(1e-3)
        );
    }
    per
}

fn main() {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let users = args
        .next()
        .and_then(Result::ok)
        .unwrap_or(1_000_000)
        .max(1_000);
    let nodes = args
        .next()
        .and_then(Result::ok)
        .unwrap_or(100)
        .clamp(2, 10_000);
    let nodes = u32::try_from(nodes).unwrap();
    println!("cluster scale: {users} users on {nodes} nodes, one control, virtual clock");
    let ids: Vec<UserId> = (0..users)
        .map(|n| UserId::new(format!("user{n:07}")).unwrap())
        .collect();
    let config = SwitchboardConfig {
        node_id: 1,
        ..SwitchboardConfig::DEFAULT
    };
    let mut cluster = Cluster {
        control: Control::new(config.clone()),
        now: Instant::now(),
        nodes,
        ids,
        next_request: 0,
        rung: HashMap::new(),
        calls: HashMap::new(),
        messages_out: 0,
    };
    let (login, setup, calls) = traffic(&mut cluster, &config);
    let dead = node_death(&mut cluster, calls);
    takeover(&cluster, &config, dead);
    node_books(users / nodes as usize, nodes);
    let ids = std::mem::take(&mut cluster.ids);
    drop(cluster);
    println!("baseline, same run: one server's switchboard, no cluster, the same logins and calls");
    let (single_login, single_setup) = single_server(&ids, &config, calls);
    println!(
        "  call setups a second on one control core: {:.0} (target 20,000); the control costs {:.2}x one server's switchboard per login, {:.2}x per call setup",
        1e6 / setup,
        login / single_login,
        setup / single_setup
    );
}

/// Logins, calls set up and ended, invitations that time out, logouts and
/// logins again; the control's memory. CPU per login and per call setup,
/// and how many calls were set up.
fn traffic(cluster: &mut Cluster, config: &SwitchboardConfig) -> (f64, f64, usize) {
    let users = cluster.ids.len();
    let before = live();
    let login = phase("logins", users, || {
        for user in 0..users {
            cluster.login(user);
        }
    });
    let per_session = (live() - before) as f64 / users as f64;
    println!("  control memory per session (all idle): {per_session:.0} bytes");

    // A fifth of the users set up calls (caller 4k, callee 4k + 1: on two
    // nodes); half of those calls end again.
    let calls = users / 10;
    let setup = phase("call setups (invite, ring, accept, enter)", calls, || {
        for call in 0..calls {
            cluster.invite(4 * call, 4 * call + 1);
            cluster.accept(4 * call + 1);
        }
    });
    phase("calls ended (hang up)", calls / 2, || {
        for call in 0..calls / 2 {
            cluster.hangup(4 * call);
        }
    });
    // Invitations nobody answers: from idle users to idle users.
    let unanswered = users / 40;
    phase(
        "invitations that time out (invite, ring, time out)",
        unanswered,
        || {
            for index in 0..unanswered {
                cluster.invite(4 * index + 2, 4 * index + 3);
            }
            cluster.advance(config.default_invite_timeout + Duration::from_secs(1));
        },
    );
    cluster.rung.clear();
    let churn = users / 10;
    phase("logouts", churn, || {
        for index in 0..churn {
            cluster.logout(4 * index + 2);
        }
    });
    phase("logins again", churn, || {
        for index in 0..churn {
            cluster.login(4 * index + 2);
        }
    });
    let in_calls = cluster.calls.len();
    let per_session = (live() - before) as f64 / users as f64;
    println!("  control memory per session ({in_calls} calls in progress): {per_session:.0} bytes");
    println!(
        "  messages the control sent so far: {}",
        cluster.messages_out
    );

    (login, setup, calls)
}

/// A node dies: its sessions end, their calls for the others. Which node.
fn node_death(cluster: &mut Cluster, calls: usize) -> NodeId {
    // A node with callees of calls still in progress.
    let dead = cluster.node_of(4 * (calls - 1) + 1);
    let dead_sessions = cluster.ids.len() / cluster.nodes as usize;
    let dead_in_calls = cluster
        .calls
        .values()
        .flat_map(|(_, members)| members)
        .filter(|member| member.at.node == dead)
        .count();
    let messages = cluster.messages_out;
    phase(
        &format!("a node's death ({dead_sessions} sessions, {dead_in_calls} in calls)"),
        1,
        || {
            cluster.now += Duration::from_millis(1);
            cluster.control.handle_node_lost(cluster.now, dead);
            cluster.drain();
        },
    );
    println!(
        "    it sent the others {} messages",
        cluster.messages_out - messages
    );

    dead
}

/// The baseline: the same logins and call setups straight through one
/// server's `Switchboard`, no control in front.
fn single_server(ids: &[UserId], config: &SwitchboardConfig, calls: usize) -> (f64, f64) {
    let mut switchboard = Switchboard::new(config.clone());
    let mut now = Instant::now();
    let mut rung: HashMap<usize, CallId> = HashMap::new();
    let drain = |switchboard: &mut Switchboard, rung: &mut HashMap<usize, CallId>| {
        while let Some(output) = switchboard.poll_output() {
            if let Output::Send {
                conn,
                message: ServerMessage::Invited { call_id, .. },
            } = output
            {
                rung.insert(usize::try_from(conn.0).unwrap(), call_id);
            }
        }
    };
    let login = phase("logins", ids.len(), || {
        for (user, id) in ids.iter().enumerate() {
            now += Duration::from_micros(2);
            let conn = ConnId(user as u64);
            switchboard.handle_device_login(
                now,
                conn,
                id.clone(),
                PROTOCOL_VERSION,
                DeviceLogin::ONE_DEVICE,
            );
            drain(&mut switchboard, &mut rung);
        }
    });
    let setup = phase("call setups (invite, ring, accept, enter)", calls, || {
        for call in 0..calls {
            let (caller, callee) = (4 * call, 4 * call + 1);
            now += Duration::from_micros(2);
            let invite = ClientMessage::Invite {
                request_id: RequestId(1),
                call_id: None,
                user_ids: vec![ids[callee].clone()],
                call_type: CallType::Audio,
                timeout_ms: None,
                user_data: None,
            };
            switchboard.handle_message(now, ConnId(caller as u64), invite);
            drain(&mut switchboard, &mut rung);
            let call_id = rung.remove(&callee).expect("the callee was rung");
            now += Duration::from_micros(2);
            let accept = ClientMessage::Accept {
                request_id: RequestId(2),
                call_id,
            };
            switchboard.handle_message(now, ConnId(callee as u64), accept);
            drain(&mut switchboard, &mut rung);
        }
    });
    (login, setup)
}

/// A new control rebuilds every surviving session from the nodes' reports,
/// encoded by the nodes (in parallel, not timed) and decoded by it.
fn takeover(cluster: &Cluster, config: &SwitchboardConfig, dead: NodeId) {
    let mut call_of: HashMap<usize, ReportedCall> = HashMap::new();
    for (call_id, (call_type, members)) in &cluster.calls {
        let users: Vec<UserId> = members.iter().map(|member| member.user.clone()).collect();
        for member in members {
            call_of.insert(
                cluster.user_at(member.at.node, member.at.conn),
                ReportedCall {
                    call_id: *call_id,
                    call_type: *call_type,
                    flow: member.flow,
                    members: users.clone(),
                },
            );
        }
    }
    let mut frames: Vec<(NodeId, Vec<u8>)> = Vec::with_capacity(cluster.ids.len());
    for (user, id) in cluster.ids.iter().enumerate() {
        let node = cluster.node_of(user);
        if node == dead {
            continue;
        }
        let report = RestoreReport {
            conn: cluster.conn_of(user),
            user: id.clone(),
            device: DeviceLogin::ONE_DEVICE,
            protocol_version: PROTOCOL_VERSION,
            muted: false,
            detached: false,
            call: call_of.remove(&user),
        };
        let frame = TrunkFrame::Message(ToControl::Restore(report));
        frames.push((node, encode(&frame).unwrap()));
    }
    let report_bytes: usize = frames.iter().map(|(_, bytes)| bytes.len()).sum();
    let live_nodes: BTreeSet<NodeId> = (0..cluster.nodes)
        .map(NodeId)
        .filter(|node| *node != dead)
        .collect();
    let sessions = frames.len();
    let before = live();
    let now = cluster.now + Duration::from_secs(5);
    let mut control = Control::taking_over(config.clone(), now + Duration::from_secs(2));
    control.expect_reports(now, live_nodes.clone());
    let mut decoded = Vec::with_capacity(sessions);
    let decoding = phase(
        "takeover: the control decodes the reports",
        sessions,
        || {
            for (node, bytes) in &frames {
                let TrunkFrame::Message(message) = decode::<ToControl>(bytes).unwrap() else {
                    unreachable!()
                };
                decoded.push((*node, message));
            }
        },
    );
    let rebuilding = phase(
        "takeover: the control rebuilds the sessions",
        sessions,
        || {
            for (node, message) in decoded {
                control.handle_from_node(now, node, message);
            }
            for node in &live_nodes {
                control.handle_from_node(now, *node, ToControl::RestoreDone);
            }
            while control.poll_output().is_some() {}
        },
    );
    println!(
        "    together {:.2} s for {sessions} sessions",
        (decoding + rebuilding) * sessions as f64 / 1e6
    );
    assert!(!control.is_restoring(), "every node reported");
    println!(
        "    reports: {:.1} MB on the trunks ({:.0} bytes a session); new control memory per session: {:.0} bytes",
        report_bytes as f64 / 1e6,
        report_bytes as f64 / sessions as f64,
        (live() - before) as f64 / sessions as f64
    );
    assert_eq!(control.switchboard().online_count(), sessions);
}

/// What a node keeps per session of its own clients: its books of them
/// (`LocalSessions`) and its trunk's, once the control has acknowledged
/// and answered; a tenth of them in calls.
fn node_books(sessions: usize, nodes: u32) {
    let now = Instant::now();
    let me = NodeId(1);
    let mut node = ClusterNode::new(NodeConfig::new(me, "node-1:7000"), now);
    let holder = ControlHolder {
        node: NodeId(2),
        term: 1,
        addr: "node-2:7000".into(),
    };
    let mut books = LocalSessions::new(me, SwitchboardConfig::DEFAULT.resume_grace);
    let pump = |node: &mut ClusterNode, books: &mut LocalSessions| {
        while let Some(output) = node.poll_output() {
            match output {
                NodeOutput::Store { id, request } => {
                    let reply = match request {
                        StoreRequest::ClaimControl { .. } => {
                            StoreReply::Control(Some(holder.clone()))
                        }
                        StoreRequest::LiveNodes => StoreReply::Nodes(Vec::new()),
                        _ => StoreReply::Done,
                    };
                    node.handle_store_reply(now, id, reply);
                }
                NodeOutput::Deliver(message) => books.record_delivery(&message),
                _ => {}
            }
        }
    };
    pump(&mut node, &mut books);
    node.handle_control_trunk_up(now);
    let hello = TrunkFrame::Hello {
        node: NodeId(2),
        term: 1,
        incarnation: 0,
        received: 0,
    };
    node.handle_control_frame(now, hello).unwrap();
    pump(&mut node, &mut books);
    let before = live();
    for conn in 0..sessions as u64 {
        let login = ToControl::Login {
            conn,
            user: UserId::new(format!("user{:07}", conn * u64::from(nodes) + 1)).unwrap(),
            protocol_version: PROTOCOL_VERSION,
            device: DeviceLogin::ONE_DEVICE,
        };
        books.forward(&mut node, now, login).unwrap();
        pump(&mut node, &mut books);
    }
    for conn in 0..sessions as u64 {
        let answer = FromControl::Send {
            conn,
            message: ServerMessage::LoginResult {
                protocol_version: PROTOCOL_VERSION,
                code: ErrorCode::OK,
                message: String::new(),
            },
        };
        node.handle_control_frame(now, TrunkFrame::Message(answer))
            .unwrap();
        pump(&mut node, &mut books);
    }
    for conn in (0..sessions as u64).step_by(10) {
        let members = vec![
            ClusterMember {
                user: UserId::new(format!("user{:07}", conn * u64::from(nodes) + 1)).unwrap(),
                flow: signaling_proto::FlowId(1),
                at: calling_cluster::NodeConn { node: me, conn },
            },
            ClusterMember {
                user: UserId::new(format!("peer{conn:07}")).unwrap(),
                flow: signaling_proto::FlowId(2),
                at: calling_cluster::NodeConn {
                    node: NodeId(3),
                    conn,
                },
            },
        ];
        let membership = FromControl::Membership {
            call_id: CallId(conn + 1),
            call_type: CallType::Audio,
            members,
        };
        node.handle_control_frame(now, TrunkFrame::Message(membership))
            .unwrap();
        pump(&mut node, &mut books);
    }
    let received = sessions as u64;
    node.handle_control_frame(now, TrunkFrame::Ack { received })
        .unwrap();
    node.handle_timeout(now + Duration::from_secs(1));
    pump(&mut node, &mut books);
    assert_eq!(node.open_requests(), 0, "every login answered");
    println!(
        "  node memory per session of its own clients ({sessions} sessions, a tenth in calls): {:.0} bytes",
        (live() - before) as f64 / sessions as f64
    );
}
