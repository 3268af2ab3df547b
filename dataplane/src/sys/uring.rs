//! A safe io_uring driver for one worker thread.
//!
//! Memory the kernel reads or writes on behalf of an operation (provided buffers, socket
//! addresses for connect, timespecs, the eventfd read buffer, socket-option values) is owned by
//! [`Ring`] itself or is `'static`, so it outlives every operation: when the ring is dropped it
//! first cancels everything in flight and waits for the last completion before anything is
//! freed. Provided buffers carry an ownership state (kernel, worker, in a send) checked on
//! every transition, so a buffer the kernel may still read is never handed back to it.

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::SockAddr;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    /// The `user_data` of the operation.
    pub user_data: u64,
    /// The result: >= 0 on success, `-errno` on failure.
    pub result: i32,
    /// CQE flags.
    pub flags: u32,
}

// What the worker copies out of the completion queue per event: the size of a plain CQE,
// 16 bytes (four per cache line), whatever fields are added here.
const _: () = assert!(std::mem::size_of::<Completion>() == 16);

impl Completion {
    /// True when a multishot operation will post more completions.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion filled, if any.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// How a ring is set up (the worker's `--taskrun` and registered-ring levers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingSetup {
    /// `IORING_SETUP_DEFER_TASKRUN` (completion work runs only when the worker waits), else
    /// `IORING_SETUP_COOP_TASKRUN` (at its next system call or wake-up).
    pub defer_taskrun: bool,
    /// Register the ring's own descriptor so each `io_uring_enter` skips its lookup. The
    /// index is the creating thread's: the ring must be used on that thread (as a worker's
    /// is).
    pub register_ring_fd: bool,
}

/// How one wait goes (see `worker::wait::WaitPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaitSpec {
    /// Look for completions this long without a system call before sleeping (0: never).
    pub busy_poll_us: u32,
    /// Sleep until this many completions are pending ...
    pub batch: u32,
    /// ... or this long passed with at least one (0: wake at the first).
    pub min_wait_us: u32,
}

/// What one wait did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Completions were already there, or the backlog held some: no sleep.
    Ready,
    /// The busy-poll found completions before its budget ran out: no sleep.
    Polled,
    /// The busy-poll ran its whole budget and found nothing; then slept.
    Missed,
    /// Entered the kernel to sleep (it may have returned at once).
    Slept,
}

// io_uring_enter flags and register opcodes (linux/io_uring.h), for the entries made here
// rather than through the crate (whose registered ring index does not outlive a Submitter).
const ENTER_GETEVENTS: u32 = 1 << 0;
const ENTER_EXT_ARG: u32 = 1 << 3;
const ENTER_REGISTERED_RING: u32 = 1 << 4;
const REGISTER_RING_FDS: u32 = 20;

/// `struct io_uring_getevents_arg` (linux/io_uring.h).
#[repr(C)]
#[derive(Debug, Default)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct io_uring_rsrc_update` (linux/io_uring.h).
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Registers `ring_fd` with itself (`IORING_REGISTER_RING_FDS`); its index, or `None` when
/// the kernel refuses (before Linux 5.18), in which case enters name the descriptor.
fn register_ring_fd(ring_fd: RawFd) -> Option<i32> {
    let mut update = RsrcUpdate {
        offset: u32::MAX, // any free slot; the kernel writes back which
        resv: 0,
        data: ring_fd as u64,
    };
    // SAFETY: `update` is a valid io_uring_rsrc_update that lives across the call; the
    // kernel writes only its `offset`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            REGISTER_RING_FDS,
            &mut update as *mut RsrcUpdate,
            1u32,
        )
    };
    (rc == 1).then_some(update.offset as i32)
}

/// Why the ring could not be created.
#[derive(Debug)]
pub(crate) enum RingError {
    /// io_uring is refused by the kernel or a seccomp profile (EPERM, ENOSYS, EACCES).
    Refused(io::Error),
    /// Any other failure.
    Other(io::Error),
}

/// `SO_LINGER {on, 0}`: close sends a reset. Static, so it outlives any operation.
static LINGER_ZERO: libc::linger = libc::linger {
    l_onoff: 1,
    l_linger: 0,
};
/// The integer 1, for boolean socket options.
static ONE: libc::c_int = 1;

/// Buffer ownership states.
const BUF_KERNEL: u8 = 0;
const BUF_WORKER: u8 = 1;
const BUF_SENDING: u8 = 2;
/// Held for a receive into it at an offset ([`Ring::recv_into`]): the kernel writes it.
const BUF_RECEIVING: u8 = 4;
/// Owned by the pool but not in the kernel's ring (beyond the window).
const BUF_SPARE: u8 = 3;

/// Most buffers the kernel's ring holds at once. The ring is FIFO, so every buffer in it
/// gets written in turn; keeping it to a window (refilled from a LIFO stack of spares, so
/// the buffers just used come back first) keeps the memory a worker touches proportional
/// to the data in flight, not to the pool size.
const KERNEL_WINDOW: u16 = 128;
/// The same for the large buffers: each is big, so fewer rotate through the kernel.
const LARGE_KERNEL_WINDOW: u16 = 4;
/// The same for the datagram buffers: a burst of this many datagrams is taken in at once.
const DATAGRAM_KERNEL_WINDOW: u16 = 64;

/// Size of each datagram buffer: the 16-byte `io_uring_recvmsg_out` header, a 28-byte IPv6
/// source address and the largest UDP payload (65,527 bytes), rounded up to whole pages.
pub(crate) const DATAGRAM_BUFFER_BYTES: u32 = 69_632;
/// Room for the source address a datagram receive records (`sockaddr_in6`).
const DATAGRAM_NAME_BYTES: u32 = std::mem::size_of::<libc::sockaddr_in6>() as u32;

/// Direct-descriptor slots registered for [`Ring::shed_accept`].
const SHED_SLOTS: u32 = 16;

/// What a [`Ring::splice_when_ready`] waits for before its splice starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The source socket (`fd_in`) has data, end of stream or an error: a receive.
    SourceReadable,
    /// The sink socket (`fd_out`) has room or an error: a send.
    SinkWritable,
}

/// Which of the worker's two buffer pools a receive draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BufClass {
    /// The small buffers (buffer group 0): every receive starts here.
    #[default]
    Small,
    /// The large buffers (buffer group 1), for a direction that keeps filling small ones.
    Large,
    /// The datagram buffers (buffer group 2): each holds one whole UDP datagram, with its
    /// source address when received on a listener.
    Datagram,
}

/// A provided buffer the worker holds, by its worker-wide id. Only the ring makes one (when a
/// receive hands the buffer over, or when a send's completion names it), so nothing else —
/// a pipe's id, a number from elsewhere — can be passed where the ring expects a buffer; and
/// every use is checked against the buffer's state, so a stale copy panics instead of
/// touching a buffer another connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingBuf(u16);

impl std::fmt::Display for RingBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl RingBuf {
    /// The id as a number (to carry in `user_data`; [`Ring::buffer_in_send`] turns it back).
    pub fn raw(self) -> u16 {
        self.0
    }

    /// The pool it belongs to.
    pub(crate) fn class(self) -> BufClass {
        if self.0 & LARGE_BIT != 0 {
            BufClass::Large
        } else if self.0 & DATAGRAM_BIT != 0 {
            BufClass::Datagram
        } else {
            BufClass::Small
        }
    }
}

/// Bit set in a worker-wide buffer id for a buffer of the large pool; the rest is the
/// buffer's index in its pool.
const LARGE_BIT: u16 = 0x8000;
/// The same for the datagram pool (so each pool holds at most 16384 buffers).
const DATAGRAM_BIT: u16 = 0x4000;

/// The provided-buffer ring of one pool of one worker.
struct BufPool {
    /// Ring of `count` entries, page-aligned, shared with the kernel.
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    /// `count * size` bytes of buffers.
    data: *mut u8,
    data_layout: Layout,
    size: u32,
    count: u16,
    /// Our producer index (the kernel consumes from head).
    tail: u16,
    state: Box<[u8]>,
    /// Buffers the kernel may pick now.
    in_kernel: u32,
    /// Most buffers in the kernel's ring at once.
    window: u32,
    /// Pool buffers outside the ring, most recently used on top.
    spare: Vec<u16>,
    /// The io_uring buffer group id.
    group: u16,
}

const SMALL_GROUP: u16 = 0;
const LARGE_GROUP: u16 = 1;
const DATAGRAM_GROUP: u16 = 2;

impl BufPool {
    fn new(count: u16, size: u32, window: u16, group: u16) -> io::Result<BufPool> {
        if !count.is_power_of_two() || count == 0 || count > DATAGRAM_BIT || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two, at most 16384",
            ));
        }
        let ring_layout = Layout::from_size_align(usize::from(count) * 16, 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let data_layout = Layout::from_size_align(usize::from(count) * size as usize, 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have a non-zero size (count and size are > 0).
        let ring = unsafe { alloc_zeroed(ring_layout) } as *mut types::BufRingEntry;
        let data = map_anonymous(data_layout.size());
        if ring.is_null() || data.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer pool"));
        }
        Ok(BufPool {
            ring,
            ring_layout,
            data,
            data_layout,
            size,
            count,
            tail: 0,
            state: vec![BUF_WORKER; usize::from(count)].into_boxed_slice(),
            in_kernel: 0,
            window: u32::from(count.min(window)),
            spare: Vec::with_capacity(usize::from(count)),
            group,
        })
    }

    /// Registers the ring with `ring` and puts the first `window` buffers in it.
    fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory is page-aligned, `count` entries long, zeroed, and owned by
        // this pool, which lives inside the `Ring` and is only freed after the ring is torn
        // down (or leaked when teardown times out).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring as u64,
                self.count,
                self.group,
                0,
            )?;
        }
        let window = self.window as u16;
        for bid in 0..window {
            self.add(bid);
        }
        for bid in (window..self.count).rev() {
            self.state[usize::from(bid)] = BUF_SPARE;
            self.spare.push(bid);
        }
        self.publish();
        Ok(())
    }

    /// Puts buffer `bid` in the ring (not yet visible to the kernel until `publish`).
    fn add(&mut self, bid: u16) {
        let mask = self.count - 1;
        let idx = usize::from(self.tail & mask);
        // SAFETY: idx < count, so the entry is inside the ring allocation; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: bid < count, so the offset stays inside the data allocation.
        let addr = unsafe { self.data.add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.state[usize::from(bid)] = BUF_KERNEL;
        self.in_kernel += 1;
    }

    /// Makes every added buffer visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the ring pointer is the page-aligned base of a live, initialized ring;
        // `tail` returns the address of the shared tail field, which we write with release
        // ordering so the kernel sees the entries before the new tail.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts; `Ring::drop` guarantees the
        // kernel no longer uses them (or leaks the pool instead of dropping it).
        unsafe {
            dealloc(self.ring as *mut u8, self.ring_layout);
            libc::munmap(self.data as *mut libc::c_void, self.data_layout.size());
        }
    }
}

/// `len` bytes of private anonymous memory: zero pages that cost nothing until written, so
/// the pool's resident size follows the buffers actually used. Null on failure.
fn map_anonymous(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping aliases nothing; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p as *mut u8
    }
}

/// A worker's io_uring with the memory its operations use.
pub(crate) struct Ring {
    ring: IoUring,
    /// The small buffers (group 0), the large ones (group 1) and the datagram ones (group
    /// 2); the last two empty when disabled.
    bufs: [BufPool; 3],
    /// Per datagram buffer: where a `send_to` from it goes.
    datagram_dests: Box<[SockAddr]>,
    /// The header datagram receives on listeners take (room for an IPv6 source address, no
    /// control data). The kernel copies it when it prepares the receive.
    datagram_msghdr: Box<libc::msghdr>,
    /// Per connect lane (a connection's upstream, or its shadow): the address a connect is
    /// going to. The kernel copies it when it consumes the entry (`IORING_FEAT_SUBMIT_STABLE`,
    /// checked at start), so a lane's storage is reused only after a submission took it.
    connect_addrs: Box<[Option<SockAddr>]>,
    /// Per connect lane: the submission epoch its storage was last written in. Equal to
    /// `submit_epoch` while the entries that read it may still sit in the submission queue.
    connect_epochs: Box<[u64]>,
    /// Counts submissions that left the submission queue empty.
    submit_epoch: u64,
    /// Completions taken out of the completion queue while an entry waited for room (the
    /// kernel refused submissions with `EBUSY` until its completion queue drained), or posted
    /// by the ring itself for an entry the kernel would not take. Handed out first by
    /// [`Ring::completions_into`].
    backlog: Vec<Completion>,
    /// `user_data` of the eventfd read in flight: its 8-byte target is written when it
    /// completes, so a second read is not queued over it.
    eventfd_read: Option<u64>,
    /// The ring has [`SHED_SLOTS`] registered (sparse) fixed-file slots for
    /// [`Ring::shed_accept`].
    shed_slots: bool,
    /// Copies of mirrored bytes on their way to shadow connections.
    copies: CopyPool,
    /// Per connect lane: the connect timeout (copied by the kernel like the address).
    connect_timeouts: Box<[types::Timespec]>,
    tick: Box<types::Timespec>,
    /// The fault timer's interval (see [`Ring::fault_tick`]).
    fault_tick: Box<types::Timespec>,
    eventfd_value: Box<u64>,
    /// Operations submitted whose last completion has not arrived yet.
    inflight: usize,
    cq_entries: usize,
    /// The ring's registered descriptor index (`IORING_REGISTER_RING_FDS`), if registered.
    registered_ring: Option<i32>,
    /// The kernel supports a min-wait in `io_uring_enter` (`IORING_FEAT_MIN_TIMEOUT`).
    min_wait: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("inflight", &self.inflight)
            .finish()
    }
}

fn classify(e: io::Error) -> RingError {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => RingError::Refused(e),
        _ => RingError::Other(e),
    }
}

impl Ring {
    /// Probes whether this process may use io_uring at all.
    pub fn probe() -> Result<(), RingError> {
        IoUring::new(8).map(drop).map_err(classify)
    }

    /// A ring of `entries` submission slots, `small` and `large` provided-buffer pools
    /// (`large` may be `None`), `datagrams` buffers of [`DATAGRAM_BUFFER_BYTES`] for UDP (0:
    /// none) and room for `slots` concurrent connects. Must be created on the thread that
    /// uses it.
    pub fn new(
        entries: u32,
        small: BufPoolSize,
        large: Option<BufPoolSize>,
        datagrams: u16,
        slots: usize,
        copies: u16,
        setup: RingSetup,
    ) -> Result<Ring, RingError> {
        let mut builder = IoUring::builder();
        builder
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4);
        if setup.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        let ring = builder
            .build(entries)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => IoUring::builder().setup_cqsize(entries * 4).build(entries),
                _ => Err(e),
            })
            .map_err(classify)?;
        let registered_ring = if setup.register_ring_fd {
            register_ring_fd(ring.as_raw_fd())
        } else {
            None
        };
        let min_wait = ring.params().is_feature_min_timeout();
        if !ring.params().is_feature_submit_stable() {
            return Err(RingError::Other(io::Error::other(
                "the kernel's io_uring lacks IORING_FEAT_SUBMIT_STABLE (Linux 5.5 or later needed)",
            )));
        }
        // Direct-descriptor slots for shedding accepts when the process is out of
        // descriptors; without them, shedding is off (accepts are retried on the tick).
        let shed_slots = ring.submitter().register_files_sparse(SHED_SLOTS).is_ok();
        let small_size = small.size_bytes;
        let mut small = BufPool::new(small.count, small.size_bytes, KERNEL_WINDOW, SMALL_GROUP)
            .map_err(RingError::Other)?;
        small.register(&ring).map_err(RingError::Other)?;
        let large = match large {
            Some(l) => {
                let mut pool =
                    BufPool::new(l.count, l.size_bytes, LARGE_KERNEL_WINDOW, LARGE_GROUP)
                        .map_err(RingError::Other)?;
                pool.register(&ring).map_err(RingError::Other)?;
                pool
            }
            None => BufPool::leaked(),
        };
        let datagram = if datagrams > 0 {
            let mut pool = BufPool::new(
                datagrams,
                DATAGRAM_BUFFER_BYTES,
                DATAGRAM_KERNEL_WINDOW,
                DATAGRAM_GROUP,
            )
            .map_err(RingError::Other)?;
            pool.register(&ring).map_err(RingError::Other)?;
            pool
        } else {
            BufPool::leaked()
        };
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) header.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = DATAGRAM_NAME_BYTES;
        Ok(Ring {
            ring,
            datagram_dests: (0..datagrams).map(|_| unspecified.clone()).collect(),
            datagram_msghdr: msghdr,
            bufs: [small, large, datagram],
            // Each connection may connect twice at once: its upstream and its shadow.
            connect_addrs: (0..slots * 2).map(|_| None).collect(),
            connect_timeouts: (0..slots * 2).map(|_| types::Timespec::new()).collect(),
            connect_epochs: vec![0; slots * 2].into_boxed_slice(),
            submit_epoch: 1,
            backlog: Vec::with_capacity(entries as usize * 4),
            eventfd_read: None,
            shed_slots,
            copies: CopyPool::new(copies, small_size),
            tick: Box::new(types::Timespec::new()),
            fault_tick: Box::new(types::Timespec::new()),
            eventfd_value: Box::new(0),
            inflight: 0,
            cq_entries: entries as usize * 4,
            registered_ring,
            min_wait,
        })
    }

    /// Whether each `io_uring_enter` names the ring by its registered index.
    pub fn ring_fd_registered(&self) -> bool {
        self.registered_ring.is_some()
    }

    /// Submits what is queued and waits as `spec` says; see [`Waited`]. With a backlog
    /// (completions already taken out), only submits.
    pub fn wait(&mut self, spec: WaitSpec) -> io::Result<Waited> {
        if !self.backlog.is_empty() {
            self.enter(0, false, None)?;
            return Ok(Waited::Ready);
        }
        if spec.busy_poll_us > 0 {
            // Submit, and run the completion work already pending, without sleeping.
            self.enter(0, true, None)?;
            if !self.ring.completion().is_empty() {
                return Ok(Waited::Ready);
            }
            if self.busy_poll(Duration::from_micros(u64::from(spec.busy_poll_us))) {
                self.enter(0, true, None)?;
                return Ok(Waited::Polled);
            }
            self.sleep(spec)?;
            return Ok(Waited::Missed);
        }
        self.sleep(spec)?;
        Ok(Waited::Slept)
    }

    /// Sleeps in the kernel until `spec`'s batch (or min-wait) is satisfied.
    fn sleep(&mut self, spec: WaitSpec) -> io::Result<()> {
        if spec.batch > 1 && spec.min_wait_us > 0 && self.min_wait {
            let arg = GeteventsArg {
                min_wait_usec: spec.min_wait_us,
                ..GeteventsArg::default()
            };
            self.enter(spec.batch, true, Some(&arg))?;
        } else {
            self.enter(1, true, None)?;
        }
        Ok(())
    }

    /// Watches the rings' shared memory (no system call) until a completion is posted or
    /// completion work is pending (`IORING_SQ_TASKRUN`), for at most `budget`.
    fn busy_poll(&mut self, budget: Duration) -> bool {
        const CHECKS_PER_CLOCK_READ: u32 = 64;
        let start = Instant::now();
        loop {
            for _ in 0..CHECKS_PER_CLOCK_READ {
                if self.ring.submission().taskrun() || !self.ring.completion().is_empty() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= budget {
                return false;
            }
        }
    }

    /// [`Ring::enter_raw`], where interruptions, a full completion queue and an expired
    /// wait are not errors: the loop comes back.
    fn enter(
        &mut self,
        want: u32,
        getevents: bool,
        arg: Option<&GeteventsArg>,
    ) -> io::Result<usize> {
        match self.enter_raw(want, getevents, arg) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::ETIME)
                ) =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    /// One `io_uring_enter`: submits every queued entry and, with `getevents` (or when the
    /// kernel flags pending work), runs completion work and waits for `want` completions.
    fn enter_raw(
        &mut self,
        want: u32,
        getevents: bool,
        arg: Option<&GeteventsArg>,
    ) -> io::Result<usize> {
        let (to_submit, pending) = {
            let sq = self.ring.submission();
            (sq.len() as u32, sq.taskrun() || sq.cq_overflow())
        };
        let mut flags = 0;
        if getevents || want > 0 || pending {
            flags |= ENTER_GETEVENTS;
        }
        let fd = match self.registered_ring {
            Some(index) => {
                flags |= ENTER_REGISTERED_RING;
                index
            }
            None => self.ring.as_raw_fd(),
        };
        let (arg_ptr, arg_size) = match arg {
            Some(a) => {
                flags |= ENTER_EXT_ARG;
                (
                    a as *const GeteventsArg,
                    std::mem::size_of::<GeteventsArg>(),
                )
            }
            None => (std::ptr::null(), 0),
        };
        // SAFETY: io_uring_enter reads the submission queue (entries pushed through the
        // crate, whose memory rules `push` enforces) and, with EXT_ARG, `arg` for the
        // duration of the call only; `fd` is this ring's descriptor or its registered index.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit,
                want,
                flags,
                arg_ptr,
                arg_size,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.note_submitted();
        Ok(rc as usize)
    }

    /// Pushes one entry, submitting first if the queue is full. Never waits without bound:
    /// when the kernel cannot take the entry at all, the entry "completes" at once with the
    /// kernel's error (see [`Ring::reserve`]).
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until the operation completes (or, for data
    /// the kernel copies when it consumes the entry, until the next submission).
    unsafe fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: forwarded from the caller.
        unsafe { self.push_chain(&[entry]) }
    }

    /// Pushes `entries` next to each other in the submission queue (a linked chain must not
    /// be split across submissions), or, when no room can be made, posts a failed completion
    /// for each instead.
    ///
    /// # Safety
    /// As for [`Ring::push`], for every entry.
    unsafe fn push_chain(&mut self, entries: &[squeue::Entry]) {
        match self.reserve(entries.len()) {
            Ok(()) => {
                for entry in entries {
                    // SAFETY: the caller guarantees the entry's memory outlives the
                    // operation; `reserve` made room for every entry of the chain.
                    let pushed = unsafe { self.ring.submission().push(entry) };
                    assert!(pushed.is_ok(), "submission queue room was reserved");
                    self.inflight += 1;
                }
            }
            Err(errno) => {
                for entry in entries {
                    // Counted in flight like a submitted entry: its completion is taken out
                    // of the backlog like any other.
                    self.inflight += 1;
                    self.backlog.push(Completion {
                        user_data: entry.get_user_data(),
                        result: -errno,
                        flags: 0,
                    });
                }
            }
        }
    }

    /// Makes room for `n` entries in the submission queue: submits what is queued, and while
    /// the kernel answers `EBUSY` (its completion queue is full and completions wait in its
    /// overflow list) moves completions into the backlog so that it can go on. Bounded: a
    /// kernel that refuses entries `RESERVE_TRIES` times in a row (`EAGAIN`: no memory for a
    /// request), or fails with any other error, makes it give up with that errno.
    fn reserve(&mut self, n: usize) -> Result<(), i32> {
        const RESERVE_TRIES: u32 = 64;
        for _ in 0..RESERVE_TRIES {
            let room = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if room >= n {
                return Ok(());
            }
            match self.enter_raw(0, false, None) {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EBUSY) => self.move_completions_to_backlog(),
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => self.move_completions_to_backlog(),
                    other => {
                        tracing::error!(error = %e, "io_uring submit failed");
                        return Err(other.unwrap_or(libc::EIO));
                    }
                },
            }
        }
        tracing::error!(
            n,
            "io_uring submission queue stayed full; failing the entries"
        );
        Err(libc::EBUSY)
    }

    /// After a submission: when it left the queue empty, every entry queued so far has been
    /// consumed, and with it every copy the kernel makes at submission.
    fn note_submitted(&mut self) {
        if self.ring.submission().is_empty() {
            self.submit_epoch += 1;
        }
    }

    /// Takes every completion out of the completion queue into the backlog (the order is
    /// kept: [`Ring::completions_into`] hands out the backlog first).
    fn move_completions_to_backlog(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let c = Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            };
            self.backlog.push(c);
        }
    }

    /// Multishot accept on a listening socket. `flags`: more flags for the accepted sockets
    /// (`SOCK_NONBLOCK` for the splice relay; see [`Ring::splice_when_ready`]).
    pub fn accept_multi(&mut self, fd: RawFd, flags: i32, user_data: u64) {
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC | flags)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// One accept on a listening socket (`flags` as for [`Ring::accept_multi`]).
    pub fn accept(&mut self, fd: RawFd, flags: i32, user_data: u64) {
        let e = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
            .flags(libc::SOCK_CLOEXEC | flags)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers (no peer address is asked for).
        unsafe { self.push(e) }
    }

    /// Sheds one connection waiting on listening socket `fd` without using a descriptor of
    /// the process: an accept into direct-descriptor slot `slot % SHED_SLOTS` (io_uring's own
    /// file table), linked to the close of that slot. For when accepts fail with `EMFILE` or
    /// `ENFILE`: the connection at the head of the queue is closed at once instead of waiting
    /// there. Two completions: the accept's (`user_data`) and the close's (`close_user_data`).
    /// False (nothing queued) when the ring has no such slots.
    pub fn shed_accept(
        &mut self,
        fd: RawFd,
        slot: u32,
        user_data: u64,
        close_user_data: u64,
    ) -> bool {
        if !self.shed_slots {
            return false;
        }
        let index = slot % SHED_SLOTS;
        let Ok(dest) = types::DestinationSlot::try_from_slot_target(index) else {
            return false;
        };
        let accept = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
            .file_index(Some(dest))
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data);
        let close = opcode::Close::new(types::Fixed(index))
            .build()
            .user_data(close_user_data);
        // SAFETY: no pointers (no peer address is asked for). Two sheds sharing a slot at once
        // only replace each other's socket in it: every socket they accept is still closed.
        unsafe { self.push_chain(&[accept, close]) };
        true
    }

    /// Receive at most `max_len` bytes into a provided buffer of pool `class`, chosen by the
    /// kernel (at most the buffer's size).
    pub fn recv(&mut self, fd: RawFd, class: BufClass, max_len: u32, user_data: u64) {
        let pool = &self.bufs[class as usize];
        let len = max_len.clamp(1, pool.size);
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len)
            .buf_group(pool.group)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        // SAFETY: the buffer comes from the registered pool, owned by self.
        unsafe { self.push(e) }
    }

    /// Multishot receive of datagrams on an unconnected UDP socket (a UDP listener): each
    /// completion is one datagram in a datagram buffer, with its source address (read it
    /// with [`Ring::datagram`]). Ends with `-ENOBUFS` when the pool runs dry.
    pub fn recvmsg_multi(&mut self, fd: RawFd, user_data: u64) {
        let msghdr: *const libc::msghdr = &*self.datagram_msghdr;
        let e = opcode::RecvMsgMulti::new(
            types::Fd(fd),
            msghdr,
            self.bufs[BufClass::Datagram as usize].group,
        )
        .build()
        .user_data(user_data);
        // SAFETY: the msghdr is boxed inside self, never changes and lives until the ring is
        // torn down (leaked if teardown times out); the kernel reads it when it prepares or
        // first issues the receive, and reads nothing through its null name/iov/control
        // pointers (the buffers come from the registered pool, owned by self).
        unsafe { self.push(e) }
    }

    /// Multishot receive on a connected socket into buffers of pool `class`; on a UDP
    /// socket each completion is one whole datagram.
    pub fn recv_multi(&mut self, fd: RawFd, class: BufClass, user_data: u64) {
        let e = opcode::RecvMulti::new(types::Fd(fd), self.bufs[class as usize].group)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers; the buffers come from the registered pool, owned by self.
        unsafe { self.push(e) }
    }

    /// The datagram a [`Ring::recvmsg_multi`] completion put in buffer `id` (`len`: the
    /// completion's result): its source, and where its payload lies in the buffer. `None`
    /// when the buffer does not hold a well-formed record or the source is not IPv4/IPv6.
    pub fn datagram(&self, id: RingBuf, len: u32) -> Option<Datagram> {
        let id = id.0;
        if id & DATAGRAM_BIT == 0 {
            return None;
        }
        let msghdr: &libc::msghdr = &self.datagram_msghdr;
        let pool = &self.bufs[BufClass::Datagram as usize];
        let bid = id & !DATAGRAM_BIT;
        assert_eq!(
            pool.state[usize::from(bid)],
            BUF_WORKER,
            "datagram {id} not held"
        );
        let len = len.min(pool.size) as usize;
        // SAFETY: bid < count, so the buffer lies inside the pool; the worker holds it (state
        // checked above), so the kernel does not write it while this slice lives; `len` is
        // clamped to the buffer's size.
        let buf = unsafe {
            std::slice::from_raw_parts(pool.data.add(usize::from(bid) * pool.size as usize), len)
        };
        let out = types::RecvMsgOut::parse(buf, msghdr).ok()?;
        let source = sockaddr_from_bytes(out.name_data())?;
        let payload = out.payload_data();
        let offset = payload.as_ptr() as usize - buf.as_ptr() as usize;
        Some(Datagram {
            source,
            offset: offset as u32,
            len: payload.len() as u32,
            truncated: out.is_payload_truncated(),
        })
    }

    /// Sends `len` bytes at `offset` of buffer `id` as one datagram to `dest` (on an
    /// unconnected UDP socket). The buffer is in a send until [`Ring::send_done`].
    pub fn send_to(
        &mut self,
        fd: RawFd,
        id: RingBuf,
        offset: u32,
        len: u32,
        dest: SocketAddr,
        user_data: u64,
    ) {
        assert!(
            id.0 & DATAGRAM_BIT != 0,
            "send_to from a non-datagram buffer"
        );
        let ptr = self.start_send(id, offset, len);
        let bid = usize::from(id.0 & !DATAGRAM_BIT);
        self.datagram_dests[bid] = SockAddr::from(dest);
        let sa = &self.datagram_dests[bid];
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .dest_addr(sa.as_ptr() as *const libc::sockaddr)
            .dest_addr_len(sa.len())
            .build()
            .user_data(user_data);
        // SAFETY: the payload is in a buffer in state SENDING (not recycled before
        // `send_done`), and the address in per-buffer storage owned by self that is rewritten
        // only by the next send from the same buffer, which cannot start before this one ends.
        unsafe { self.push(e) }
    }

    /// The pool and index a worker-wide buffer id names.
    fn pool_of(&mut self, id: RingBuf) -> (&mut BufPool, u16) {
        let id = id.0;
        if id & LARGE_BIT != 0 {
            (&mut self.bufs[BufClass::Large as usize], id & !LARGE_BIT)
        } else if id & DATAGRAM_BIT != 0 {
            (
                &mut self.bufs[BufClass::Datagram as usize],
                id & !DATAGRAM_BIT,
            )
        } else {
            (&mut self.bufs[BufClass::Small as usize], id)
        }
    }

    /// Marks buffer `bid` of pool `class`, just returned by a receive, as held by the
    /// worker; returns its worker-wide id (what `send` and `recycle` take).
    pub fn buffer_received(&mut self, class: BufClass, bid: u16) -> RingBuf {
        let pool = &mut self.bufs[class as usize];
        let s = &mut pool.state[usize::from(bid)];
        assert_eq!(*s, BUF_KERNEL, "buffer {bid} received twice");
        *s = BUF_WORKER;
        pool.in_kernel -= 1;
        // Keep the window full from the spares (most recently used first).
        if let Some(spare) = pool.spare.pop() {
            pool.add(spare);
            pool.publish();
        }
        RingBuf(match class {
            BufClass::Small => bid,
            BufClass::Large => bid | LARGE_BIT,
            BufClass::Datagram => bid | DATAGRAM_BIT,
        })
    }

    /// The buffer whose id is `raw` ([`RingBuf::raw`]), when it is in a send (the buffer a
    /// send's completion names); `None` for a number that names no buffer in a send.
    pub fn buffer_in_send(&mut self, raw: u16) -> Option<RingBuf> {
        let id = RingBuf(raw);
        let (pool, bid) = self.pool_of(id);
        (pool.state.get(usize::from(bid)) == Some(&BUF_SENDING)).then_some(id)
    }

    /// Size of the buffers of pool `class` (0 for a disabled pool).
    pub fn buffer_size(&self, class: BufClass) -> u32 {
        let pool = &self.bufs[class as usize];
        if pool.window == 0 {
            0
        } else {
            pool.size
        }
    }

    /// Sends `len` bytes at `offset` of buffer `id`.
    pub fn send(&mut self, fd: RawFd, id: RingBuf, offset: u32, len: u32, user_data: u64) {
        let ptr = self.start_send(id, offset, len);
        // SAFETY: the buffer is in state SENDING, so it cannot be recycled (and rewritten by
        // the kernel) until `send_done`; the pool outlives every operation.
        unsafe { self.push_send(fd, ptr, len, user_data) }
    }

    /// Moves buffer `id` into a send of `len` bytes at `offset`; returns where they start.
    fn start_send(&mut self, id: RingBuf, offset: u32, len: u32) -> *const u8 {
        let (pool, bid) = self.pool_of(id);
        let state = &mut pool.state[usize::from(bid)];
        assert_eq!(
            *state, BUF_WORKER,
            "send from buffer {id} not held by the worker"
        );
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= pool.size),
            "send outside buffer"
        );
        *state = BUF_SENDING;
        // SAFETY: bid < count and offset + len <= size, so the range is inside the pool.
        unsafe {
            pool.data
                .add(usize::from(bid) * pool.size as usize + offset as usize)
        }
    }

    /// Queues a send of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The `len` bytes at `ptr` must stay valid and unchanged until the send completes.
    unsafe fn push_send(&mut self, fd: RawFd, ptr: *const u8, len: u32, user_data: u64) {
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        // SAFETY: the caller keeps the bytes valid until the completion.
        unsafe { self.push(e) }
    }

    /// Receives at most `len` bytes into buffer `id` (which the worker holds) at `offset`:
    /// the bytes already there before `offset` stay (TLS puts a record's first part there,
    /// so the rest lands after it). The buffer is the kernel's until [`Ring::recv_done`].
    pub fn recv_into(&mut self, fd: RawFd, id: RingBuf, offset: u32, len: u32, user_data: u64) {
        let (pool, bid) = self.pool_of(id);
        let state = &mut pool.state[usize::from(bid)];
        assert_eq!(
            *state, BUF_WORKER,
            "receive into buffer {id} not held by the worker"
        );
        assert!(
            len > 0 && offset.checked_add(len).is_some_and(|end| end <= pool.size),
            "receive outside buffer"
        );
        *state = BUF_RECEIVING;
        // SAFETY: bid < count and offset + len <= size, so the range is inside the pool.
        let ptr = unsafe {
            pool.data
                .add(usize::from(bid) * pool.size as usize + offset as usize)
        };
        let e = opcode::Recv::new(types::Fd(fd), ptr, len)
            .build()
            .user_data(user_data);
        // SAFETY: the buffer is in state RECEIVING until `recv_done`: the worker cannot
        // touch it (`buffer_mut`, `recycle`, `send` all need BUF_WORKER), the kernel's ring
        // does not hold it, and the pool outlives every operation.
        unsafe { self.push(e) }
    }

    /// A receive into buffer `id` ([`Ring::recv_into`]) completed: the worker holds it again.
    pub fn recv_done(&mut self, id: RingBuf) {
        let (pool, bid) = self.pool_of(id);
        let s = &mut pool.state[usize::from(bid)];
        assert_eq!(
            *s, BUF_RECEIVING,
            "recv_done on buffer {id} not in a receive"
        );
        *s = BUF_WORKER;
    }

    /// A send from buffer `id` completed.
    pub fn send_done(&mut self, id: RingBuf) {
        let (pool, bid) = self.pool_of(id);
        let s = &mut pool.state[usize::from(bid)];
        assert_eq!(*s, BUF_SENDING, "send_done on buffer {id} not in a send");
        *s = BUF_WORKER;
    }

    /// The bytes of buffer `id`, which the worker holds (received, not in a send): TLS
    /// decrypts and encrypts in place there. Panics for a buffer in any other state.
    pub fn buffer_mut(&mut self, id: RingBuf) -> &mut [u8] {
        let (pool, bid) = self.pool_of(id);
        assert_eq!(
            pool.state[usize::from(bid)],
            BUF_WORKER,
            "buffer {id} written while not held by the worker"
        );
        let size = pool.size as usize;
        // SAFETY: bid < count, so the `size` bytes at this offset are inside the pool's
        // mapping, which lives as long as `self`. The buffer is held by the worker: the
        // kernel does not write it (it is not in the ring) or read it (it is not in a send)
        // until the worker hands it over again, which needs `&mut self`, so no other
        // reference to these bytes exists while the returned one lives.
        unsafe { std::slice::from_raw_parts_mut(pool.data.add(usize::from(bid) * size), size) }
    }

    /// Copies `len` bytes at `at` of buffer `from` to the front of buffer `to`; both are
    /// held by the worker and are not the same buffer.
    pub fn copy_between(&mut self, from: RingBuf, at: usize, len: usize, to: RingBuf) {
        assert_ne!(from, to, "a copy between two buffers");
        let src = self.buffer_mut(from)[at..at + len].as_ptr();
        let dst = self.buffer_mut(to);
        assert!(len <= dst.len(), "copy larger than its buffer");
        // SAFETY: `src` points at `len` bytes inside buffer `from` (bounds checked by the
        // slice above) and `dst` is buffer `to`, at least `len` long; both are held by the
        // worker (`buffer_mut` asserts it), so nothing else writes them, and two distinct
        // buffers of the pools never overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), len) }
    }

    /// Takes a buffer of pool `class` that the kernel does not hold (a spare), for the
    /// worker to write into; `None` when every buffer is in the kernel's ring or held.
    pub fn take_spare(&mut self, class: BufClass) -> Option<RingBuf> {
        let pool = &mut self.bufs[class as usize];
        let bid = pool.spare.pop()?;
        let s = &mut pool.state[usize::from(bid)];
        assert_eq!(*s, BUF_SPARE, "spare buffer {bid} in another state");
        *s = BUF_WORKER;
        Some(RingBuf(match class {
            BufClass::Small => bid,
            BufClass::Large => bid | LARGE_BIT,
            BufClass::Datagram => bid | DATAGRAM_BIT,
        }))
    }

    /// A no-op that completes with 0: a completion for `user_data` without I/O (a TLS
    /// direction whose next bytes are already decrypted answers its receive with one).
    pub fn nop(&mut self, user_data: u64) {
        let e = opcode::Nop::new().build().user_data(user_data);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// Provided buffers of pool `class` the kernel can pick from now.
    pub fn buffers_in_kernel(&self, class: BufClass) -> u32 {
        self.bufs[class as usize].in_kernel
    }

    /// Hands buffer `id` back to the kernel.
    pub fn recycle(&mut self, id: RingBuf) {
        let (pool, bid) = self.pool_of(id);
        assert_eq!(
            pool.state[usize::from(bid)],
            BUF_WORKER,
            "recycle of buffer {id} not held"
        );
        if pool.in_kernel < pool.window {
            pool.add(bid);
            pool.publish();
        } else {
            pool.state[usize::from(bid)] = BUF_SPARE;
            pool.spare.push(bid);
        }
    }

    /// `splice(fd_in, NULL, fd_out, NULL, len, 0)`: moves up to `len` bytes between a socket
    /// and a pipe without copying them through user space. io_uring runs it on an io-wq
    /// worker thread (splice is always punted). The relay's sockets and pipes are
    /// non-blocking, so it never sleeps there: it completes with `-EAGAIN` when the source
    /// has no data or the sink no room (a full pipe counts), and the caller waits for
    /// readiness with [`Ring::splice_when_ready`].
    pub fn splice(&mut self, fd_in: RawFd, fd_out: RawFd, len: u32, user_data: u64) {
        let e = opcode::Splice::new(types::Fd(fd_in), -1, types::Fd(fd_out), -1, len)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers: the kernel moves bytes between two descriptors.
        unsafe { self.push(e) }
    }

    /// A one-shot poll of the splice's socket linked to a [`Ring::splice`] that the kernel
    /// starts only once that socket is ready (`wait`): no io-wq thread waits for a socket
    /// (one waiting in `splice` would sleep holding the pipe's lock, and every other splice
    /// of that pipe behind it). Two completions: the poll's (`poll_user_data`: the ready
    /// mask, or `-ECANCELED` when a cancel by the socket's descriptor removed it) and the
    /// splice's (`user_data`; `-ECANCELED` when the poll failed). `POLLERR`/`POLLHUP` end the
    /// poll whatever it waits for, so the splice then reports the socket's error or end of
    /// stream.
    pub fn splice_when_ready(
        &mut self,
        wait: Ready,
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
        poll_user_data: u64,
        user_data: u64,
    ) {
        let (socket, events) = match wait {
            Ready::SourceReadable => (fd_in, libc::POLLIN),
            Ready::SinkWritable => (fd_out, libc::POLLOUT),
        };
        let poll = opcode::PollAdd::new(types::Fd(socket), events as u16 as u32)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(poll_user_data);
        let splice = opcode::Splice::new(types::Fd(fd_in), -1, types::Fd(fd_out), -1, len)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers: a poll of a descriptor, then a splice between two.
        unsafe { self.push_chain(&[poll, splice]) }
    }

    /// `shutdown(fd, how)`.
    pub fn shutdown(&mut self, fd: RawFd, how: i32, user_data: u64) {
        let e = opcode::Shutdown::new(types::Fd(fd), how)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// `close(fd)`.
    pub fn close(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// A new TCP socket for `addr`'s family. `flags`: more type flags (`SOCK_NONBLOCK` for
    /// the splice relay).
    pub fn socket(&mut self, addr: &SocketAddr, flags: i32, user_data: u64) {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let e = opcode::Socket::new(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// Connects `fd` to `addr`, giving up after `timeout`; two completions: the connect's
    /// (`-ECANCELED` on timeout) and the timeout's (`-ETIME` when it fired).
    pub fn connect(
        &mut self,
        fd: RawFd,
        slot: usize,
        addr: SocketAddr,
        timeout: Duration,
        user_data: u64,
        timeout_user_data: u64,
    ) {
        if self.connect_epochs[slot] == self.submit_epoch {
            // This lane's storage is still named by queued entries: hand them to the kernel
            // (which copies address and timeout) before it is rewritten.
            self.submit();
        }
        self.connect_epochs[slot] = self.submit_epoch;
        let sa = self.connect_addrs[slot].insert(SockAddr::from(addr));
        let (ptr, len) = (sa.as_ptr() as *const libc::sockaddr, sa.len());
        self.connect_timeouts[slot] = types::Timespec::from(timeout);
        let ts: *const types::Timespec = &self.connect_timeouts[slot];
        let connect = opcode::Connect::new(types::Fd(fd), ptr, len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data);
        let link = opcode::LinkTimeout::new(ts)
            .build()
            .user_data(timeout_user_data);
        // SAFETY: the address and timespec live in per-lane storage owned by self, which is
        // rewritten only after a submission consumed these entries (the check above), and the
        // kernel copies both when it consumes them (IORING_FEAT_SUBMIT_STABLE, checked in
        // `new`). The two entries go in together so the link is never split.
        unsafe { self.push_chain(&[connect, link]) }
    }

    /// `TCP_NODELAY = 1`.
    pub fn set_nodelay(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::SetSockOpt::new(
            types::Fd(fd),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            &ONE as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .user_data(user_data);
        // SAFETY: the option value is a static.
        unsafe { self.push(e) }
    }

    /// Tears a socket down in one hard-linked chain: cancel every operation on it, optionally
    /// set `SO_LINGER {1,0}` (so the close sends a reset), then close it. Returns how many
    /// operations (completions) the chain holds, all with `user_data`.
    pub fn teardown(&mut self, fd: RawFd, reset: bool, user_data: u64) -> u32 {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(user_data);
        let linger = opcode::SetSockOpt::new(
            types::Fd(fd),
            libc::SOL_SOCKET as u32,
            libc::SO_LINGER as u32,
            &LINGER_ZERO as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
        .build()
        .flags(squeue::Flags::IO_HARDLINK)
        .user_data(user_data);
        let close = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data);
        // SAFETY: the only pointer is the static linger value. The chain goes in whole.
        unsafe {
            if reset {
                self.push_chain(&[cancel, linger, close]);
            } else {
                self.push_chain(&[cancel, close]);
            }
        }
        if reset {
            3
        } else {
            2
        }
    }

    /// Cancels the operation with `target` user data.
    pub fn cancel(&mut self, target: u64, user_data: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// Reads the 8-byte counter of an eventfd. At most one such read is in flight: while
    /// one is, this does nothing (its completion, through [`Ring::completions_into`], frees
    /// the target again), so the read's target is never written by two operations.
    pub fn read_eventfd(&mut self, fd: RawFd, user_data: u64) {
        if self.eventfd_read.is_some() {
            return;
        }
        let ptr = &mut *self.eventfd_value as *mut u64 as *mut u8;
        let e = opcode::Read::new(types::Fd(fd), ptr, 8)
            .build()
            .user_data(user_data);
        self.eventfd_read = Some(user_data);
        // SAFETY: the 8-byte target is boxed inside self and outlives the ring's operations;
        // `eventfd_read` keeps a second read off it until this one's completion is taken.
        unsafe { self.push(e) }
    }

    /// A repeating timer every `interval`.
    pub fn tick(&mut self, interval: Duration, user_data: u64) {
        *self.tick = types::Timespec::from(interval);
        let ts: *const types::Timespec = &*self.tick;
        self.repeating_timeout(ts, user_data);
    }

    /// A second repeating timer, every `interval`, with its own timespec (so it may be armed
    /// in the same batch as [`Ring::tick`]): the fault filter's fine-grained timer.
    pub fn fault_tick(&mut self, interval: Duration, user_data: u64) {
        *self.fault_tick = types::Timespec::from(interval);
        let ts: *const types::Timespec = &*self.fault_tick;
        self.repeating_timeout(ts, user_data);
    }

    /// A multishot timeout on the timespec at `ts`, one of the boxed timespecs of `self`.
    fn repeating_timeout(&mut self, ts: *const types::Timespec, user_data: u64) {
        let e = opcode::Timeout::new(ts)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(user_data);
        // SAFETY: `ts` points into a Box owned by self (tick or fault_tick), which outlives
        // the submission; the kernel copies the timespec when it prepares the entry (at
        // submission, on this thread: no SQPOLL), so a later re-arm that rewrites the same
        // Box (a new fault timer while a cancelled one is still completing) cannot affect an
        // entry already submitted, and both values are the same constant anyway.
        unsafe { self.push(e) }
    }

    /// A connect of connection `slot`'s shadow (mirroring): like [`Ring::connect`], with
    /// storage of its own so that it may run alongside the slot's upstream connect.
    pub fn connect_shadow(
        &mut self,
        fd: RawFd,
        slot: usize,
        addr: SocketAddr,
        timeout: Duration,
        user_data: u64,
        timeout_user_data: u64,
    ) {
        let lane = self.connect_addrs.len() / 2 + slot;
        self.connect(fd, lane, addr, timeout, user_data, timeout_user_data);
    }

    /// Takes a free copy chunk (each as large as a small buffer), or `None` when all are
    /// in use.
    pub fn copy_alloc(&mut self) -> Option<u16> {
        let id = self.copies.free.pop()?;
        self.copies.state[usize::from(id)] = COPY_HELD;
        Some(id)
    }

    /// Copies the first `len` bytes of held buffer `buf` into copy chunk `copy`; returns
    /// how many fitted (the chunk is as large as a small buffer).
    pub fn copy_from_buffer(&mut self, copy: u16, buf: RingBuf, len: u32) -> u32 {
        let chunk = self.copies.chunk;
        let (pool, bid) = self.pool_of(buf);
        let state = pool.state[usize::from(bid)];
        assert!(
            state == BUF_WORKER || state == BUF_SENDING,
            "copy from buffer {buf} not held by the worker"
        );
        let n = len.min(pool.size).min(chunk);
        // SAFETY: bid < count and n <= size: the source range is inside the pool, and the
        // buffer is held by the worker (the kernel does not write it while it is not in the
        // ring).
        let src = unsafe { pool.data.add(usize::from(bid) * pool.size as usize) } as *const u8;
        assert_eq!(
            self.copies.state[usize::from(copy)],
            COPY_HELD,
            "copy into a chunk not held"
        );
        let dst = self.copies.at(copy, 0);
        // SAFETY: `src` is valid for `n` bytes (above); `dst` is chunk `copy`, n <= chunk
        // bytes long, HELD (no send reads it), in a separate allocation from `src`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n as usize) };
        n
    }

    /// Sends `len` bytes at `offset` of copy chunk `copy` to `fd`.
    pub fn send_copy(&mut self, fd: RawFd, copy: u16, offset: u32, len: u32, user_data: u64) {
        let chunk = self.copies.chunk;
        let state = &mut self.copies.state[usize::from(copy)];
        assert_eq!(*state, COPY_HELD, "send from copy chunk {copy} not held");
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= chunk),
            "send outside copy chunk"
        );
        *state = COPY_SENDING;
        let ptr = self.copies.at(copy, offset) as *const u8;
        // SAFETY: the chunk is SENDING, so it is neither freed nor rewritten until
        // `copy_send_done`; the pool lives in self and outlives every operation (Drop waits
        // for the last completion, or leaks the pool).
        unsafe { self.push_send(fd, ptr, len, user_data) }
    }

    /// The send from copy chunk `copy` completed.
    pub fn copy_send_done(&mut self, copy: u16) {
        let state = &mut self.copies.state[usize::from(copy)];
        assert_eq!(*state, COPY_SENDING, "copy chunk {copy} not in a send");
        *state = COPY_HELD;
    }

    /// Gives copy chunk `copy` back.
    pub fn copy_free(&mut self, copy: u16) {
        let state = &mut self.copies.state[usize::from(copy)];
        assert_eq!(*state, COPY_HELD, "free of copy chunk {copy} not held");
        *state = COPY_FREE;
        self.copies.free.push(copy);
    }

    /// Hands every queued entry to the kernel now, without waiting: after this, closing a
    /// descriptor that queued entries name cannot affect them (each took its file at
    /// submission).
    pub fn submit(&mut self) {
        // `reserve` of the whole queue submits until the kernel took every entry (or gave
        // up, logging why).
        let capacity = self.ring.submission().capacity();
        let _ = self.reserve(capacity);
    }

    /// Moves every available completion into `out` (cleared first), the backlog first; no
    /// allocation once its capacity covers a full completion queue and the backlog.
    pub fn completions_into(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.append(&mut self.backlog);
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        drop(cq);
        for c in out.iter() {
            if !c.more() {
                self.inflight = self.inflight.saturating_sub(1);
                if self.eventfd_read == Some(c.user_data) {
                    self.eventfd_read = None;
                }
            }
        }
    }

    /// Capacity a completion batch needs: a full completion queue and a backlog as large.
    pub fn completion_capacity(&self) -> usize {
        self.cq_entries * 2
    }
}

const COPY_FREE: u8 = 0;
const COPY_HELD: u8 = 1;
const COPY_SENDING: u8 = 2;

/// Fixed chunks for copies of mirrored bytes: zero pages until first written. The memory is
/// held as a raw pointer (like [`BufPool`]'s), never as a Rust reference, because the kernel
/// reads chunks being sent while the worker writes others.
#[derive(Debug)]
struct CopyPool {
    data: *mut u8,
    len: usize,
    chunk: u32,
    state: Box<[u8]>,
    free: Vec<u16>,
}

impl CopyPool {
    fn new(count: u16, chunk: u32) -> CopyPool {
        let memory = vec![0u8; usize::from(count) * chunk as usize].into_boxed_slice();
        let len = memory.len();
        CopyPool {
            data: Box::into_raw(memory) as *mut u8,
            len,
            chunk,
            state: vec![COPY_FREE; usize::from(count)].into_boxed_slice(),
            free: (0..count).rev().collect(),
        }
    }

    /// Start of chunk `copy`, `offset` bytes in.
    fn at(&self, copy: u16, offset: u32) -> *mut u8 {
        let start = usize::from(copy) * self.chunk as usize + offset as usize;
        assert!(start <= self.len, "copy chunk {copy} out of the pool");
        // SAFETY: start <= len, so the pointer is inside the allocation (or one past it).
        unsafe { self.data.add(start) }
    }

    /// Gives the memory up without freeing it (the kernel may still read it).
    fn leak(&mut self) {
        self.data = std::ptr::null_mut();
    }
}

impl Drop for CopyPool {
    fn drop(&mut self) {
        if !self.data.is_null() {
            // SAFETY: data and len are those of the boxed slice made in `new`, freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.data, self.len)) });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Cancel everything and wait for the last completion so the kernel no longer touches
        // memory owned by self (buffers, addresses) when it is freed. The cancel is repeated
        // on every round: a timeout whose timer is firing at that instant refuses a cancel
        // (-EALREADY), and the multishot tick then re-arms itself and would never end.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.inflight > 0 && std::time::Instant::now() < deadline {
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(u64::MAX);
            // SAFETY: no pointers.
            unsafe { self.push(e) };
            let ts = types::Timespec::from(Duration::from_millis(50));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut sink = Vec::new();
            self.completions_into(&mut sink);
        }
        if self.inflight > 0 {
            // The kernel may still use the pools: leak them rather than free memory in use.
            for pool in &mut self.bufs {
                std::mem::forget(std::mem::replace(pool, BufPool::leaked()));
            }
            self.copies.leak();
            // Queued receives and sends may still point at these two as well.
            std::mem::forget(std::mem::take(&mut self.datagram_dests));
            std::mem::forget(std::mem::replace(
                &mut self.datagram_msghdr,
                // SAFETY: msghdr is plain old data; all-zero is a valid (empty) header.
                Box::new(unsafe { std::mem::zeroed() }),
            ));
            tracing::error!(
                inflight = self.inflight,
                "io_uring teardown timed out; leaking buffers"
            );
        }
    }
}

impl BufPool {
    /// An empty pool with no buffers: a disabled large pool, or the stand-in left when a
    /// real pool is leaked.
    fn leaked() -> BufPool {
        let layout = Layout::from_size_align(4096, 4096).expect("constant layout");
        // SAFETY: non-zero size.
        let ring = unsafe { alloc_zeroed(layout) } as *mut types::BufRingEntry;
        let data = map_anonymous(layout.size());
        BufPool {
            ring,
            ring_layout: layout,
            data,
            data_layout: layout,
            size: 1,
            count: 1,
            tail: 0,
            state: Box::new([]),
            in_kernel: 0,
            window: 0,
            spare: Vec::new(),
            group: u16::MAX,
        }
    }
}

/// One received datagram: where it came from and where its payload lies in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Datagram {
    pub source: SocketAddr,
    /// Payload offset in the buffer.
    pub offset: u32,
    /// Payload length.
    pub len: u32,
    /// The datagram was larger than the buffer (never, with [`DATAGRAM_BUFFER_BYTES`]).
    pub truncated: bool,
}

/// An IPv4 or IPv6 `sockaddr` as the kernel wrote it (native-endian family, network-order
/// port and address), or `None`.
fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip.into(),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// How many provided buffers of which size a pool holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufPoolSize {
    /// Number of buffers (a power of two, at most 32768).
    pub count: u16,
    /// Bytes per buffer.
    pub size_bytes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const TEST_SETUP: RingSetup = RingSetup {
        defer_taskrun: true,
        register_ring_fd: true,
    };

    fn small_ring(entries: u32) -> Ring {
        let small = BufPoolSize {
            count: 8,
            size_bytes: 4096,
        };
        Ring::new(entries, small, None, 0, 4, 1, TEST_SETUP).expect("io_uring available")
    }

    /// Every way of waiting (both task-run modes, registered ring or not; plain, busy-poll,
    /// min-wait with a batch that never fills) hands over a completion that arrives while
    /// the ring waits, and a min-wait ends with one completion instead of waiting for the
    /// batch.
    #[test]
    fn every_wait_delivers_a_completion_that_arrives_while_waiting() {
        let specs = [
            WaitSpec {
                busy_poll_us: 0,
                batch: 1,
                min_wait_us: 0,
            },
            WaitSpec {
                busy_poll_us: 200,
                batch: 1,
                min_wait_us: 0,
            },
            WaitSpec {
                busy_poll_us: 0,
                batch: 64,
                min_wait_us: 500,
            },
        ];
        for defer_taskrun in [true, false] {
            for register_ring_fd in [true, false] {
                let setup = RingSetup {
                    defer_taskrun,
                    register_ring_fd,
                };
                let small = BufPoolSize {
                    count: 8,
                    size_bytes: 4096,
                };
                let mut ring = Ring::new(16, small, None, 0, 4, 1, setup).expect("io_uring");
                assert_eq!(ring.ring_fd_registered(), register_ring_fd, "{setup:?}");
                let wake = std::sync::Arc::new(crate::sys::net::EventFd::new().expect("eventfd"));
                let mut batch = Vec::with_capacity(ring.completion_capacity());
                for spec in specs {
                    ring.read_eventfd(wake.raw(), 7);
                    let waker = wake.clone();
                    let writer = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(5));
                        waker.wake();
                    });
                    let started = Instant::now();
                    let mut got = Vec::new();
                    while got.is_empty() && started.elapsed() < Duration::from_secs(5) {
                        ring.wait(spec).expect("wait");
                        ring.completions_into(&mut batch);
                        got.extend(batch.iter().map(|c| c.user_data));
                    }
                    writer.join().expect("writer");
                    assert_eq!(got, vec![7], "{setup:?} {spec:?}");
                    assert!(
                        started.elapsed() < Duration::from_secs(1),
                        "{setup:?} {spec:?}: a batch that never fills must not hold the one \
                         completion ({:?})",
                        started.elapsed()
                    );
                }
            }
        }
    }

    /// Takes completions until `n` arrived (bounded by `deadline`).
    fn drain(ring: &mut Ring, n: usize, deadline: Duration) -> Vec<Completion> {
        let until = std::time::Instant::now() + deadline;
        let mut all = Vec::new();
        let mut batch = Vec::with_capacity(ring.completion_capacity());
        while all.len() < n && std::time::Instant::now() < until {
            wait_a_little(ring);
            ring.completions_into(&mut batch);
            all.extend_from_slice(&batch);
        }
        // Anything more that arrives shortly after is returned too.
        wait_a_little(ring);
        ring.completions_into(&mut batch);
        all.extend_from_slice(&batch);
        all
    }

    /// Submits and waits up to 50 ms for a completion (with deferred task running, the kernel
    /// posts completions only inside such a wait).
    fn wait_a_little(ring: &mut Ring) {
        let ts = types::Timespec::from(Duration::from_millis(50));
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ),
                "{e}"
            ),
        }
    }

    #[test]
    fn a_full_completion_queue_never_blocks_a_push_and_loses_nothing() {
        // 20,000 operations that complete at once, pushed into a ring whose completion
        // queue holds 16, without the caller reaping in between: every push must return
        // (the old push retried forever while the kernel answered EBUSY), and every
        // completion must come out exactly once.
        const N: u64 = 20_000;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ring = small_ring(4);
            for i in 0..N {
                ring.cancel(0xdead_beef_0000 + i, i);
            }
            ring.submit();
            let got = drain(&mut ring, N as usize, Duration::from_secs(20));
            tx.send(got).expect("test alive");
        });
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("pushes returned and completions drained in time");
        let ids: HashSet<u64> = got.iter().map(|c| c.user_data).collect();
        assert_eq!(got.len() as u64, N, "every completion once");
        assert_eq!(ids.len() as u64, N, "no duplicates");
        assert!(got
            .iter()
            .all(|c| c.result == -libc::ENOENT || c.result < 0));
    }

    /// Moves a ring to another thread, for the test below.
    struct Moved(Ring);
    // SAFETY: the ring is used by one thread at a time: created on one, then handed whole to
    // the other, which alone uses and drops it. That is exactly the misuse the kernel
    // refuses (single issuer) and the test wants.
    unsafe impl Send for Moved {}

    #[test]
    fn a_kernel_that_refuses_submissions_never_blocks_a_push() {
        // A single-issuer ring used from another thread: every submission fails (EEXIST), so
        // room in the submission queue never comes back. The old push retried forever;
        // now each entry that cannot go in completes at once with the kernel's error. (Not
        // registered: a registered ring index belongs to the thread that registered it, and
        // another thread's enters fail with EINVAL before the single-issuer check.)
        let (tx, rx) = std::sync::mpsc::channel();
        let small = BufPoolSize {
            count: 8,
            size_bytes: 4096,
        };
        let setup = RingSetup {
            register_ring_fd: false,
            ..TEST_SETUP
        };
        let ring = Ring::new(4, small, None, 0, 4, 1, setup).expect("io_uring available");
        let moved = Moved(ring);
        std::thread::spawn(move || {
            let whole = moved;
            let mut ring = whole.0;
            for i in 0..100u64 {
                ring.cancel(0xdead_0000 + i, i);
            }
            let mut batch = Vec::with_capacity(ring.completion_capacity());
            ring.completions_into(&mut batch);
            let _ = tx.send(batch);
            drop(ring);
        });
        let failed = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("every push returned");
        // Four fitted in the queue (never submitted); the other 96 failed at once.
        assert_eq!(failed.len(), 96, "{failed:?}");
        assert!(
            failed.iter().all(|c| c.result == -libc::EEXIST),
            "{failed:?}"
        );
        let ids: HashSet<u64> = failed.iter().map(|c| c.user_data).collect();
        assert_eq!(ids, (4..100).collect());
    }

    #[test]
    fn a_connect_lane_reused_before_submission_keeps_both_addresses() {
        // Two connects on one lane, the second queued before the first was submitted: each
        // must go to its own address (the lane's storage is handed to the kernel before it
        // is rewritten).
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut ring = small_ring(16);
        let s1 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let s2 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        use std::os::fd::AsRawFd;
        let t = Duration::from_secs(5);
        ring.connect(s1.as_raw_fd(), 0, a.local_addr().unwrap(), t, 1, 2);
        ring.connect(s2.as_raw_fd(), 0, b.local_addr().unwrap(), t, 3, 4);
        ring.submit();
        let got = drain(&mut ring, 4, Duration::from_secs(5));
        for ud in [1, 3] {
            let c = got
                .iter()
                .find(|c| c.user_data == ud)
                .expect("connect completed");
            assert_eq!(c.result, 0, "connect {ud}");
        }
        let peer_a = a.accept().expect("a accepted").1;
        let peer_b = b.accept().expect("b accepted").1;
        assert_eq!(peer_a, s1.local_addr().unwrap().as_socket().unwrap());
        assert_eq!(peer_b, s2.local_addr().unwrap().as_socket().unwrap());
    }

    #[test]
    fn a_number_is_a_buffer_only_while_that_buffer_is_in_a_send() {
        // What a UDP send completion carries back is a number; the ring turns it into a
        // buffer only when that buffer is in a send, never one the kernel or the worker holds.
        let mut ring = small_ring(8);
        assert_eq!(ring.buffer_in_send(0), None, "buffer 0 is the kernel's");
        assert_eq!(ring.buffer_in_send(7), None);
        assert_eq!(ring.buffer_in_send(u16::MAX), None, "no such buffer");
    }

    #[test]
    fn only_one_eventfd_read_is_in_flight() {
        let mut ring = small_ring(8);
        let efd = crate::sys::net::EventFd::new().expect("eventfd");
        ring.read_eventfd(efd.raw(), 7);
        ring.read_eventfd(efd.raw(), 8);
        ring.submit();
        efd.wake();
        let got = drain(&mut ring, 1, Duration::from_secs(5));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].user_data, 7, "the second read was not queued");
        // Its completion frees the target: the next read is queued.
        ring.read_eventfd(efd.raw(), 9);
        ring.submit();
        efd.wake();
        let got = drain(&mut ring, 1, Duration::from_secs(5));
        assert_eq!(got.first().map(|c| c.user_data), Some(9));
    }
}
