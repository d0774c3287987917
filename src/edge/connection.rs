//! Reaching a client connection's socket, which tiny_http keeps to itself.
//!
//! tiny_http gives abide a request's peer address but never its socket, and
//! offers no way to close a connection after an answer. When abide refuses a
//! request whose body framing cannot be trusted (or that it will not read),
//! nothing after it on that connection may be read as a request, so abide
//! finds the socket among the process's descriptors by its two addresses
//! (listening port and peer address: unique among live TCP connections),
//! duplicates it, and shuts it down; tiny_http's connection thread then sees
//! end of file and closes its descriptors. Runs on writer threads, never on
//! the dispatch thread: one lookup reads `/proc/self/fd` and asks each
//! descriptor for its peer (about a microsecond each).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{SockAddr, SockRef};

/// Our own descriptor for a client connection's socket.
pub struct ConnectionSocket {
    fd: OwnedFd,
}

impl ConnectionSocket {
    /// The socket accepted on `listen_port` whose peer is `peer`, if it is
    /// still open.
    pub fn find(listen_port: u16, peer: SocketAddr) -> Option<ConnectionSocket> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            if peer_of(fd) != Some(peer) {
                continue;
            }
            // Our own duplicate: from here on the descriptor cannot be closed
            // and reused under us, so check it again through the duplicate.
            // SAFETY: F_DUPFD_CLOEXEC only reads `fd` (any integer is safe to
            // pass); on success it returns a new descriptor that we own.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                continue;
            }
            // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(dup) };
            let sock = SockRef::from(&owned);
            let local_port = sock.local_addr().ok().and_then(|a| a.as_socket());
            let same_peer = sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer);
            if same_peer && local_port.is_some_and(|a| a.port() == listen_port) {
                return Some(ConnectionSocket { fd: owned });
            }
        }
        None
    }

    /// Reads return end of file once what has arrived is read; answers can
    /// still be written.
    pub fn shut_reading(&self) {
        let _ = SockRef::from(&self.fd).shutdown(Shutdown::Read);
    }

    /// Ends the connection both ways: the client reads end of file after
    /// what was written, and tiny_http's connection thread ends.
    pub fn shut_down(&self) {
        let _ = SockRef::from(&self.fd).shutdown(Shutdown::Both);
    }
}

/// The peer address of descriptor `fd`, if it is a connected IP socket.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: getpeername writes at most `len` bytes into the zeroed storage
    // `try_init` provides; `fd` is only an integer to the kernel.
    let got = unsafe {
        SockAddr::try_init(|storage, len| {
            if libc::getpeername(fd, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    };
    got.ok().and_then(|((), addr)| addr.as_socket())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// The accepted socket is found by its peer address, and shutting it down ends the client's reads.
    #[test]
    fn finds_and_shuts_down_an_accepted_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // The client's own socket has the listener as its peer, so only the
        // accepted one matches.
        let found = ConnectionSocket::find(port, peer).expect("found");
        found.shut_down();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "end of file");
        let other_port = ConnectionSocket::find(port.wrapping_add(1), peer);
        assert!(other_port.is_none());
    }
}
