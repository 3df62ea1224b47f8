//! What a relay's own event loop over quinn-proto costs per forwarded
//! datagram, on real sockets, beside the same loop forwarding plain UDP.
//!
//! `cargo run --release -p signaling-quic --example relay_loop [CALLS,…] [SECONDS] [spread]`
//!
//! A measuring prototype for the relay's thread-per-core loop (issue 33),
//! not the server: no signaling, no admission, no Retry. One thread (the
//! relay, pinned to CPU 0) owns a UDP socket and the server's quinn-proto
//! endpoint with our transport settings and TLS 1.3; each pass it takes
//! every waiting packet with `recvmmsg`, feeds them to their connections,
//! hands each audio datagram to the other member's connection in the same
//! pass, runs the timers that are due, and sends everything the pass
//! produced with `sendmmsg` — no task, channel or lock per datagram.
//! Another thread (the callers, pinned to CPU 1) runs both members of every
//! 1v1 call on one client endpoint and socket, each sending an 80-byte
//! datagram every 20 ms, and measures loss and relay delay.
//!
//! Beside it, in the same run and with the same callers' loop, the relay
//! thread as a plain UDP forwarder (`recvmmsg`, `sendmmsg`, no QUIC): the
//! floor any relay of this shape pays the kernel. The relay thread's CPU is
//! read from `/proc/self/task/TID/stat`, as `calling-load` reads a server's.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]
// recvmmsg, sendmmsg, poll and the thread's affinity through libc.
#![allow(unsafe_code)]

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("relay_loop uses recvmmsg and sendmmsg: Linux only");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use bytes::{Bytes, BytesMut};
    use quinn_proto::{
        ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
        ServerConfig,
    };
    use signaling_quic::{ServerIdentity, ServerTrust, client_config, server_config};

    const FRAME: Duration = Duration::from_millis(20);
    const PAYLOAD: usize = 80;
    /// Packets taken or sent per system call.
    const BATCH: usize = 64;
    const PACKET_ROOM: usize = 2048;

    /// Where one run's relay thread stands, read by the main thread.
    #[derive(Default)]
    struct Progress {
        thread_id: AtomicI32,
        callers_thread_id: AtomicI32,
        forwarded: AtomicU64,
        packets_in: AtomicU64,
        packets_out: AtomicU64,
        system_calls: AtomicU64,
        stop: AtomicBool,
    }

    impl Progress {
        fn publish(&self, forwarded: u64, io: &BatchIo) {
            self.forwarded.store(forwarded, Ordering::Relaxed);
            self.packets_in.store(io.packets_in, Ordering::Relaxed);
            self.packets_out.store(io.packets_out, Ordering::Relaxed);
            self.system_calls
                .store(io.system_calls.get(), Ordering::Relaxed);
        }

        /// Forwarded datagrams, packets in, packets out, system calls.
        fn counts(&self) -> [u64; 4] {
            [
                &self.forwarded,
                &self.packets_in,
                &self.packets_out,
                &self.system_calls,
            ]
            .map(|count| count.load(Ordering::Relaxed))
        }
    }

    /// `recvmmsg` and `sendmmsg` on one IPv4 socket, with their buffers.
    struct BatchIo {
        socket: UdpSocket,
        receive: Vec<[u8; PACKET_ROOM]>,
        received: Vec<(usize, SocketAddr)>,
        to_send: Vec<(SocketAddr, Vec<u8>)>,
        spare: Vec<Vec<u8>>,
        packets_in: u64,
        packets_out: u64,
        system_calls: std::cell::Cell<u64>,
    }

    impl BatchIo {
        fn new(socket: UdpSocket) -> Self {
            socket.set_nonblocking(true).unwrap();
            Self {
                socket,
                receive: vec![[0; PACKET_ROOM]; BATCH],
                received: Vec::with_capacity(BATCH),
                to_send: Vec::with_capacity(BATCH * 4),
                spare: Vec::new(),
                packets_in: 0,
                packets_out: 0,
                system_calls: std::cell::Cell::new(0),
            }
        }

        /// Sleeps until a packet waits or `deadline` passes.
        fn wait(&self, deadline: Option<Instant>) {
            let timeout_ms = deadline.map_or(5, |deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                i32::try_from(left.as_micros().div_ceil(1000))
                    .unwrap_or(5)
                    .min(5)
            });
            let mut poll = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            self.system_calls.set(self.system_calls.get() + 1);
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&raw mut poll, 1, timeout_ms) };
        }

        /// Takes up to a batch of waiting packets into `received`.
        fn receive_batch(&mut self) -> usize {
            self.received.clear();
            // SAFETY: plain C structs, zero is a valid value for each.
            let mut addresses: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
            let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for index in 0..BATCH {
                iovecs[index].iov_base = self.receive[index].as_mut_ptr().cast();
                iovecs[index].iov_len = PACKET_ROOM;
                point(
                    &mut headers[index],
                    &mut addresses[index],
                    &mut iovecs[index],
                );
            }
            // SAFETY: every header points at live buffers of the sizes given.
            let count = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            self.system_calls.set(self.system_calls.get() + 1);
            for index in 0..usize::try_from(count).unwrap_or(0) {
                let address = addresses[index];
                let from = SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                    u16::from_be(address.sin_port),
                );
                self.received
                    .push((headers[index].msg_len as usize, SocketAddr::V4(from)));
            }
            self.packets_in += self.received.len() as u64;
            self.received.len()
        }

        fn buffer(&mut self) -> Vec<u8> {
            self.spare.pop().unwrap_or_else(|| Vec::with_capacity(1500))
        }

        fn queue(&mut self, to: SocketAddr, packet: Vec<u8>) {
            self.to_send.push((to, packet));
        }

        /// Sends everything queued, a batch per system call.
        fn send_all(&mut self) {
            let mut sent = 0;
            while sent < self.to_send.len() {
                let chunk = &self.to_send[sent..(sent + BATCH).min(self.to_send.len())];
                // SAFETY: plain C structs, zero is a valid value for each.
                let mut addresses: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
                let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
                let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
                for (index, (to, packet)) in chunk.iter().enumerate() {
                    let SocketAddr::V4(to) = to else {
                        unreachable!("IPv4 loopback only")
                    };
                    addresses[index].sin_family = libc::AF_INET as libc::sa_family_t;
                    addresses[index].sin_port = to.port().to_be();
                    addresses[index].sin_addr.s_addr = u32::from(*to.ip()).to_be();
                    iovecs[index].iov_base = packet.as_ptr().cast_mut().cast();
                    iovecs[index].iov_len = packet.len();
                    point(
                        &mut headers[index],
                        &mut addresses[index],
                        &mut iovecs[index],
                    );
                }
                // SAFETY: every header points at live buffers of the sizes given.
                let count = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        headers.as_mut_ptr(),
                        chunk.len() as u32,
                        0,
                    )
                };
                self.system_calls.set(self.system_calls.get() + 1);
                if count <= 0 {
                    // A full socket buffer: what is left is lost, as a
                    // network would lose it.
                    break;
                }
                sent += usize::try_from(count).unwrap_or(0);
            }
            self.packets_out += sent as u64;
            for (_, mut packet) in self.to_send.drain(..) {
                packet.clear();
                self.spare.push(packet);
            }
        }
    }

    /// Points a message header at its address and its one buffer.
    fn point(header: &mut libc::mmsghdr, address: &mut libc::sockaddr_in, iovec: &mut libc::iovec) {
        header.msg_hdr.msg_name = std::ptr::from_mut(address).cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        header.msg_hdr.msg_iov = std::ptr::from_mut(iovec);
        header.msg_hdr.msg_iovlen = 1;
    }

    /// One endpoint's connections and their timers, driven by one thread.
    struct Node {
        io: BatchIo,
        endpoint: Endpoint,
        connections: Vec<Option<Connection>>,
        scheduled: Vec<Option<Instant>>,
        timers: BinaryHeap<Reverse<(Instant, usize)>>,
        /// Connections touched in this pass, each once.
        dirty: Vec<usize>,
        marked: Vec<bool>,
        scratch: Vec<u8>,
    }

    impl Node {
        fn new(socket: UdpSocket, server: Option<Arc<ServerConfig>>) -> Self {
            Self {
                io: BatchIo::new(socket),
                endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), server, true, None),
                connections: Vec::new(),
                scheduled: Vec::new(),
                timers: BinaryHeap::new(),
                dirty: Vec::new(),
                marked: Vec::new(),
                scratch: Vec::with_capacity(1500),
            }
        }

        fn insert(&mut self, handle: ConnectionHandle, connection: Connection) {
            let index = handle.0;
            if self.connections.len() <= index {
                self.connections.resize_with(index + 1, || None);
                self.scheduled.resize(index + 1, None);
                self.marked.resize(index + 1, false);
            }
            self.connections[index] = Some(connection);
            self.mark(index);
        }

        fn mark(&mut self, index: usize) {
            if !self.marked[index] {
                self.marked[index] = true;
                self.dirty.push(index);
            }
        }

        fn wait(&self) {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            self.io.wait(next);
        }

        /// Every waiting packet into its connection; returns how many.
        fn receive(&mut self, now: Instant) -> usize {
            let mut total = 0;
            loop {
                let count = self.io.receive_batch();
                total += count;
                for index in 0..count {
                    let (length, from) = self.io.received[index];
                    let data = BytesMut::from(&self.io.receive[index][..length]);
                    self.scratch.clear();
                    match self
                        .endpoint
                        .handle(now, from, None, None, data, &mut self.scratch)
                    {
                        Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                            if let Some(connection) = &mut self.connections[handle.0] {
                                connection.handle_event(event);
                                self.mark(handle.0);
                            }
                        }
                        Some(DatagramEvent::NewConnection(incoming)) => {
                            match self.endpoint.accept(incoming, now, &mut self.scratch, None) {
                                Ok((handle, connection)) => self.insert(handle, connection),
                                Err(error) => {
                                    if let Some(transmit) = error.response {
                                        let mut packet = self.io.buffer();
                                        packet.extend_from_slice(&self.scratch[..transmit.size]);
                                        self.io.queue(from, packet);
                                    }
                                }
                            }
                        }
                        Some(DatagramEvent::Response(transmit)) => {
                            let mut packet = self.io.buffer();
                            packet.extend_from_slice(&self.scratch[..transmit.size]);
                            self.io.queue(transmit.destination, packet);
                        }
                        None => {}
                    }
                }
                if count < BATCH {
                    return total;
                }
            }
        }

        /// Runs the timers that are due.
        fn expire(&mut self, now: Instant) {
            while let Some(Reverse((at, index))) = self.timers.peek().copied() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if self.scheduled[index] != Some(at) {
                    continue;
                }
                self.scheduled[index] = None;
                if let Some(connection) = &mut self.connections[index] {
                    connection.handle_timeout(now);
                    self.mark(index);
                }
            }
        }

        /// The touched connections' endpoint events, packets and timers,
        /// then one `sendmmsg` pass.
        fn flush(&mut self, now: Instant) {
            for position in 0..self.dirty.len() {
                let index = self.dirty[position];
                self.marked[index] = false;
                let Some(connection) = &mut self.connections[index] else {
                    continue;
                };
                let handle = ConnectionHandle(index);
                while let Some(event) = connection.poll_endpoint_events() {
                    if let Some(back) = self.endpoint.handle_event(handle, event) {
                        connection.handle_event(back);
                    }
                }
                loop {
                    let mut packet = self.io.buffer();
                    let Some(transmit) = connection.poll_transmit(now, 1, &mut packet) else {
                        self.io.spare.push(packet);
                        break;
                    };
                    packet.truncate(transmit.size);
                    self.io.queue(transmit.destination, packet);
                }
                let deadline = connection.poll_timeout();
                if deadline != self.scheduled[index] {
                    self.scheduled[index] = deadline;
                    if let Some(at) = deadline {
                        self.timers.push(Reverse((at, index)));
                    }
                }
                if connection.is_drained() {
                    self.connections[index] = None;
                }
            }
            self.dirty.clear();
            self.io.send_all();
        }
    }

    /// The relay thread over QUIC: members pair by the call number their
    /// datagrams start with; each datagram goes to the other member.
    fn quic_relay(socket: UdpSocket, config: Arc<ServerConfig>, progress: &Progress) {
        let mut node = Node::new(socket, Some(config));
        let mut partner: Vec<Option<usize>> = Vec::new();
        let mut waiting: HashMap<u32, usize> = HashMap::new();
        let mut forwarded = 0_u64;
        let mut arrived: Vec<Bytes> = Vec::new();
        while !progress.stop.load(Ordering::Relaxed) {
            node.wait();
            let now = Instant::now();
            node.receive(now);
            node.expire(now);
            let mut position = 0;
            while position < node.dirty.len() {
                let index = node.dirty[position];
                position += 1;
                if partner.len() < node.connections.len() {
                    partner.resize(node.connections.len(), None);
                }
                let Some(connection) = &mut node.connections[index] else {
                    continue;
                };
                while connection.poll().is_some() {}
                while let Some(datagram) = connection.datagrams().recv() {
                    arrived.push(datagram);
                }
                for datagram in arrived.drain(..) {
                    let target = match partner[index] {
                        Some(target) => target,
                        None => {
                            let call = u32::from_le_bytes(datagram[..4].try_into().unwrap());
                            match waiting.get(&call) {
                                Some(&other) if other != index => {
                                    partner[index] = Some(other);
                                    partner[other] = Some(index);
                                    waiting.remove(&call);
                                    other
                                }
                                _ => {
                                    waiting.insert(call, index);
                                    continue;
                                }
                            }
                        }
                    };
                    if let Some(listener) = &mut node.connections[target]
                        && listener.datagrams().send(datagram, true).is_ok()
                    {
                        forwarded += 1;
                        node.mark(target);
                    }
                }
            }
            node.flush(now);
            progress.publish(forwarded, &node.io);
        }
    }

    /// The relay thread as a plain UDP forwarder: each packet goes back to
    /// the callers' socket (the caller's partner is found there by the
    /// call number, as the QUIC relay finds it by connection).
    fn plain_relay(socket: UdpSocket, progress: &Progress) {
        let mut io = BatchIo::new(socket);
        let mut forwarded = 0_u64;
        while !progress.stop.load(Ordering::Relaxed) {
            io.wait(None);
            loop {
                let count = io.receive_batch();
                for index in 0..count {
                    let (length, from) = io.received[index];
                    let mut packet = io.buffer();
                    packet.extend_from_slice(&io.receive[index][..length]);
                    io.queue(from, packet);
                    forwarded += 1;
                }
                if count < BATCH {
                    break;
                }
            }
            io.send_all();
            progress.publish(forwarded, &io);
        }
    }

    /// The relay thread as the simplest forwarder: one blocking
    /// `recvfrom` and one `sendto` a packet (`calling-load`'s baseline
    /// does the same through tokio).
    fn simple_relay(socket: &UdpSocket, progress: &Progress) {
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut buffer = [0_u8; PACKET_ROOM];
        let mut forwarded = 0_u64;
        while !progress.stop.load(Ordering::Relaxed) {
            if let Ok((length, from)) = socket.recv_from(&mut buffer)
                && socket.send_to(&buffer[..length], from).is_ok()
            {
                forwarded += 1;
                progress.forwarded.store(forwarded, Ordering::Relaxed);
            }
        }
    }

    /// How the callers send.
    #[derive(Clone, Copy)]
    struct Load {
        warmup: Duration,
        /// How long the figures are counted, after the warm-up.
        seconds: Duration,
        /// Each member at its own moment, rather than a call's members
        /// together in 1 ms slots.
        spread: bool,
    }

    /// What the callers measured.
    #[derive(Default)]
    struct Heard {
        sent: u64,
        received: u64,
        delays_us: Vec<u32>,
    }

    /// When each member sends, and which datagrams count: those sent
    /// between the warm-up's end and `end`, heard until 200 ms after it
    /// (a relay delay is a few milliseconds).
    struct Schedule {
        epoch: Instant,
        measure_from: Instant,
        end: Instant,
        listen_until: Instant,
        next: BinaryHeap<Reverse<(Instant, usize)>>,
        heard: Heard,
    }

    impl Schedule {
        /// `members` senders over a frame from now: both members of a call
        /// in one of 20 slots of 1 ms, as `calling-load` sends, or each
        /// member at its own moment (`spread`).
        fn new(members: usize, load: Load) -> Self {
            let epoch = Instant::now();
            let measure_from = epoch + load.warmup;
            let end = measure_from + load.seconds;
            let first_send = |member: usize| {
                if load.spread {
                    FRAME * member as u32 / u32::try_from(members.max(1)).unwrap()
                } else {
                    Duration::from_millis((member / 2 % 20) as u64)
                }
            };
            Self {
                epoch,
                measure_from,
                end,
                listen_until: end + Duration::from_millis(200),
                next: (0..members)
                    .map(|member| Reverse((epoch + first_send(member), member)))
                    .collect(),
                heard: Heard::default(),
            }
        }

        /// Whether to go on; raises `measuring` while datagrams count.
        fn go_on(&self, now: Instant, measuring: &AtomicBool) -> bool {
            measuring.store(
                now >= self.measure_from && now < self.end,
                Ordering::Relaxed,
            );
            now < self.listen_until
        }

        /// The next member due to send by `now`, with its datagram.
        fn due(&mut self, now: Instant) -> Option<(usize, Bytes)> {
            let Reverse((at, member)) = *self.next.peek()?;
            if at > now || now >= self.end {
                return None;
            }
            self.next.pop();
            self.next.push(Reverse((at + FRAME, member)));
            if now >= self.measure_from {
                self.heard.sent += 1;
            }
            let mut payload = vec![0x55_u8; PAYLOAD];
            payload[..4].copy_from_slice(&u32::try_from(member / 2).unwrap().to_le_bytes());
            payload[4] = (member % 2) as u8;
            // Stamped with the moment it is counted for, so that counting
            // at the window's edges agrees on both sides.
            let sent_at = (now - self.epoch).as_nanos() as u64;
            payload[8..16].copy_from_slice(&sent_at.to_le_bytes());
            Some((member, Bytes::from(payload)))
        }

        /// Counts a datagram heard, if it was sent while counting.
        fn heard(&mut self, payload: &[u8]) {
            let Some(sent) = payload
                .get(8..16)
                .and_then(|stamp| stamp.try_into().ok())
                .map(u64::from_le_bytes)
            else {
                return;
            };
            if sent < (self.measure_from - self.epoch).as_nanos() as u64 {
                return;
            }
            self.heard.received += 1;
            let now = self.epoch.elapsed().as_nanos() as u64;
            self.heard
                .delays_us
                .push(u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
        }

        /// The next send, or `other`, whichever is sooner.
        fn deadline(&self, other: Option<Instant>) -> Option<Instant> {
            let next = self.next.peek().map(|Reverse((at, _))| *at);
            match (next, other) {
                (Some(next), Some(other)) => Some(next.min(other)),
                (next, other) => next.or(other),
            }
        }
    }

    /// Connects `members` connections to `server`, a few handshakes at a
    /// time as calls arrive; returns their handles.
    fn connect_all(
        node: &mut Node,
        server: SocketAddr,
        config: &ClientConfig,
        members: usize,
    ) -> Vec<usize> {
        let mut handles = Vec::with_capacity(members);
        let mut connected = Vec::new();
        let mut up = 0;
        let give_up = Instant::now() + Duration::from_secs(60);
        while up < members {
            assert!(
                Instant::now() < give_up,
                "handshakes stalled: {up} of {members} up"
            );
            while handles.len() < members && handles.len() - up < 32 {
                let (handle, connection) = node
                    .endpoint
                    .connect(Instant::now(), config.clone(), server, "localhost")
                    .unwrap();
                node.insert(handle, connection);
                handles.push(handle.0);
            }
            connected.resize(node.connections.len(), false);
            node.wait();
            let now = Instant::now();
            node.receive(now);
            node.expire(now);
            for position in 0..node.dirty.len() {
                let index = node.dirty[position];
                if let Some(connection) = &mut node.connections[index] {
                    while let Some(event) = connection.poll() {
                        if matches!(event, Event::Connected) && !connected[index] {
                            connected[index] = true;
                            up += 1;
                        }
                    }
                }
            }
            node.flush(now);
        }
        handles
    }

    /// Both members of `calls` calls on one socket and endpoint, over QUIC
    /// to `server`: connects them all, then sends audio for `warmup +
    /// seconds`, counting only the last `seconds`.
    fn quic_callers(
        server: SocketAddr,
        config: &ClientConfig,
        calls: usize,
        load: Load,
        measuring: &AtomicBool,
    ) -> Heard {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut node = Node::new(socket, None);
        let handles = connect_all(&mut node, server, config, calls * 2);
        let mut schedule = Schedule::new(calls * 2, load);
        loop {
            let now = Instant::now();
            if !schedule.go_on(now, measuring) {
                break;
            }
            node.receive(now);
            node.expire(now);
            while let Some((member, payload)) = schedule.due(now) {
                let index = handles[member];
                if let Some(connection) = &mut node.connections[index] {
                    let _ = connection.datagrams().send(payload, true);
                    node.mark(index);
                }
            }
            for position in 0..node.dirty.len() {
                let index = node.dirty[position];
                let Some(connection) = &mut node.connections[index] else {
                    continue;
                };
                while connection.poll().is_some() {}
                while let Some(payload) = connection.datagrams().recv() {
                    schedule.heard(&payload);
                }
            }
            node.flush(now);
            let timer = node.timers.peek().map(|Reverse((at, _))| *at);
            node.io.wait(schedule.deadline(timer));
        }
        schedule.heard
    }

    /// The same callers over plain UDP, one socket.
    fn plain_callers(
        server: SocketAddr,
        calls: usize,
        load: Load,
        measuring: &AtomicBool,
    ) -> Heard {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut io = BatchIo::new(socket);
        let mut schedule = Schedule::new(calls * 2, load);
        loop {
            let now = Instant::now();
            if !schedule.go_on(now, measuring) {
                break;
            }
            loop {
                let count = io.receive_batch();
                for index in 0..count {
                    let (length, _) = io.received[index];
                    schedule.heard(&io.receive[index][..length]);
                }
                if count < BATCH {
                    break;
                }
            }
            while let Some((_, payload)) = schedule.due(now) {
                let mut packet = io.buffer();
                packet.extend_from_slice(&payload);
                io.queue(server, packet);
            }
            io.send_all();
            io.wait(schedule.deadline(None));
        }
        schedule.heard
    }

    /// Pins the calling thread to `cpu`, if the machine has it.
    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set);
        }
    }

    fn thread_id() -> i32 {
        // SAFETY: no arguments, always succeeds.
        unsafe { libc::gettid() }
    }

    /// Nanoseconds the thread has spent on a CPU, user and system, read
    /// from its `stat` as `calling-load` reads a server's (10 ms ticks).
    fn cpu_ns(thread: i32) -> u64 {
        std::fs::read_to_string(format!("/proc/self/task/{thread}/stat"))
            .ok()
            .and_then(|text| process_stats::ProcessStats::parse(&text))
            .map_or(0, |stats| stats.cpu.as_nanos() as u64)
    }

    #[derive(Clone, Copy)]
    enum Relay {
        Quic,
        Plain,
        Simple,
    }

    struct Outcome {
        us_per_datagram: f64,
        relay_cores: f64,
        callers_cores: f64,
        /// Packets in, packets out and system calls per forwarded datagram.
        per_datagram: [f64; 3],
        loss_percent: f64,
        p50_ms: f64,
        p99_ms: f64,
    }

    fn run(relay: Relay, calls: usize, load: Load, identity: &ServerIdentity) -> Outcome {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server = socket.local_addr().unwrap();
        let progress = Arc::new(Progress::default());
        let relay_thread = {
            let progress = Arc::clone(&progress);
            let config = Arc::new(server_config(identity).unwrap());
            std::thread::spawn(move || {
                pin(0);
                progress.thread_id.store(thread_id(), Ordering::Relaxed);
                match relay {
                    Relay::Quic => quic_relay(socket, config, &progress),
                    Relay::Plain => plain_relay(socket, &progress),
                    Relay::Simple => simple_relay(&socket, &progress),
                }
            })
        };
        let measuring = Arc::new(AtomicBool::new(false));
        let callers = {
            let measuring = Arc::clone(&measuring);
            let progress = Arc::clone(&progress);
            let client: ClientConfig =
                client_config(&ServerTrust::Fingerprint(identity.fingerprint())).unwrap();
            std::thread::spawn(move || {
                pin(1);
                progress
                    .callers_thread_id
                    .store(thread_id(), Ordering::Relaxed);
                match relay {
                    Relay::Quic => quic_callers(server, &client, calls, load, &measuring),
                    Relay::Plain | Relay::Simple => plain_callers(server, calls, load, &measuring),
                }
            })
        };
        // The relay's CPU and count over the callers' counting window.
        while !measuring.load(Ordering::Relaxed) {
            assert!(!callers.is_finished(), "the callers stopped early");
            std::thread::sleep(Duration::from_millis(1));
        }
        let threads = [&progress.thread_id, &progress.callers_thread_id]
            .map(|thread| thread.load(Ordering::Relaxed));
        let started = Instant::now();
        let cpu_before = threads.map(cpu_ns);
        let counts_before = progress.counts();
        while measuring.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let cpu = {
            let after = threads.map(cpu_ns);
            [0, 1].map(|thread| (after[thread] - cpu_before[thread]) as f64 / 1e9)
        };
        let wall = started.elapsed().as_secs_f64();
        let counts = {
            let after = progress.counts();
            [0, 1, 2, 3].map(|count| (after[count] - counts_before[count]) as f64)
        };
        let forwarded = counts[0].max(1.0);
        let heard = callers.join().unwrap();
        progress.stop.store(true, Ordering::Relaxed);
        relay_thread.join().unwrap();
        let mut delays = heard.delays_us;
        delays.sort_unstable();
        let quantile = |q: f64| {
            delays
                .get(((delays.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
        };
        Outcome {
            us_per_datagram: cpu[0] * 1e6 / forwarded,
            relay_cores: cpu[0] / wall,
            callers_cores: cpu[1] / wall,
            per_datagram: [
                counts[1] / forwarded,
                counts[2] / forwarded,
                counts[3] / forwarded,
            ],
            loss_percent: 100.0 * (1.0 - heard.received as f64 / heard.sent.max(1) as f64),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        }
    }

    pub(super) fn main() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let calls: Vec<usize> = args.first().map_or_else(
            || vec![300, 1000],
            |list| list.split(',').filter_map(|n| n.parse().ok()).collect(),
        );
        let load = Load {
            warmup: Duration::from_secs(2),
            seconds: Duration::from_secs(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(5)),
            spread: args.get(2).is_some_and(|how| how == "spread"),
        };
        let identity = ServerIdentity::self_signed(&["localhost".to_owned()]).unwrap();
        println!(
            "relay thread on CPU 0, callers on CPU 1; {} s counted after 2 s of warm-up; {}",
            load.seconds.as_secs(),
            if load.spread {
                "each member sends at its own moment"
            } else {
                "a call's members send together, calls in 1 ms slots (as calling-load)"
            }
        );
        println!(
            "| calls | relay | µs per forwarded datagram | × plain | relay's core busy | callers' core busy \
             | packets in / out, system calls per datagram | loss | p50 | p99 |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for calls in calls {
            let simple = run(Relay::Simple, calls, load, &identity);
            let plain = run(Relay::Plain, calls, load, &identity);
            let quic = run(Relay::Quic, calls, load, &identity);
            for (name, outcome) in [
                ("plain UDP, recvfrom + sendto", &simple),
                ("plain UDP, the loop", &plain),
                ("quinn-proto, the loop", &quic),
            ] {
                println!(
                    "| {calls} | {name} | {:.2} | {:.2} | {:.0} % | {:.0} % | {:.2} / {:.2}, {:.2} \
                     | {:.2} % | {:.2} ms | {:.2} ms |",
                    outcome.us_per_datagram,
                    outcome.us_per_datagram / plain.us_per_datagram,
                    outcome.relay_cores * 100.0,
                    outcome.callers_cores * 100.0,
                    outcome.per_datagram[0],
                    outcome.per_datagram[1],
                    outcome.per_datagram[2],
                    outcome.loss_percent,
                    outcome.p50_ms,
                    outcome.p99_ms,
                );
            }
        }
    }
}
