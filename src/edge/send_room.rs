//! Whether a connection's socket can take an answer without blocking.
//!
//! The dispatch thread may write a small answer itself, saving the hand-off
//! to a writer thread, but only if that write cannot block: a client that
//! stops reading must never stall the thread every request passes through.
//! tiny_http never hands out a connection's socket, so abide asks the kernel
//! about it by its four addresses, over a netlink `sock_diag` socket (what
//! `ss` uses): the exact-match lookup of one TCP socket, with its memory
//! figures (`INET_DIAG_SKMEMINFO`). A blocking `send` waits only when the
//! bytes queued in the socket (`wmem_queued`, unsent or unacknowledged,
//! counted with their buffers' overhead) reach its send buffer (`sndbuf`);
//! the queue only drains between the question and the write, because no
//! other thread writes to a connection the dispatch thread is answering.
//! So an answer of `len` bytes is written at once when the queue is
//! `EMPTY_QUEUE_BYTES`-small, and `len` plus a generous overhead fits in
//! what is left of the buffer.
//!
//! Owns the netlink socket. Never blocks: the kernel answers within the
//! `send`, and the answer is read without waiting (no answer: no room).
//! Any doubt (no netlink, a wildcard listener whose local address is
//! unknown, a socket not `ESTABLISHED`, a reply that does not match) reads
//! as "no room", and the answer goes to a writer thread as before.
//! Runs on the dispatch threads; Linux only.

use std::net::{IpAddr, SocketAddr};

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

/// The largest answer the dispatch thread writes itself.
pub const INLINE_ANSWER_MAX_BYTES: usize = 16 * 1024;
/// The socket's queue must hold at most this much for an answer to be
/// written at once: a client that reads has had its last answer
/// acknowledged by the time its next request arrives.
const EMPTY_QUEUE_BYTES: u32 = 4096;
/// What an answer may cost in the send buffer beyond its own bytes (each
/// segment's buffer overhead, counted by the kernel as `truesize`).
const OVERHEAD_BYTES: usize = 4096;

// linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER_BYTES: usize = 16;
const INET_DIAG_REQ_V2_BYTES: usize = 56;
const INET_DIAG_MSG_BYTES: usize = 72;
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_SNDBUF: usize = 3;
const SK_MEMINFO_WMEM_QUEUED: usize = 5;
const TCP_ESTABLISHED: u8 = 1;

/// Asks the kernel about the sockets of connections to one local address.
pub struct SendRoom {
    /// The netlink socket and the last question's sequence number; one
    /// question at a time.
    socket: Mutex<(Socket, u32)>,
    local: SocketAddr,
}

impl SendRoom {
    /// For connections accepted on `local`; `None` when the kernel cannot be
    /// asked (no netlink, as under a sandbox without `AF_NETLINK`) or the
    /// listener is on a wildcard address (a connection's own local address
    /// is then unknown to abide).
    pub fn open(local: SocketAddr) -> Option<SendRoom> {
        if local.ip().is_unspecified() || !cfg!(target_os = "linux") {
            return None;
        }
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
        )
        .ok()?;
        Some(SendRoom {
            socket: Mutex::new((socket, 0)),
            local,
        })
    }

    /// Whether the connection from `peer` can take `len` more bytes now
    /// without the write blocking.
    pub fn fits(&self, peer: SocketAddr, len: usize) -> bool {
        len <= INLINE_ANSWER_MAX_BYTES && self.memory(peer).is_some_and(|m| m.fits(len))
    }

    /// The socket's send queue and buffer, if it is an established
    /// connection from `peer` to the local address.
    fn memory(&self, peer: SocketAddr) -> Option<SendMemory> {
        let mut guard = self.socket.lock();
        let (socket, sequence) = &mut *guard;
        *sequence = sequence.wrapping_add(1);
        let sequence = *sequence;
        let request = diag_request(self.local, peer, sequence)?;
        socket.send(&request).ok()?;
        let mut reply = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        // Replies to earlier questions that went unread are skipped.
        loop {
            let n = socket
                .recv_with_flags(&mut reply, libc::MSG_DONTWAIT)
                .ok()?;
            // SAFETY: recv initialised the first `n` bytes.
            let bytes: &[u8] = unsafe { std::slice::from_raw_parts(reply.as_ptr().cast(), n) };
            match parse_reply(bytes, sequence, self.local, peer) {
                Reply::Other => continue,
                Reply::Mismatch => return None,
                Reply::Memory(memory) => return Some(memory),
            }
        }
    }
}

/// What the kernel said of one socket's send side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SendMemory {
    /// Bytes queued (unsent or unacknowledged), with their overhead.
    queued: u32,
    /// The send buffer's size.
    buffer: u32,
}

impl SendMemory {
    fn fits(self, len: usize) -> bool {
        self.queued <= EMPTY_QUEUE_BYTES
            && self.queued as usize + len + OVERHEAD_BYTES <= self.buffer as usize
    }
}

enum Reply {
    /// Not the answer to this question (an earlier one's).
    Other,
    /// No such established socket, or an answer that does not match.
    Mismatch,
    Memory(SendMemory),
}

/// One `SOCK_DIAG_BY_FAMILY` request for the TCP socket from `peer` to
/// `local`, asking for its memory figures.
fn diag_request(local: SocketAddr, peer: SocketAddr, sequence: u32) -> Option<Vec<u8>> {
    let family = match (local.ip(), peer.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return None,
    };
    let total = NLMSG_HEADER_BYTES + INET_DIAG_REQ_V2_BYTES;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&sequence.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, extensions wanted, padding, states.
    m.extend_from_slice(&[
        family as u8,
        libc::IPPROTO_TCP as u8,
        1 << (INET_DIAG_SKMEMINFO - 1),
        0,
    ]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&socket_id(local, peer));
    debug_assert_eq!(m.len(), total);
    Some(m)
}

/// `inet_diag_sockid`: the local end as source, the peer as destination
/// (how the kernel reports an accepted socket), any interface, no cookie.
fn socket_id(local: SocketAddr, peer: SocketAddr) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&peer.port().to_be_bytes());
    id[4..20].copy_from_slice(&address_bytes(local.ip()));
    id[20..36].copy_from_slice(&address_bytes(peer.ip()));
    // idiag_if 0; idiag_cookie INET_DIAG_NOCOOKIE (all ones).
    id[40..48].copy_from_slice(&[0xff; 8]);
    id
}

fn address_bytes(ip: IpAddr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes.copy_from_slice(&v6.octets()),
    }
    bytes
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the kernel's answer: an `inet_diag_msg` for exactly the socket
/// asked about, in state `ESTABLISHED`, with its memory figures. (For a
/// four-tuple with no established socket the lookup may find the listening
/// socket instead: its state and ports tell it apart.)
fn parse_reply(bytes: &[u8], sequence: u32, local: SocketAddr, peer: SocketAddr) -> Reply {
    let parsed = || -> Option<Reply> {
        let length = read_u32(bytes, 0)? as usize;
        let kind = read_u16(bytes, 4)?;
        if read_u32(bytes, 8)? != sequence {
            return Some(Reply::Other);
        }
        if kind == NLMSG_ERROR || length > bytes.len() {
            return Some(Reply::Mismatch);
        }
        let msg = bytes.get(NLMSG_HEADER_BYTES..length)?;
        let state = *msg.get(1)?;
        let id = msg.get(4..52)?;
        let expected = socket_id(local, peer);
        // Ports and both addresses (the interface and cookie may differ).
        if state != TCP_ESTABLISHED || id[..36] != expected[..36] {
            return Some(Reply::Mismatch);
        }
        let mut at = INET_DIAG_MSG_BYTES;
        while at + 4 <= msg.len() {
            let attr_len = read_u16(msg, at)? as usize;
            let attr_kind = read_u16(msg, at + 2)?;
            if attr_len < 4 {
                return None;
            }
            if attr_kind == INET_DIAG_SKMEMINFO {
                let value = |i: usize| read_u32(msg, at + 4 + 4 * i);
                return Some(Reply::Memory(SendMemory {
                    queued: value(SK_MEMINFO_WMEM_QUEUED)?,
                    buffer: value(SK_MEMINFO_SNDBUF)?,
                }));
            }
            at += attr_len.next_multiple_of(4);
        }
        None
    };
    parsed().unwrap_or(Reply::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn connected_pair(listen: &str) -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
        let listener = TcpListener::bind(listen).unwrap();
        let local = listener.local_addr().unwrap();
        let client = TcpStream::connect(local).unwrap();
        let (server, peer) = listener.accept().unwrap();
        (client, server, local, peer)
    }

    /// A connection whose client reads has room for a small answer; one
    /// whose client stops reading has none once its queue fills, long
    /// before a write on it would block.
    #[test]
    #[cfg_attr(
        abide_cross,
        ignore = "qemu-user does not translate sock_diag netlink; the kernel's answers are tested natively"
    )]
    fn a_client_that_stops_reading_leaves_no_room() {
        let (mut client, server, local, peer) = connected_pair("127.0.0.1:0");
        let room = SendRoom::open(local).expect("netlink sock_diag is available");
        assert!(room.fits(peer, 300));
        assert!(
            !room.fits(peer, INLINE_ANSWER_MAX_BYTES + 1),
            "too large to write inline"
        );
        // The client stops reading: fill its window and our queue.
        server.set_nonblocking(true).unwrap();
        let chunk = [b'x'; 4096];
        let mut sent = 0usize;
        while let Ok(n) = (&server).write(&chunk) {
            sent += n;
            assert!(sent < 512 << 20, "the send queue never filled");
        }
        assert!(!room.fits(peer, 300), "a full queue has no room");
        // Once the client reads everything, the queue drains.
        let mut buf = vec![0u8; 1 << 16];
        let mut read = 0usize;
        while read < sent {
            read += client.read(&mut buf).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !room.fits(peer, 300) {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never drained"
            );
            std::thread::yield_now();
        }
    }

    /// Only the socket asked about counts: another port, a listener or a
    /// closed connection read as no room; IPv6 works as IPv4 does.
    #[test]
    #[cfg_attr(
        abide_cross,
        ignore = "qemu-user does not translate sock_diag netlink; the kernel's answers are tested natively"
    )]
    fn only_an_established_matching_socket_has_room() {
        let (_client, _server, local, peer) = connected_pair("[::1]:0");
        let room = SendRoom::open(local).expect("netlink sock_diag is available");
        assert!(room.fits(peer, 300));
        let elsewhere = SocketAddr::new(peer.ip(), peer.port().wrapping_add(1).max(1));
        assert!(!room.fits(elsewhere, 300));
        let v4 = SocketAddr::from(([127, 0, 0, 1], peer.port()));
        assert!(!room.fits(v4, 300));
        let (client, server, local, peer) = connected_pair("127.0.0.1:0");
        let room = SendRoom::open(local).unwrap();
        assert!(room.fits(peer, 300));
        drop(client);
        drop(server);
        assert!(!room.fits(peer, 300), "a closed connection has no room");
    }

    /// A wildcard listener's connections cannot be asked about.
    #[test]
    fn a_wildcard_listener_is_not_asked_about() {
        assert!(SendRoom::open(SocketAddr::from(([0, 0, 0, 0], 8080))).is_none());
        assert!(SendRoom::open("[::]:8080".parse().unwrap()).is_none());
    }

    /// A queue with data in flight, or a buffer too small, has no room.
    #[test]
    fn room_is_counted_with_overhead() {
        let memory = |queued, buffer| SendMemory { queued, buffer };
        assert!(memory(0, 16384).fits(300));
        assert!(memory(0, 16384).fits(12 * 1024));
        assert!(!memory(0, 16384).fits(13 * 1024));
        assert!(!memory(EMPTY_QUEUE_BYTES + 1, 1 << 20).fits(1));
        assert!(!memory(0, 4096).fits(1));
    }
}
