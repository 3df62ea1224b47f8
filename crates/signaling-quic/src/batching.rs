//! A server endpoint's UDP socket that sends the packets of many
//! connections with one `sendmmsg` (Linux).
//!
//! quinn builds each connection's packets in that connection's task and
//! hands them to the socket one at a time; the stock socket makes one
//! `sendmsg` per packet. A relay sends every forwarded datagram to another
//! connection, so GSO (several packets to one address) has nothing to
//! coalesce, but the packets that many connections' tasks produce in one
//! pass of the scheduler can leave together: this socket queues them and a
//! flush task, woken by the first packet queued and deferred behind the
//! tasks already ready to run, sends the queue with one system call. A
//! full queue is sent at once by the packet that fills it, so a packet
//! waits at most one pass of the scheduler or [`BATCH`] − 1 packets.
//!
//! The queue always takes a packet, so quinn never waits for it. A packet
//! the kernel refuses (a full send buffer, an unreachable address) is
//! dropped and counted, as a lost packet on the path would be: QUIC
//! retransmits what was reliable, and audio is not.
//!
//! Receiving is quinn's own (`recvmmsg` through `quinn-udp`).

#![allow(unsafe_code)]

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::send_stats::SendCounters;
#[cfg(test)]
use crate::send_stats::SendCounts;

/// Packets sent with one `sendmmsg` at most.
pub(crate) const BATCH: usize = 32;

/// The largest packet the queue holds: quinn's largest UDP payload by
/// default (Ethernet's MTU less the IP and UDP headers), rounded up. A
/// larger one (a configuration that raises the MTU) is sent on its own.
const SLOT_BYTES: usize = 1500;

/// One queued packet; its bytes are in the queue's buffer, at the slot of
/// its place in the queue.
#[derive(Debug, Clone, Copy)]
struct Queued {
    destination: SocketAddr,
    src_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    len: usize,
}

/// Packets waiting for the next `sendmmsg`, in one allocation made once.
struct Queue {
    packets: Vec<Queued>,
    bytes: Box<[u8]>,
}

impl Queue {
    fn new() -> Self {
        Self {
            packets: Vec::with_capacity(BATCH),
            bytes: vec![0; BATCH * SLOT_BYTES].into_boxed_slice(),
        }
    }

    fn is_full(&self) -> bool {
        self.packets.len() >= BATCH
    }

    /// Copies `transmit` in; the caller has made room (a packet with none,
    /// or too large for a slot, is not queued).
    fn push(&mut self, transmit: &Transmit<'_>) {
        let start = self.packets.len() * SLOT_BYTES;
        let len = transmit.contents.len();
        if let Some(slot) = self.bytes.get_mut(start..start + len) {
            slot.copy_from_slice(transmit.contents);
            self.packets.push(Queued {
                destination: transmit.destination,
                src_ip: transmit.src_ip,
                ecn: transmit.ecn,
                len,
            });
        }
    }

    fn contents(&self, index: usize) -> &[u8] {
        let start = index * SLOT_BYTES;
        let len = self.packets.get(index).map_or(0, |packet| packet.len);
        self.bytes.get(start..start + len).unwrap_or(&[])
    }
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("packets", &self.packets.len())
            .finish_non_exhaustive()
    }
}

/// The socket quinn sees (see the module doc).
#[derive(Debug)]
pub(crate) struct BatchingSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    /// Where connections' tasks queue packets: held only to copy one in.
    queue: Mutex<Queue>,
    /// The batch being sent: a flush swaps it with `queue`, so connections
    /// go on queueing while the system call runs.
    sending: Mutex<Queue>,
    flush_wanted: Arc<Notify>,
    counters: Arc<SendCounters>,
}

impl BatchingSocket {
    /// Wraps `socket`, set up as `state` says, and starts its flush task
    /// on the current runtime; what it sends is counted in `counters`.
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        state: UdpSocketState,
        counters: Arc<SendCounters>,
    ) -> io::Result<Arc<Self>> {
        socket.set_nonblocking(true)?;
        let flush_wanted = Arc::new(Notify::new());
        let this = Arc::new(Self {
            io: tokio::net::UdpSocket::from_std(socket)?,
            state,
            queue: Mutex::new(Queue::new()),
            sending: Mutex::new(Queue::new()),
            flush_wanted: Arc::clone(&flush_wanted),
            counters,
        });
        tokio::spawn(flush_task(Arc::downgrade(&this), flush_wanted));
        Ok(this)
    }

    #[cfg(test)]
    fn counts(&self) -> SendCounts {
        self.counters.counts()
    }

    /// Sends everything queued so far.
    fn flush(&self) {
        let mut sending = lock(&self.sending);
        std::mem::swap(&mut *sending, &mut *lock(&self.queue));
        self.send_all(&sending);
        sending.packets.clear();
    }

    fn send_all(&self, batch: &Queue) {
        let mut next = 0;
        while next < batch.packets.len() {
            match self.send_from(batch, next) {
                Ok(sent) => {
                    next += sent;
                    self.counters
                        .packets
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    self.counters.calls.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    // The first packet left was refused; the ones after it
                    // may go to other addresses and fare better.
                    tracing::debug!(%error, "a UDP packet was refused, dropped");
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                }
            }
        }
    }

    /// One `sendmmsg` of `batch`'s packets from `first` on: how many left.
    fn send_from(&self, batch: &Queue, first: usize) -> io::Result<usize> {
        let packets = batch.packets.get(first..).unwrap_or(&[]);
        let count = packets.len().min(BATCH);
        let mut addresses: [Option<socket2::SockAddr>; BATCH] = [const { None }; BATCH];
        // SAFETY (all three): plain C structs for which all-zero is a valid
        // value (null pointers, zero lengths).
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut controls: [Control; BATCH] = unsafe { std::mem::zeroed() };
        for (index, packet) in packets.iter().take(count).enumerate() {
            let contents = batch.contents(first + index);
            let address = addresses[index].insert(socket2::SockAddr::from(packet.destination));
            let iovec = &mut iovecs[index];
            iovec.iov_base = contents.as_ptr().cast_mut().cast();
            iovec.iov_len = contents.len();
            let header = &mut headers[index].msg_hdr;
            // The kernel reads the address and the bytes and does not
            // write them: the casts to mutable pointers are the C API's.
            header.msg_name = address.as_ptr().cast_mut().cast();
            header.msg_namelen = address.len();
            header.msg_iov = iovec;
            header.msg_iovlen = 1;
            controls[index].encode(header, packet);
        }
        // SAFETY: every header points at an address, an iovec and a
        // control buffer of this frame, alive until the call returns, and
        // each iovec at bytes of `batch`, which the caller holds.
        let sent = unsafe {
            libc::sendmmsg(
                self.io.as_raw_fd(),
                headers.as_mut_ptr(),
                u32::try_from(count).unwrap_or(0),
                0,
            )
        };
        match usize::try_from(sent) {
            Ok(0) | Err(_) => Err(io::Error::last_os_error()),
            Ok(sent) => Ok(sent),
        }
    }

    /// A packet the queue cannot hold goes out on its own, the queue first.
    fn send_alone(&self, transmit: &Transmit<'_>) {
        self.flush();
        // Straight to the non-blocking socket: this socket never waits to
        // be writable, so tokio's readiness for writing is never tracked.
        match self.state.send((&self.io).into(), transmit) {
            Ok(()) => {
                let segments = transmit
                    .segment_size
                    .map_or(1, |size| transmit.contents.len().div_ceil(size.max(1)));
                self.counters
                    .packets
                    .fetch_add(segments as u64, Ordering::Relaxed);
                self.counters.calls.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(%error, "a UDP packet was refused, dropped");
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for BatchingSocket {
    fn drop(&mut self) {
        // Sends what is left and lets the flush task see that the socket
        // is gone.
        self.flush();
        self.flush_wanted.notify_one();
    }
}

/// Sends the queue each time it is asked to, after letting the tasks that
/// are ready run first (they may queue more); ends with its socket.
async fn flush_task(socket: Weak<BatchingSocket>, flush_wanted: Arc<Notify>) {
    loop {
        flush_wanted.notified().await;
        tokio::task::yield_now().await;
        match socket.upgrade() {
            Some(socket) => socket.flush(),
            None => return,
        }
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // A panic while a queue was held leaves whole packets in it (a push
    // completes or adds nothing): the queue is still sound.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AsyncUdpSocket for BatchingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let single = transmit
            .segment_size
            .is_none_or(|size| size >= transmit.contents.len());
        if !single || transmit.contents.len() > SLOT_BYTES {
            self.send_alone(transmit);
            return Ok(());
        }
        let mut queue = lock(&self.queue);
        // Other threads may fill the queue again between the flush and
        // the lock: only a queue seen with room under the lock takes it.
        while queue.is_full() {
            drop(queue);
            self.flush();
            queue = lock(&self.queue);
        }
        let first = queue.packets.is_empty();
        queue.push(transmit);
        drop(queue);
        if first {
            self.flush_wanted.notify_one();
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(received) = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(received));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    /// One packet per transmit: a connection's burst is queued packet by
    /// packet and leaves in the same `sendmmsg` as everyone else's.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// The queue always takes a packet.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One packet's control messages: its ECN codepoint and, when quinn names
/// one, the source address (a server bound to a wildcard answers from the
/// address the client wrote to).
#[repr(C, align(8))]
struct Control([u8; 64]);

impl Control {
    fn encode(&mut self, header: &mut libc::msghdr, packet: &Queued) {
        header.msg_control = self.0.as_mut_ptr().cast();
        header.msg_controllen = self.0.len();
        let ecn = packet.ecn.map_or(0, |codepoint| codepoint as libc::c_int);
        let to_ipv4 = match packet.destination.ip() {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
        let mut used = 0;
        // SAFETY: `msg_control` is this 64-byte, 8-aligned buffer and
        // `msg_controllen` its length, so CMSG_FIRSTHDR / CMSG_NXTHDR give
        // headers inside it or null; two messages take at most
        // CMSG_SPACE(4) + CMSG_SPACE(20) = 40 bytes.
        unsafe {
            let mut cursor = libc::CMSG_FIRSTHDR(header);
            if to_ipv4 {
                cursor = push(
                    header,
                    cursor,
                    &mut used,
                    libc::IPPROTO_IP,
                    libc::IP_TOS,
                    ecn,
                );
            } else {
                cursor = push(
                    header,
                    cursor,
                    &mut used,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_TCLASS,
                    ecn,
                );
            }
            match packet.src_ip {
                Some(IpAddr::V4(v4)) => {
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(v4.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    push(
                        header,
                        cursor,
                        &mut used,
                        libc::IPPROTO_IP,
                        libc::IP_PKTINFO,
                        info,
                    );
                }
                Some(IpAddr::V6(v6)) => {
                    let info = libc::in6_pktinfo {
                        ipi6_ifindex: 0,
                        ipi6_addr: libc::in6_addr {
                            s6_addr: v6.octets(),
                        },
                    };
                    push(
                        header,
                        cursor,
                        &mut used,
                        libc::IPPROTO_IPV6,
                        libc::IPV6_PKTINFO,
                        info,
                    );
                }
                None => {}
            }
        }
        header.msg_controllen = used;
    }
}

/// Writes one control message at `cursor` (null: no room, nothing written)
/// and returns the next one's place.
///
/// # Safety
///
/// `cursor` is null or a header inside `header`'s control buffer, as
/// CMSG_FIRSTHDR / CMSG_NXTHDR return it.
unsafe fn push<T: Copy>(
    header: &libc::msghdr,
    cursor: *mut libc::cmsghdr,
    used: &mut usize,
    level: libc::c_int,
    kind: libc::c_int,
    value: T,
) -> *mut libc::cmsghdr {
    if cursor.is_null() {
        return cursor;
    }
    let size = u32::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: the caller's promise; CMSG_SPACE(size) fits in what is left
    // of the buffer, as the callers' sizes are fixed and checked above.
    unsafe {
        (*cursor).cmsg_level = level;
        (*cursor).cmsg_type = kind;
        (*cursor).cmsg_len = libc::CMSG_LEN(size) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cursor).cast::<T>(), value);
        *used += libc::CMSG_SPACE(size) as usize;
        libc::CMSG_NXTHDR(header, cursor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
    use std::time::Duration;

    use super::*;

    fn bind(addr: &str) -> Arc<BatchingSocket> {
        wrap(UdpSocket::bind(addr).unwrap())
    }

    fn wrap(socket: UdpSocket) -> Arc<BatchingSocket> {
        let state = UdpSocketState::new((&socket).into()).unwrap();
        BatchingSocket::new(socket, state, Arc::default()).unwrap()
    }

    fn transmit(destination: SocketAddr, contents: &[u8]) -> Transmit<'_> {
        Transmit {
            destination,
            ecn: Some(EcnCodepoint::Ect0),
            contents,
            segment_size: None,
            src_ip: None,
        }
    }

    fn packet(number: usize, len: usize) -> Vec<u8> {
        (0..len).map(|byte| (number * 7 + byte) as u8).collect()
    }

    /// A receiving socket that reports each packet's ECN codepoint and
    /// source, as quinn's endpoint reads them.
    struct Receiver {
        socket: UdpSocket,
        state: UdpSocketState,
    }

    impl Receiver {
        fn bind(ip: IpAddr) -> Self {
            let socket = UdpSocket::bind((ip, 0)).unwrap();
            let state = UdpSocketState::new((&socket).into()).unwrap();
            socket.set_nonblocking(true).unwrap();
            Self { socket, state }
        }

        fn addr(&self) -> SocketAddr {
            self.socket.local_addr().unwrap()
        }

        /// The next packet, once the sender's flush task has sent it.
        async fn receive(&self) -> (Vec<u8>, RecvMeta) {
            let mut buffer = vec![0; 4096];
            let mut meta = [RecvMeta::default()];
            for _ in 0..500 {
                let received = self.state.recv(
                    (&self.socket).into(),
                    &mut [IoSliceMut::new(&mut buffer)],
                    &mut meta,
                );
                match received {
                    Ok(count) => {
                        assert_eq!(count, 1);
                        buffer.truncate(meta[0].len);
                        return (buffer, meta[0]);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(error) => panic!("{error}"),
                }
            }
            panic!("no packet came");
        }
    }

    async fn wait_for_packets(socket: &BatchingSocket, packets: u64) -> SendCounts {
        for _ in 0..500 {
            let counts = socket.counts();
            if counts.packets >= packets {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        socket.counts()
    }

    #[tokio::test]
    async fn packets_queued_in_one_pass_leave_in_few_calls_and_arrive_whole() {
        let sender = bind("127.0.0.1:0");
        let receivers = [
            Receiver::bind(Ipv4Addr::LOCALHOST.into()),
            Receiver::bind(Ipv4Addr::LOCALHOST.into()),
        ];
        // Forty packets from one task without yielding, as a pass of the
        // scheduler full of connection tasks would queue them.
        for number in 0..40 {
            let contents = packet(number, 60 + number);
            let receiver = &receivers[number % 2];
            sender
                .try_send(&transmit(receiver.addr(), &contents))
                .unwrap();
        }
        assert_eq!(sender.counts().packets, 32, "a full queue leaves at once");
        let counts = wait_for_packets(&sender, 40).await;
        assert_eq!(
            counts,
            SendCounts {
                packets: 40,
                calls: 2,
                dropped: 0
            }
        );
        for number in 0..40 {
            let (contents, meta) = receivers[number % 2].receive().await;
            assert_eq!(contents, packet(number, 60 + number), "packet {number}");
            assert_eq!(meta.ecn, Some(EcnCodepoint::Ect0));
            assert_eq!(meta.addr, sender.local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn the_source_address_quinn_names_is_the_one_the_packet_leaves_from() {
        let sender = bind("0.0.0.0:0");
        let port = sender.local_addr().unwrap().port();
        let receiver = Receiver::bind(Ipv4Addr::LOCALHOST.into());
        for source in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)] {
            let contents = packet(1, 100);
            let mut out = transmit(receiver.addr(), &contents);
            out.src_ip = Some(source.into());
            out.ecn = None;
            sender.try_send(&out).unwrap();
            let (received, meta) = receiver.receive().await;
            assert_eq!(received, contents);
            assert_eq!(meta.addr, SocketAddr::new(source.into(), port));
            assert_eq!(meta.ecn, None);
        }
    }

    #[tokio::test]
    async fn a_dual_stack_socket_sends_to_ipv4_clients_with_ecn_and_their_source() {
        let Ok(socket) = UdpSocket::bind("[::]:0") else {
            // No IPv6 on this machine: no dual-stack socket either.
            return;
        };
        let sender = wrap(socket);
        let port = sender.local_addr().unwrap().port();
        let receiver = Receiver::bind(Ipv4Addr::LOCALHOST.into());
        // How a dual-stack socket names an IPv4 client, as quinn has it.
        let mapped = SocketAddr::new(
            Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
            receiver.addr().port(),
        );
        let contents = packet(6, 120);
        let mut out = transmit(mapped, &contents);
        out.src_ip = Some(Ipv4Addr::new(127, 0, 0, 4).into());
        sender.try_send(&out).unwrap();
        let (received, meta) = receiver.receive().await;
        assert_eq!(received, contents);
        assert_eq!(meta.ecn, Some(EcnCodepoint::Ect0));
        assert_eq!(
            meta.addr,
            SocketAddr::new(Ipv4Addr::new(127, 0, 0, 4).into(), port)
        );
    }

    #[tokio::test]
    async fn ipv6_packets_carry_their_ecn_codepoint() {
        let Ok(socket) = UdpSocket::bind("[::1]:0") else {
            // No IPv6 loopback on this machine: nothing to send over.
            return;
        };
        let sender = wrap(socket);
        let receiver = Receiver::bind(Ipv6Addr::LOCALHOST.into());
        let contents = packet(2, 200);
        let mut out = transmit(receiver.addr(), &contents);
        out.ecn = Some(EcnCodepoint::Ect1);
        sender.try_send(&out).unwrap();
        let (received, meta) = receiver.receive().await;
        assert_eq!(received, contents);
        assert_eq!(meta.ecn, Some(EcnCodepoint::Ect1));
    }

    #[tokio::test]
    async fn a_packet_larger_than_a_slot_goes_alone_after_the_queue() {
        let sender = bind("127.0.0.1:0");
        let receiver = Receiver::bind(Ipv4Addr::LOCALHOST.into());
        let small = packet(3, 50);
        let large = packet(4, SLOT_BYTES + 500);
        sender.try_send(&transmit(receiver.addr(), &small)).unwrap();
        sender.try_send(&transmit(receiver.addr(), &large)).unwrap();
        assert_eq!(
            sender.counts(),
            SendCounts {
                packets: 2,
                calls: 2,
                dropped: 0
            }
        );
        assert_eq!(receiver.receive().await.0, small);
        assert_eq!(receiver.receive().await.0, large);
    }

    #[tokio::test]
    async fn a_refused_packet_is_dropped_and_the_rest_still_leave() {
        let sender = bind("127.0.0.1:0");
        let receiver = Receiver::bind(Ipv4Addr::LOCALHOST.into());
        let contents = packet(5, 80);
        sender
            .try_send(&transmit(receiver.addr(), &contents))
            .unwrap();
        // An IPv6 destination from an IPv4 socket: the kernel refuses it.
        let nowhere = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 9);
        sender.try_send(&transmit(nowhere, &contents)).unwrap();
        sender
            .try_send(&transmit(receiver.addr(), &contents))
            .unwrap();
        let counts = wait_for_packets(&sender, 2).await;
        assert_eq!(counts.packets, 2);
        assert_eq!(counts.dropped, 1);
        assert_eq!(receiver.receive().await.0, contents);
        assert_eq!(receiver.receive().await.0, contents);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn packets_queued_from_many_threads_at_once_all_leave() {
        let sender = bind("127.0.0.1:0");
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let destination = receiver.local_addr().unwrap();
        let threads = 4;
        let each = 2_000;
        let total = threads * each;
        // Read while they send, or the receive buffer overflows.
        let reader = std::thread::spawn(move || {
            let mut seen = vec![false; total];
            let mut buffer = [0_u8; 64];
            while let Ok(len) = receiver.recv(&mut buffer) {
                let number = u16::from_le_bytes([buffer[0], buffer[1]]);
                assert_eq!(len, 40);
                seen[usize::from(number)] = true;
                if seen.iter().all(|&arrived| arrived) {
                    break;
                }
            }
            // Four threads outrun one reader on a small machine: what the
            // receiving socket's buffer could not hold the kernel counts.
            let overflowed = receive_buffer_drops(destination.port());
            (seen.iter().filter(|&&arrived| arrived).count(), overflowed)
        });
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let sender = &sender;
                scope.spawn(move || {
                    for number in thread * each..(thread + 1) * each {
                        let mut contents = [0_u8; 40];
                        contents[..2].copy_from_slice(&(number as u16).to_le_bytes());
                        sender.try_send(&transmit(destination, &contents)).unwrap();
                    }
                });
            }
        });
        let counts = wait_for_packets(&sender, total as u64).await;
        assert_eq!(counts.packets, total as u64, "{counts:?}");
        assert_eq!(counts.dropped, 0);
        let (arrived, overflowed) = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(arrived + overflowed, total, "{overflowed} overflowed");
    }

    /// Packets the kernel dropped for a full receive buffer on the UDP
    /// socket bound to `port` on IPv4 (`/proc/net/udp`, last column).
    fn receive_buffer_drops(port: u16) -> usize {
        let table = std::fs::read_to_string("/proc/net/udp").unwrap();
        let wanted = format!(":{port:04X}");
        table
            .lines()
            .skip(1)
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields[1]
                    .ends_with(&wanted)
                    .then(|| fields.last().unwrap().parse().unwrap())
            })
            .unwrap()
    }

    #[tokio::test]
    async fn the_flush_task_ends_with_its_socket() {
        let socket = bind("127.0.0.1:0");
        let task_count = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(task_count, 1);
        drop(socket);
        for _ in 0..100 {
            if tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                == 0
            {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the flush task outlived its socket");
    }
}
