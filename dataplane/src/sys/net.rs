//! Sockets, eventfds, CPU affinity and resource limits: the setup-time system calls.
//!
//! Workers call these only when a listener opens or closes, or when a connection needs an
//! address the completion did not carry (`getpeername`/`getsockname`); the steady-state relay
//! never does.
//!
//! The upstream socket setup ([`UpstreamBind`], [`SocketOption`]) is defined here, next to the
//! code that applies it; the FIB re-exports it. `sys` imports nothing else from the crate.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// How an upstream socket is set up before it connects (Envoy `upstream_bind_config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamBind {
    /// Bind this source IP (port chosen by the kernel); `None` leaves it to routing.
    pub source_ip: Option<IpAddr>,
    /// `IP_FREEBIND`: bind a source address that is not (yet) local.
    pub freebind: bool,
    /// `setsockopt` calls, in order, before bind and connect (e.g. `SO_MARK`).
    pub socket_options: Vec<SocketOption>,
}

impl UpstreamBind {
    /// True when the socket needs nothing beyond what the kernel gives it.
    pub fn is_empty(&self) -> bool {
        self.source_ip.is_none() && !self.freebind && self.socket_options.is_empty()
    }
}

/// One integer `setsockopt(level, name, value)` (Envoy `SocketOption.int_value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOption {
    pub level: i32,
    pub name: i32,
    pub value: i32,
}

/// A listening TCP socket with SO_REUSEPORT, so every worker can own one on the same address;
/// with `transparent`, also `IP_TRANSPARENT` (needs CAP_NET_ADMIN), so it accepts connections
/// a TPROXY rule steers to it whatever their destination.
pub(crate) fn listen_reuseport(
    addr: SocketAddr,
    backlog: u32,
    transparent: bool,
) -> io::Result<OwnedFd> {
    listen(addr, backlog, transparent, true)
}

/// A listening TCP socket without SO_REUSEPORT (`enable_reuse_port: false`): the one socket
/// every worker accepts from; no other socket can bind its address while it is open.
pub(crate) fn listen_shared(
    addr: SocketAddr,
    backlog: u32,
    transparent: bool,
) -> io::Result<OwnedFd> {
    listen(addr, backlog, transparent, false)
}

fn listen(
    addr: SocketAddr,
    backlog: u32,
    transparent: bool,
    reuse_port: bool,
) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    if transparent {
        set_transparent(&socket, addr.ip())?;
    }
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(OwnedFd::from(socket))
}

/// Socket buffer size asked for on UDP sockets (the kernel caps it at `rmem_max` /
/// `wmem_max`): room for bursts while a worker is busy.
const UDP_SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A bound, non-blocking UDP socket with SO_REUSEPORT, so every worker can own one on the
/// same address (the kernel then keeps each source on one worker's socket).
pub(crate) fn bind_udp_reuseport(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec().nonblocking(),
        Some(Protocol::UDP),
    )?;
    // SO_REUSEPORT only: on UDP, SO_REUSEADDR would let another user's socket bind the same
    // address and take its datagrams (SO_REUSEPORT checks the user).
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    socket.bind(&SockAddr::from(addr))?;
    Ok(OwnedFd::from(socket))
}

/// A non-blocking UDP socket connected to `endpoint` (a UDP session's upstream side), set up
/// with the cluster's `bind` (its TCP-level socket options, meant for the cluster's TCP
/// connections, are left out). `connect` on UDP only records the peer: no packet, no wait.
/// The caller owns the returned descriptor.
pub(crate) fn udp_connect(endpoint: SocketAddr, bind: &UpstreamBind) -> io::Result<RawFd> {
    let socket = Socket::new(
        Domain::for_address(endpoint),
        Type::DGRAM.cloexec().nonblocking(),
        Some(Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    setup_upstream(socket.as_raw_fd(), bind, None, true)?;
    socket.connect(&SockAddr::from(endpoint))?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(socket))
}

fn with_socket<T>(fd: RawFd, f: impl FnOnce(&Socket) -> io::Result<T>) -> io::Result<T> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of this call; the
    // temporary Socket is never dropped (ManuallyDrop), so the fd is not closed here.
    let socket = std::mem::ManuallyDrop::new(unsafe { Socket::from_raw_fd(fd) });
    f(&socket)
}

fn set_transparent(socket: &Socket, ip: IpAddr) -> io::Result<()> {
    if ip.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    }
}

/// Sets an upstream socket up before its connect: `bind`'s socket options and freebind, then,
/// with `original_src` (the client's IP and a mark), `IP_TRANSPARENT`, `SO_MARK` (when the
/// mark is not 0) and a bind to the client's IP; else a bind to `bind.source_ip` if any. The
/// port is left to the kernel (`IP_BIND_ADDRESS_NO_PORT`, so the 4-tuple picks it at
/// connect). Plain non-blocking system calls on a fresh socket.
pub(crate) fn prepare_upstream(
    fd: RawFd,
    bind: &UpstreamBind,
    original_src: Option<(IpAddr, u32)>,
) -> io::Result<()> {
    setup_upstream(fd, bind, original_src, false)
}

/// [`prepare_upstream`]; on a UDP socket (`udp`), options at the TCP level are skipped.
fn setup_upstream(
    fd: RawFd,
    bind: &UpstreamBind,
    original_src: Option<(IpAddr, u32)>,
    udp: bool,
) -> io::Result<()> {
    with_socket(fd, |s| {
        for o in &bind.socket_options {
            if udp && o.level == libc::IPPROTO_TCP {
                continue;
            }
            set_int_option(fd, o.level, o.name, o.value)?;
        }
        if bind.freebind {
            s.set_freebind_v4(true)?;
        }
        let source = match original_src {
            Some((ip, mark)) => {
                set_transparent(s, ip)?;
                if mark != 0 {
                    s.set_mark(mark)?;
                }
                Some(ip)
            }
            None => bind.source_ip,
        };
        if let Some(ip) = source {
            set_int_option(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        Ok(())
    })
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the duration of the call and its size is passed;
    // the kernel validates fd, level and name and fails with an errno on anything wrong.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A TCP socket's stream positions: bytes received in order (`tcpi_bytes_received`), bytes
/// sent and acknowledged (`tcpi_bytes_acked`), and bytes in the send queue not yet
/// acknowledged (`SIOCOUTQ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpStreamCounts {
    pub received: u64,
    pub acked: u64,
    pub unacked: u64,
}

/// `getsockopt(TCP_INFO)` and `ioctl(SIOCOUTQ)` of `fd`.
pub(crate) fn tcp_stream_counts(fd: RawFd) -> io::Result<TcpStreamCounts> {
    // SAFETY: `tcp_info` is plain old data (integers only), so all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is that large and
    // lives across the call; `len` is a valid, writable socklen_t.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which is valid and
    // writable for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStreamCounts {
        received: info.tcpi_bytes_received,
        acked: info.tcpi_bytes_acked,
        unacked: u64::try_from(queued).unwrap_or(0),
    })
}

/// `getpeername`.
pub(crate) fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    with_socket(fd, |s| s.peer_addr())
        .ok()
        .and_then(|a| a.as_socket())
}

/// `getsockname`.
pub(crate) fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    with_socket(fd, |s| s.local_addr())
        .ok()
        .and_then(|a| a.as_socket())
}

/// The destination a connection had before an iptables REDIRECT/DNAT sent it here
/// (`SO_ORIGINAL_DST`, IPv4), or `None` when it was not redirected.
pub(crate) fn original_dst(fd: RawFd) -> Option<SocketAddr> {
    with_socket(fd, |s| s.original_dst_v4())
        .ok()
        .and_then(|a| a.as_socket())
}

/// Closes `fd` now (shutdown paths outside the ring).
pub(crate) fn close(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: the caller owns `fd` and never uses it again.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Accepts one connection already waiting in listening socket `fd`'s queue, without waiting
/// for one (the listener is made non-blocking first; only its own worker accepts on it, and
/// only once it stopped its multishot accept). `nonblocking` makes the accepted socket
/// non-blocking too. `Ok(None)` when the queue is empty.
pub(crate) fn accept_queued(fd: RawFd, nonblocking: bool) -> io::Result<Option<RawFd>> {
    with_socket(fd, |listener| {
        listener.set_nonblocking(true)?;
        match listener.accept() {
            Ok((socket, _)) => {
                socket.set_nonblocking(nonblocking)?;
                Ok(Some(std::os::fd::IntoRawFd::into_raw_fd(socket)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    })
}

/// Stops listening socket `fd` listening without closing it (`shutdown(SHUT_RD)`): the
/// kernel takes it out of its SO_REUSEPORT group at once, so new connections go to the
/// group's other sockets (another worker's, or a newer process's during a handover), and
/// the connections still in its queue move to one of them when `net.ipv4.tcp_migrate_req`
/// is 1, or are reset. The descriptor stays open until its owner closes it.
pub(crate) fn stop_listening(fd: RawFd) {
    let _ = with_socket(fd, |s| s.shutdown(std::net::Shutdown::Read));
}

/// `net.ipv4.tcp_migrate_req` of this process's network namespace: whether the connections
/// queued on a closing SO_REUSEPORT listener move to another socket of its group. `None`
/// when the kernel has no such setting (before Linux 5.14) or it cannot be read.
pub(crate) fn tcp_migrate_req() -> Option<bool> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(text.trim() != "0")
}

/// Sets SO_LINGER {1,0} and closes: the peer gets a reset.
pub(crate) fn reset_and_close(fd: RawFd) {
    if fd >= 0 {
        let _ = with_socket(fd, |s| s.set_linger(Some(std::time::Duration::ZERO)));
        close(fd);
    }
}

/// A pipe for the splice relay (`socket -> pipe -> socket`): both ends non-blocking and
/// close-on-exec. Two descriptors, closed when dropped.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: u32,
}

impl Pipe {
    /// `pipe2(O_CLOEXEC | O_NONBLOCK)`, then `F_SETPIPE_SZ` to `size` where the kernel allows
    /// it (`fs.pipe-max-size`, `fs.pipe-user-pages-soft`); [`Pipe::capacity`] is what it got.
    pub(crate) fn new(size: u32) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into a live two-element array; the result is
        // checked before they are used.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = size.min(i32::MAX as u32) as libc::c_int;
        // SAFETY: fcntl on a pipe we own; F_SETPIPE_SZ takes an int and fails harmlessly
        // (EPERM, EBUSY) when the limits do not allow the size, leaving the default.
        let _ = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        // SAFETY: fcntl on a pipe we own; F_GETPIPE_SZ takes no argument.
        let got = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if got <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe {
            read,
            write,
            capacity: got as u32,
        })
    }

    /// The read end.
    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The write end.
    pub(crate) fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Bytes the pipe holds when full.
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// An eventfd a control thread writes to wake a worker blocked in `io_uring_enter`.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A non-blocking, close-on-exec eventfd.
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, waking any reader.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// The descriptor, for an io_uring read or a poll.
    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Reads and resets the counter without blocking; true when it was non-zero.
    pub(crate) fn drain(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own non-blocking eventfd.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                &mut value as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        n == 8 && value != 0
    }
}

/// One descriptor to [`poll`]: what to wait for and, after the call, what happened.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Wait for `fd` to become readable.
    pub const READABLE: i16 = libc::POLLIN;
    /// Wait for `fd` to become writable (a non-blocking connect finished).
    pub const WRITABLE: i16 = libc::POLLOUT;

    /// Waits on `fd` for `events` (a combination of [`PollFd::READABLE`] and
    /// [`PollFd::WRITABLE`]).
    pub fn new(fd: RawFd, events: i16) -> Self {
        PollFd(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// True when the last [`poll`] found `fd` ready for something asked, or in error or
    /// hung up (which the next read or write then reports).
    pub fn ready(&self) -> bool {
        self.0.revents != 0
    }
}

/// Waits until one of `fds` is ready or `timeout_ms` has passed (`poll(2)`); returns how
/// many are ready. EINTR counts as nothing ready.
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: PollFd is repr(transparent) over libc::pollfd, so the slice is a valid array
    // of `fds.len()` pollfd structures that the kernel may write `revents` into while we
    // hold the only (mutable) borrow.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr() as *mut libc::pollfd,
            fds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size matches the set passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET only reads the set; indices are below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu checked).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu out of range",
        ));
    }
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this thread; size matches the set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads a live struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// What a drain does to one worker's socket: the queue is taken without waiting, then
    /// the socket leaves the port, and the next client is refused.
    #[test]
    fn a_listener_gives_up_its_queue_then_stops_listening() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = listen_reuseport(addr, 16, false).unwrap();
        let fd = listener.as_raw_fd();
        let addr = local_addr(fd).unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut taken = Vec::new();
        while let Some(conn) = accept_queued(fd, true).unwrap() {
            taken.push(conn);
        }
        assert_eq!(taken.len(), clients.len(), "every queued connection taken");
        stop_listening(fd);
        assert!(TcpStream::connect(addr).is_err(), "refused once stopped");
        for conn in taken {
            assert_eq!(peer_addr(conn).map(|a| a.ip()), Some(addr.ip()));
            close(conn);
        }
    }
}
