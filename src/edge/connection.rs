//! Reaching a client connection's socket, which tiny_http keeps to itself.
//!
//! tiny_http gives abide a request's peer address but never its socket, and
//! offers no way to close a connection after an answer. When abide refuses a
//! request whose body framing cannot be trusted (or that it will not read),
//! nothing after it on that connection may be read as a request, so abide
//! finds the socket among the process's descriptors by its two addresses
//! (listening port and peer address: unique among live TCP connections),
//! duplicates it, and shuts it down; tiny_http's connection thread then sees
//! end of file and closes its descriptors.
//!
//! A search asks every open descriptor for its peer (about 0.5 µs each, so
//! 4 ms with 8,000 descriptors open). So that refused requests cannot turn
//! into CPU for whoever sends them, searches run on one thread, the finder:
//! one pass over the descriptor table serves every search asked for since the
//! last one, and after a pass that took `d` the next starts no sooner than
//! `PASS_REST_FACTOR × d` later, so passes take at most a tenth of one core
//! however many refusals arrive (and cost nothing noticeable when few
//! descriptors are open). Writer threads ask and wait for the answer
//! (`SocketFinder::find`); the finder blocks on its channel when idle.
//!
//! Cutting: a connection abide must end without writing to it (one that
//! pipelined past its bound, or whose request found every pool full) is
//! handed over whole (`SocketFinder::cut`): the finder shuts its socket down
//! and resets it at its next pass, then drops what it was given (a request
//! whose unread body would otherwise be read at the client's pace), on its
//! own thread, so no caller ever waits or writes for it.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use socket2::{SockAddr, SockRef};

/// After a pass over the descriptor table that took `d`, the finder rests
/// `PASS_REST_FACTOR × d` before the next (a tenth of one core at most).
pub const PASS_REST_FACTOR: u32 = 9;
/// A writer waits this long at most for its search.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Searches waiting for the next pass; beyond it a search finds nothing (its
/// connection is then left to tiny_http and the socket timeouts).
const MAX_WAITING_SEARCHES: usize = 4096;
/// Stack of the finder thread.
const FINDER_STACK_BYTES: usize = 64 * 1024;

/// Descriptors kept open (on /dev/null) for the sockets the finder hands
/// out. Finding must work when the process has no descriptor left, which is
/// exactly when connections must be refused and closed: a found socket is
/// duplicated onto a free slot (`dup3`, which needs no new descriptor), and
/// the slot points at /dev/null again when its `ConnectionSocket` drops.
/// At most an eighth of the descriptors still free at start.
const RESERVED_DESCRIPTORS: usize = 80;

struct Reserve {
    null: OwnedFd,
    free: Mutex<Vec<OwnedFd>>,
}

impl Reserve {
    fn open() -> io::Result<Reserve> {
        let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        let open = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count()) as u64;
        let slots = RESERVED_DESCRIPTORS.min((limit.saturating_sub(open) / 8) as usize);
        let free = (0..slots).filter_map(|_| null.try_clone().ok()).collect();
        Ok(Reserve {
            null,
            free: Mutex::new(free),
        })
    }

    /// A duplicate of `fd` that this process owns: on a reserved slot if one
    /// is free, else on a new descriptor (which fails when none is left).
    fn duplicate(self: &Arc<Reserve>, fd: RawFd) -> Option<ConnectionSocket> {
        if let Some(slot) = self.free.lock().pop() {
            use std::os::fd::AsRawFd;
            // SAFETY: dup3 only reads `fd` (any integer) and replaces what
            // our own `slot` refers to, atomically.
            let done = unsafe { libc::dup3(fd, slot.as_raw_fd(), libc::O_CLOEXEC) };
            let socket = ConnectionSocket {
                fd: Some(slot),
                reserve: Some(self.clone()),
            };
            return (done >= 0).then_some(socket);
        }
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd` (any integer is safe to
        // pass); on success it returns a new descriptor that we own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
        (dup >= 0).then(|| ConnectionSocket {
            fd: Some(unsafe { OwnedFd::from_raw_fd(dup) }),
            reserve: None,
        })
    }
}

/// Our own descriptor for a client connection's socket.
pub struct ConnectionSocket {
    /// Always `Some` until dropped.
    fd: Option<OwnedFd>,
    /// Where the descriptor goes back to, if it is a reserved slot.
    reserve: Option<Arc<Reserve>>,
}

impl Drop for ConnectionSocket {
    fn drop(&mut self) {
        if let (Some(slot), Some(reserve)) = (self.fd.take(), &self.reserve) {
            use std::os::fd::AsRawFd;
            // SAFETY: both descriptors are ours; the slot now refers to
            // /dev/null and the socket loses this reference.
            unsafe { libc::dup3(reserve.null.as_raw_fd(), slot.as_raw_fd(), libc::O_CLOEXEC) };
            reserve.free.lock().push(slot);
        }
    }
}

impl ConnectionSocket {
    fn fd(&self) -> &OwnedFd {
        self.fd.as_ref().expect("present until dropped")
    }

    /// Reads return end of file once what has arrived is read; answers can
    /// still be written.
    pub fn shut_reading(&self) {
        let _ = SockRef::from(self.fd()).shutdown(Shutdown::Read);
    }

    /// Ends the connection both ways: the client reads end of file after
    /// what was written, and tiny_http's connection thread ends.
    pub fn shut_down(&self) {
        let _ = SockRef::from(self.fd()).shutdown(Shutdown::Both);
    }

    /// Makes the connection's final close abortive (a reset) once the
    /// client has acknowledged everything written, waiting for that at most
    /// `wait`. A client still sending a refused body would otherwise block
    /// for ever against a socket that reads nothing more (after a shutdown
    /// for reading the window stays shut); with the reset its send fails
    /// and it reads the answer it already has (Python's `requests`, curl).
    pub fn reset_once_delivered(&self, wait: Duration) {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + wait;
        loop {
            let mut unacknowledged: libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ for sockets) writes one int.
            let ok =
                unsafe { libc::ioctl(self.fd().as_raw_fd(), libc::TIOCOUTQ, &mut unacknowledged) }
                    == 0;
            if !ok || unacknowledged == 0 || Instant::now() >= deadline {
                break;
            }
            // The answer is a few hundred bytes: an ACK is a round trip away.
            thread::sleep(Duration::from_millis(1));
        }
        self.reset_now();
    }

    /// Makes the connection's final close abortive (a reset), at once.
    pub fn reset_now(&self) {
        let _ = SockRef::from(self.fd()).set_linger(Some(Duration::ZERO));
    }

    /// The socket's inode: which socket this is, whatever descriptor or
    /// address reaches it (a new connection from a reused client port is
    /// another socket).
    pub fn inode(&self) -> u64 {
        use std::os::fd::AsRawFd;
        // SAFETY: fstat writes into the zeroed struct; the descriptor is
        // ours. A failure leaves st_ino 0.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstat(self.fd().as_raw_fd(), &mut stat) };
        stat.st_ino as u64
    }
}

/// One search: the peer, and where its answer goes.
struct Search {
    peer: SocketAddr,
    answer: Sender<Option<ConnectionSocket>>,
}

/// What to run once a cut connection's socket is shut down: given the
/// socket's inode, or `None` if it was closed already.
pub type AfterCut = Box<dyn FnOnce(Option<u64>) + Send>;

/// A connection to cut: its peer, and what to run once its socket is shut.
struct Cut {
    peer: SocketAddr,
    then: AfterCut,
}

/// The finder thread and the channels that feed it.
pub struct SocketFinder {
    searches: Sender<Search>,
    /// Unbounded, but one entry per connection being cut at most (callers
    /// drop what needs no reading themselves), so bounded by the
    /// descriptor limit.
    cuts: Sender<Cut>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Sender<()>,
}

impl SocketFinder {
    /// Starts the finder for sockets accepted on `listen_port`.
    pub fn start(listen_port: u16) -> io::Result<SocketFinder> {
        let (searches, queue) = crossbeam_channel::bounded(MAX_WAITING_SEARCHES);
        let (cuts, to_cut) = crossbeam_channel::unbounded();
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let reserve = Arc::new(Reserve::open()?);
        let thread = thread::Builder::new()
            .name("abide-finder".into())
            .stack_size(FINDER_STACK_BYTES)
            .spawn(move || run_finder(listen_port, &reserve, &queue, &to_cut, &stopped))?;
        Ok(SocketFinder {
            searches,
            cuts,
            thread: Mutex::new(Some(thread)),
            stop,
        })
    }

    /// Ends the connection whose peer is `peer` at the finder's next pass
    /// (shut down both ways, then reset), and only then runs `then`, on the
    /// finder thread. Never blocks. After `stop`, `then` is dropped unrun.
    pub fn cut(&self, peer: SocketAddr, then: AfterCut) {
        let _ = self.cuts.send(Cut { peer, then });
    }

    /// The socket whose peer is `peer`, if it is still open. Blocks until
    /// the finder's next pass (at most ten passes' time).
    pub fn find(&self, peer: SocketAddr) -> Option<ConnectionSocket> {
        let (answer, found) = crossbeam_channel::bounded(1);
        self.searches.try_send(Search { peer, answer }).ok()?;
        found.recv_timeout(FIND_TIMEOUT).ok().flatten()
    }

    /// Ends the finder thread (searches asked afterwards find nothing).
    pub fn stop(&self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

/// The finder thread: waits for searches, then serves every waiting one with
/// a single pass, resting between passes (`PASS_REST_FACTOR`).
fn run_finder(
    listen_port: u16,
    reserve: &Arc<Reserve>,
    queue: &Receiver<Search>,
    to_cut: &Receiver<Cut>,
    stopped: &Receiver<()>,
) {
    let mut not_before = Instant::now();
    loop {
        let mut wanted: HashMap<SocketAddr, Wanted> = HashMap::new();
        crossbeam_channel::select! {
            recv(queue) -> search => match search {
                Ok(search) => wanted.entry(search.peer).or_default().answers.push(search.answer),
                Err(_) => return,
            },
            recv(to_cut) -> cut => match cut {
                Ok(cut) => wanted.entry(cut.peer).or_default().then.push(cut.then),
                Err(_) => return,
            },
            recv(stopped) -> _ => return,
        }
        // Searches and cuts that arrive before the next pass may start join this one.
        loop {
            crossbeam_channel::select! {
                recv(queue) -> search => match search {
                    Ok(search) => wanted.entry(search.peer).or_default().answers.push(search.answer),
                    Err(_) => return,
                },
                recv(to_cut) -> cut => match cut {
                    Ok(cut) => wanted.entry(cut.peer).or_default().then.push(cut.then),
                    Err(_) => return,
                },
                default(not_before.saturating_duration_since(Instant::now())) => break,
            }
        }
        let started = Instant::now();
        let (found, cut) = pass(listen_port, reserve, &wanted);
        not_before = Instant::now() + started.elapsed() * PASS_REST_FACTOR;
        for (peer, inode) in cut {
            if let Some(wanted) = wanted.remove(&peer) {
                // Unread bodies now read as end of file: they drop at once.
                for then in wanted.then {
                    then(Some(inode));
                }
            }
        }
        for (peer, socket) in found {
            if let Some(wanted) = wanted.remove(&peer) {
                let inode = socket.inode();
                if !wanted.then.is_empty() {
                    socket.shut_down();
                    socket.reset_now();
                }
                answer_all(wanted.answers, Some(socket));
                for then in wanted.then {
                    then(Some(inode));
                }
            }
        }
        for (_, wanted) in wanted.drain() {
            answer_all(wanted.answers, None);
            for then in wanted.then {
                then(None);
            }
        }
    }
}

/// What the next pass looks for a peer's socket for.
#[derive(Default)]
struct Wanted {
    /// Searches waiting for the socket.
    answers: Vec<Sender<Option<ConnectionSocket>>>,
    /// Cuts: what to run once the socket is shut down.
    then: Vec<AfterCut>,
}

/// Gives `socket` to the first asker (a peer is rarely asked for twice at
/// once; the others find nothing, and their connection is closed already).
fn answer_all(answers: Vec<Sender<Option<ConnectionSocket>>>, socket: Option<ConnectionSocket>) {
    let mut socket = socket;
    for answer in answers {
        let _ = answer.try_send(socket.take());
    }
}

/// What a pass found: sockets for searches, and the inodes of those it cut.
type Pass = (Vec<(SocketAddr, ConnectionSocket)>, Vec<(SocketAddr, u64)>);

/// One pass over the descriptor table: the sockets accepted on
/// `listen_port` whose peers are searched for, and those only to cut, which
/// are shut down and reset as they are found (so that a pass with many cuts
/// holds few descriptors), with their inodes.
fn pass(listen_port: u16, reserve: &Arc<Reserve>, wanted: &HashMap<SocketAddr, Wanted>) -> Pass {
    let mut found = Vec::new();
    let mut cut = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for fd in 0..descriptor_table_size() {
        let Some(peer) = peer_of(fd) else {
            continue;
        };
        let Some(wants) = wanted.get(&peer) else {
            continue;
        };
        if seen.contains(&peer) {
            continue;
        }
        // Our own duplicate: from here on the descriptor cannot be closed
        // and reused under us, so check it again through the duplicate.
        let Some(socket) = reserve.duplicate(fd) else {
            continue;
        };
        let sock = SockRef::from(socket.fd());
        let local = sock.local_addr().ok().and_then(|a| a.as_socket());
        let same_peer = sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer);
        if !(same_peer && local.is_some_and(|a| a.port() == listen_port)) {
            continue;
        }
        seen.insert(peer);
        if wants.answers.is_empty() {
            socket.shut_down();
            socket.reset_now();
            cut.push((peer, socket.inode()));
        } else {
            found.push((peer, socket));
        }
    }
    (found, cut)
}

/// Slots in this process's descriptor table (`FDSize` in
/// `/proc/self/status`): every open descriptor is below it.
fn descriptor_table_size() -> RawFd {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("FDSize:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(1024)
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
    use std::os::fd::AsRawFd;
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
        let finder = SocketFinder::start(port).unwrap();
        let found = finder.find(peer).expect("found");
        found.shut_down();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "end of file");
        let elsewhere = SocketFinder::start(port.wrapping_add(1)).unwrap();
        assert!(elsewhere.find(peer).is_none(), "another listening port");
        elsewhere.stop();
        finder.stop();
        assert!(
            finder.find(peer).is_none(),
            "a stopped finder finds nothing"
        );
    }

    /// Searches asked at once are served, each with its own socket.
    #[test]
    fn concurrent_searches_each_find_their_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let finder = std::sync::Arc::new(SocketFinder::start(port).unwrap());
        let pairs: Vec<(TcpStream, TcpStream, SocketAddr)> = (0..20)
            .map(|_| {
                let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                let (server_side, peer) = listener.accept().unwrap();
                (client, server_side, peer)
            })
            .collect();
        let searches: Vec<_> = pairs
            .iter()
            .map(|(_, _, peer)| {
                let (finder, peer) = (finder.clone(), *peer);
                std::thread::spawn(move || finder.find(peer).map(|s| peer_of(s.fd().as_raw_fd())))
            })
            .collect();
        for (search, (_, _, peer)) in searches.into_iter().zip(&pairs) {
            assert_eq!(search.join().unwrap(), Some(Some(*peer)));
        }
        finder.stop();
    }
}
