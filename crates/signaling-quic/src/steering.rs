//! Several endpoints on one UDP port: each endpoint owns a socket of one
//! `SO_REUSEPORT` group, and a classic BPF program steers every packet to
//! the socket whose endpoint issued the packet's destination connection ID
//! (docs/decisions/0006). The kernel's default for a group — a hash of the
//! four-tuple — would send a client that changed its address (a new NAT
//! port, Wi-Fi to cellular) to an endpoint that does not know its
//! connection, which would answer with a stateless reset and end the call.
//!
//! The server's connection IDs carry their endpoint: the first byte is the
//! endpoint's index modulo the endpoint count. Short-header packets have
//! the destination ID at byte 1, long-header packets at byte 6; the
//! program reads that byte and returns it modulo the count, so a client's
//! first Initial (whose destination ID the client chose at random) lands
//! on some endpoint, and every later packet — Handshake, 1-RTT, a packet
//! from a new address, the Initial after a Retry — on the same one.

use std::net::SocketAddr;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::rand::SecureRandom;

use crate::TransportError;

/// Connection IDs are 8 bytes: the steering byte, a 5-byte nonce, and a
/// 2-byte keyed signature over the first six. The nonce is long because
/// quinn makes a Retry's connection ID without checking it against the
/// IDs in use, and routes the client's next Initial to a live connection
/// that holds the same ID, where the handshake stalls (docs/benchmarks.md,
/// "The Retry stall"): with quinn's own 3-byte nonce that happened to 1 in
/// 1,000 Retries at 4,000 connections. The signature only decides whether
/// a packet for an unknown connection gets a stateless reset; 1 in 65,536
/// stray packets getting one is harmless.
const CID_LEN: usize = 8;
const SIGNED_LEN: usize = 6;

/// The most endpoints one server may run: the steering byte's range.
pub const MAX_ENDPOINTS: usize = 128;

/// Issues connection IDs whose first byte names endpoint `index` of
/// `count` (modulo `count`) and whose tail is a keyed signature, so that
/// any endpoint — of this server or a restarted one with any endpoint
/// count, given the same key — recognises an ID as its own and answers a
/// packet for a forgotten connection with a stateless reset.
pub(crate) struct SteeredCids {
    key: ring::hmac::Key,
    index: u8,
    count: u8,
    random: ring::rand::SystemRandom,
}

impl SteeredCids {
    /// `count` is at most [`MAX_ENDPOINTS`], `index` below it.
    pub(crate) fn new(key: &[u8], index: usize, count: usize) -> Self {
        let count = count.clamp(1, MAX_ENDPOINTS);
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            // Both below MAX_ENDPOINTS, so within a byte.
            index: u8::try_from(index % count).unwrap_or(0),
            count: u8::try_from(count).unwrap_or(1),
            random: ring::rand::SystemRandom::new(),
        }
    }

    fn signature(&self, signed: &[u8]) -> [u8; CID_LEN - SIGNED_LEN] {
        let tag = ring::hmac::sign(&self.key, signed);
        let mut signature = [0; CID_LEN - SIGNED_LEN];
        signature.copy_from_slice(&tag.as_ref()[..CID_LEN - SIGNED_LEN]);
        signature
    }
}

/// The endpoint a connection ID steers to, of `count`.
#[cfg(test)]
fn endpoint_of(cid: &[u8], count: usize) -> Option<usize> {
    Some(usize::from(*cid.first()?) % count.max(1))
}

impl ConnectionIdGenerator for SteeredCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0_u8; CID_LEN];
        // The system's generator failing leaves zeros: still a valid ID,
        // only a guessable one.
        let _ = self.random.fill(&mut bytes[..SIGNED_LEN]);
        // index + count·r for r uniform over what fits in a byte.
        let spread = (255 - u16::from(self.index)) / u16::from(self.count) + 1;
        let r = u16::from(bytes[0]) % spread;
        bytes[0] =
            u8::try_from(u16::from(self.index) + u16::from(self.count) * r).unwrap_or(self.index);
        let signature = self.signature(&bytes[..SIGNED_LEN]);
        bytes[SIGNED_LEN..].copy_from_slice(&signature);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != CID_LEN {
            return Err(InvalidCid);
        }
        let expected = self.signature(&cid[..SIGNED_LEN]);
        // Not secret-dependent timing worth hiding: a forged ID earns a
        // stateless reset at most, which the reset key already guards.
        if cid[SIGNED_LEN..] == expected {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Binds `count` UDP sockets to `addr` in one `SO_REUSEPORT` group with the
/// steering program attached (port 0: the first socket's port for all).
/// `count` 1 binds one plain socket. On systems without the program
/// (anything but Linux) more than one is an error.
pub(crate) fn bind_group(
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::UdpSocket>, TransportError> {
    let bind_error = |addr, source| TransportError::Bind { addr, source };
    if count <= 1 {
        return Ok(vec![
            std::net::UdpSocket::bind(addr).map_err(|source| bind_error(addr, source))?,
        ]);
    }
    if count > MAX_ENDPOINTS {
        return Err(TransportError::Io(std::io::Error::other(format!(
            "at most {MAX_ENDPOINTS} endpoints"
        ))));
    }
    if addr.port() != 0 {
        // A group admits any socket of the same user with SO_REUSEPORT: a
        // second server started on the port by mistake would silently take
        // part of the traffic. A plain bind fails while anyone holds the
        // port, so the mistake is an error, as with one endpoint.
        drop(std::net::UdpSocket::bind(addr).map_err(|source| bind_error(addr, source))?);
    }
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(|source| bind_error(bound, source))?;
        socket
            .set_reuse_port(true)
            .map_err(|source| bind_error(bound, source))?;
        socket
            .bind(&bound.into())
            .map_err(|source| bind_error(bound, source))?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()
                .ok()
                .and_then(|local| local.as_socket())
                .ok_or_else(|| {
                    bind_error(addr, std::io::Error::other("no local address after bind"))
                })?;
        }
        sockets.push(std::net::UdpSocket::from(socket));
    }
    if let Some(first) = sockets.first() {
        attach_program(first, count).map_err(|source| bind_error(bound, source))?;
    }
    Ok(sockets)
}

/// The classic BPF program: the destination connection ID's first byte
/// modulo `count`. It runs on the UDP payload.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn steering_program(count: usize) -> [(u16, u8, u8, u32); 7] {
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const RET_A: u16 = 0x16; // BPF_RET | BPF_A
    // count ≤ MAX_ENDPOINTS.
    let count = u32::try_from(count).unwrap_or(1);
    [
        // A = first byte; long header (0x80 set): the ID starts at byte 6.
        (LD_B_ABS, 0, 0, 0),
        (JSET_K, 2, 0, 0x80),
        // Short header: the ID starts at byte 1.
        (LD_B_ABS, 0, 0, 1),
        (JA, 0, 0, 1),
        (LD_B_ABS, 0, 0, 6),
        (MOD_K, 0, 0, count),
        (RET_A, 0, 0, 0),
    ]
}

#[cfg(target_os = "linux")]
fn attach_program(socket: &std::net::UdpSocket, count: usize) -> std::io::Result<()> {
    #![allow(unsafe_code)]
    use std::os::fd::AsRawFd;
    let mut filter =
        steering_program(count).map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k });
    let program = libc::sock_fprog {
        // Seven instructions.
        len: u16::try_from(filter.len()).unwrap_or(0),
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `program` points at `filter`, which outlives the call; the
    // kernel copies the program and checks it before attaching it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&program).cast(),
            u32::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(0),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn attach_program(_socket: &std::net::UdpSocket, _count: usize) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "steering packets to several endpoints needs Linux (SO_ATTACH_REUSEPORT_CBPF)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_endpoint_and_validate_anywhere_with_the_key() {
        // Another key accepts an ID by chance, 1 in 65,536.
        let (mut strangers_accepting, mut checked) = (0, 0);
        for count in [1, 2, 3, 7, 16, MAX_ENDPOINTS] {
            for index in 0..count {
                let mut generator = SteeredCids::new(b"key", index, count);
                let other = SteeredCids::new(b"key", 0, 5);
                let stranger = SteeredCids::new(b"other key", index, count);
                for _ in 0..20 {
                    let cid = generator.generate_cid();
                    assert_eq!(endpoint_of(&cid, count), Some(index), "{count} {index}");
                    // Another endpoint, another count: same key, still ours.
                    assert!(other.validate(&cid).is_ok());
                    strangers_accepting += usize::from(stranger.validate(&cid).is_ok());
                    checked += 1;
                }
            }
        }
        assert!(
            strangers_accepting <= checked / 100,
            "{strangers_accepting} of {checked}"
        );
    }

    #[test]
    fn ids_do_not_repeat() {
        // A Retry's ID is not checked against the IDs in use: the nonce
        // must make a repeat as unlikely as a 40-bit collision.
        let mut generator = SteeredCids::new(b"key", 0, 1);
        let ids: std::collections::HashSet<ConnectionId> =
            (0..100_000).map(|_| generator.generate_cid()).collect();
        assert_eq!(ids.len(), 100_000);
    }

    #[test]
    fn steering_byte_covers_the_whole_range_for_one_endpoint_of_many() {
        let mut generator = SteeredCids::new(b"key", 1, 4);
        let firsts: std::collections::HashSet<u8> =
            (0..2_000).map(|_| generator.generate_cid()[0]).collect();
        assert!(firsts.iter().all(|first| first % 4 == 1));
        assert!(firsts.len() > 50, "{}", firsts.len());
    }

    #[test]
    fn a_tampered_id_is_not_ours() {
        let mut generator = SteeredCids::new(b"key", 0, 2);
        let cid = generator.generate_cid();
        let mut bytes = cid.to_vec();
        bytes[CID_LEN - 1] ^= 1;
        assert!(generator.validate(&ConnectionId::new(&bytes)).is_err());
        assert!(generator.validate(&ConnectionId::new(&bytes[..7])).is_err());
    }

    #[test]
    fn a_group_is_refused_on_a_port_in_use() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(bind_group(addr, 2).is_err());
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        assert!(
            bind_group(addr, 2).is_err(),
            "a second group on the same port"
        );
        assert!(std::net::UdpSocket::bind(addr).is_err());
    }

    /// The kernel runs the program: packets whose first ID byte names an
    /// endpoint arrive at that endpoint's socket, from any source address.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_steers_by_the_connection_id() {
        let count = 3;
        let sockets = bind_group("127.0.0.1:0".parse().unwrap(), count).unwrap();
        let addr = sockets[0].local_addr().unwrap();
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap(), addr);
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
        }
        let senders: Vec<_> = (0..4)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (n, sender) in senders.iter().enumerate() {
            for (target, receiver) in sockets.iter().enumerate() {
                let first_id_byte = u8::try_from(target + count * n).unwrap();
                // Short header: 0x40, then the ID.
                let short = [0x40, first_id_byte, 9, 9, 9, 9, 9, 9, 9, 9];
                // Long header: 0xc0, version, ID length 8, then the ID.
                let long = [0xc0, 0, 0, 0, 1, 8, first_id_byte, 1, 2, 3, 4, 5, 6, 7];
                sender.send_to(&short, addr).unwrap();
                sender.send_to(&long, addr).unwrap();
                let mut buffer = [0_u8; 64];
                for _ in 0..2 {
                    let (len, _) = receiver.recv_from(&mut buffer).unwrap();
                    let id_at = if buffer[0] & 0x80 == 0 { 1 } else { 6 };
                    assert!(len > id_at);
                    assert_eq!(endpoint_of(&buffer[id_at..], count), Some(target));
                }
            }
        }
    }
}
