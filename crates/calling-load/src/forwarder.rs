//! The baseline: a plain UDP forwarder on one socket and one thread, which
//! forwards each packet of a group's member to the group's other members.
//! What a relay costs with no encryption, no congestion control and no
//! signaling, measured with the same generator.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Registration packet: group id (4 bytes, little endian), member (1 byte).
const REGISTRATION_LEN: usize = 5;

/// Who is in which group.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    members: HashMap<u32, Vec<SocketAddr>>,
    group_of: HashMap<SocketAddr, u32>,
}

impl Groups {
    /// Registers `from` when `packet` is a registration; true when it was.
    pub(crate) fn register(&mut self, from: SocketAddr, packet: &[u8]) -> bool {
        let Ok(registration) = <[u8; REGISTRATION_LEN]>::try_from(packet) else {
            return false;
        };
        if self.group_of.contains_key(&from) {
            return true;
        }
        let group = u32::from_le_bytes([
            registration[0],
            registration[1],
            registration[2],
            registration[3],
        ]);
        self.members.entry(group).or_default().push(from);
        self.group_of.insert(from, group);
        true
    }

    /// The other members of `from`'s group.
    pub(crate) fn others(&self, from: SocketAddr) -> impl Iterator<Item = &SocketAddr> {
        self.group_of
            .get(&from)
            .and_then(|group| self.members.get(group))
            .into_iter()
            .flatten()
            .filter(move |member| **member != from)
    }
}

/// Runs the forwarder on `listen`, printing `READY <address>` once bound.
pub(crate) async fn run(listen: SocketAddr) -> Result<(), String> {
    let socket = tokio::net::UdpSocket::bind(listen)
        .await
        .map_err(|error| format!("{listen}: {error}"))?;
    let bound = socket.local_addr().map_err(|error| error.to_string())?;
    println!("READY {bound}");
    let mut groups = Groups::default();
    let mut buffer = vec![0_u8; 2_048];
    loop {
        let (len, from) = socket
            .recv_from(&mut buffer)
            .await
            .map_err(|error| error.to_string())?;
        let packet = &buffer[..len];
        if groups.register(from, packet) {
            let _ = socket.send_to(b"OK", from).await;
            continue;
        }
        for to in groups.others(from) {
            let _ = socket.send_to(packet, to).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_reach_the_others_of_their_group_only() {
        let address = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut groups = Groups::default();
        for (port, group, member) in [(1, 7_u32, 0_u8), (2, 7, 1), (3, 7, 2), (4, 8, 0)] {
            let mut packet = group.to_le_bytes().to_vec();
            packet.push(member);
            assert!(groups.register(address(port), &packet));
        }
        assert!(!groups.register(address(5), b"audio, not a registration"));
        let others: Vec<_> = groups.others(address(2)).copied().collect();
        assert_eq!(others, [address(1), address(3)]);
        assert_eq!(groups.others(address(4)).count(), 0);
        assert_eq!(groups.others(address(9)).count(), 0);
    }
}
