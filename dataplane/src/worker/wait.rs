//! How a worker waits for completions: the loop's levers and the placement that picks them.
//!
//! A worker either has its CPU to itself (`own`: a dedicated core, nothing else runnable
//! there) or shares it with the processes it serves (`shared`: load, backends and proxy on
//! one core). What is cheap on one is costly on the other: spinning for completions before
//! sleeping saves a sleep and a wake-up on an own core, and steals the CPU from the peers on
//! a shared one. So the levers come as a [`WaitPolicy`] per placement, and the worker picks
//! the one for the placement it detects ([`PlacementDetector`]), at start and again every
//! [`DETECT_WINDOW_MS`], unless the operator fixed it (`--placement own|shared`).
//!
//! Guarantees: a worker that judged its core shared never spins; a spin is bounded by
//! `busy_poll_us` per wait and starts only when the previous wait found work; a min-wait
//! delays a completion by at most `min_wait_us` beyond its arrival.

use std::str::FromStr;

/// Where a worker runs, as the operator states it (`--placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Detect it: shared until a busy stretch shows the worker never waiting for its CPU.
    #[default]
    Auto,
    /// The worker has its CPU to itself.
    Own,
    /// The worker shares its CPU with other busy processes.
    Shared,
}

impl Placement {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Auto => "auto",
            Placement::Own => "own",
            Placement::Shared => "shared",
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Placement, String> {
        match s {
            "auto" => Ok(Placement::Auto),
            "own" => Ok(Placement::Own),
            "shared" => Ok(Placement::Shared),
            other => Err(format!(
                "unknown placement '{other}' (expected auto, own or shared)"
            )),
        }
    }
}

/// How the kernel runs a ring's deferred completion work (`--taskrun`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskRun {
    /// `IORING_SETUP_DEFER_TASKRUN`: only when the worker enters the kernel to wait; a
    /// sleeping worker is woken once enough completions are pending.
    #[default]
    Defer,
    /// `IORING_SETUP_COOP_TASKRUN`: at the worker's next system call or wake-up, every
    /// completion waking it.
    Coop,
}

impl TaskRun {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskRun::Defer => "defer",
            TaskRun::Coop => "coop",
        }
    }
}

impl std::fmt::Display for TaskRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskRun {
    type Err = String;
    fn from_str(s: &str) -> Result<TaskRun, String> {
        match s {
            "defer" => Ok(TaskRun::Defer),
            "coop" => Ok(TaskRun::Coop),
            other => Err(format!(
                "unknown taskrun '{other}' (expected defer or coop)"
            )),
        }
    }
}

/// What a worker does when it has nothing left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Before sleeping, look for completions this long without a system call (0: never).
    pub busy_poll_us: u32,
    /// Sleep until this many completions are pending, or `min_wait_us` passed with at least
    /// one (1: wake at the first).
    pub wait_batch: u32,
    /// The most a completion waits for the batch to fill (0: no min-wait; the worker wakes
    /// at the first completion).
    pub min_wait_us: u32,
}

impl WaitPolicy {
    /// Wake at the first completion; never spin.
    pub const PLAIN: WaitPolicy = WaitPolicy {
        busy_poll_us: 0,
        wait_batch: 1,
        min_wait_us: 0,
    };
}

/// The own-core policy's busy-poll budget. On the 2-vCPU VM, rr over 1 connection with the
/// worker alone on its CPU: 22.0k req/s without, 30.9k with 20 us, 28.0k with 50 us
/// (bench/README.md, issue 17).
pub const DEFAULT_BUSY_POLL_US: u32 = 20;

/// The loop's configuration: a policy per placement and how to pick between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitConfig {
    /// Fixed, or detected by each worker.
    pub placement: Placement,
    /// Used while the worker has its core to itself.
    pub own: WaitPolicy,
    /// Used while it shares it; `busy_poll_us` is ignored (never spins).
    pub shared: WaitPolicy,
    /// How the ring runs deferred work.
    pub taskrun: TaskRun,
    /// Register the ring's descriptor (`IORING_REGISTER_RING_FDS`): each `io_uring_enter`
    /// skips the descriptor lookup.
    pub registered_ring: bool,
}

impl Default for WaitConfig {
    fn default() -> WaitConfig {
        WaitConfig {
            placement: Placement::Auto,
            own: WaitPolicy {
                busy_poll_us: DEFAULT_BUSY_POLL_US,
                ..WaitPolicy::PLAIN
            },
            shared: WaitPolicy::PLAIN,
            taskrun: TaskRun::Defer,
            registered_ring: true,
        }
    }
}

impl WaitConfig {
    /// The policy for a worker that judged its core own (`true`) or shared.
    pub fn policy(&self, own_core: bool) -> WaitPolicy {
        if own_core {
            self.own
        } else {
            WaitPolicy {
                busy_poll_us: 0,
                ..self.shared
            }
        }
    }
}

/// How often a worker re-judges its placement.
pub const DETECT_WINDOW_MS: u64 = 250;

/// Share of a window the worker must have run for the window to count, in thousandths: an
/// idle worker waits for nothing, so an idle window says nothing about the core.
pub const BUSY_PER_MILLE: u64 = 50;

/// Share of a window the worker may spend runnable but waiting for its CPU and still judge
/// the core its own, in thousandths. Measured on the 2-vCPU VM under load: alone on its
/// core 0.5-0.6%, sharing it with its load and backends 12-59%.
pub const SHARED_RUN_DELAY_PER_MILLE: u64 = 50;

/// Busy-polls a window must have run before their hit rate counts.
pub const SPIN_MIN_ATTEMPTS: u64 = 64;

/// Share of busy-polls that must find completions, in thousandths, for spinning to pay. On
/// a shared core a spinning worker keeps the very processes that would produce its
/// completions off the CPU, so its busy-polls find nothing (0 of 150,000 in 3 s measured);
/// alone on its core they find work at once under request/response load.
pub const SPIN_MIN_HIT_PER_MILLE: u64 = 250;

/// How long a worker whose busy-polls did not pay stays judged shared before it tries its
/// own-core policy again; doubled at each failure up to [`SPIN_HOLD_MAX_MS`].
pub const SPIN_HOLD_MIN_MS: u64 = 1000;
/// See [`SPIN_HOLD_MIN_MS`].
pub const SPIN_HOLD_MAX_MS: u64 = 64_000;

/// One thread's account from the scheduler (`/proc/<pid>/task/<tid>/schedstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedAccount {
    /// Time it ran.
    pub cpu_ns: u64,
    /// Time it was runnable but waited for its CPU.
    pub run_delay_ns: u64,
}

/// Judges whether a thread has its CPU to itself, over each busy window of wall-clock time:
/// from the scheduler's account, the share it spent runnable but not running, and from its
/// own busy-polls, whether they find work. Detected placements start shared (never spin
/// without evidence) and turn own at the first busy window that shows so; busy-polls that
/// do not pay turn them shared for a hold that doubles at each failure.
#[derive(Debug, Clone)]
pub struct PlacementDetector {
    fixed: bool,
    own_core: bool,
    window: Option<(u64, SchedAccount)>,
    spin_attempts: u64,
    spin_hits: u64,
    hold_until_ms: u64,
    hold_ms: u64,
}

impl PlacementDetector {
    /// A detector for `placement`; a fixed placement never changes.
    pub fn new(placement: Placement) -> PlacementDetector {
        PlacementDetector {
            fixed: placement != Placement::Auto,
            own_core: placement == Placement::Own,
            window: None,
            spin_attempts: 0,
            spin_hits: 0,
            hold_until_ms: 0,
            hold_ms: SPIN_HOLD_MIN_MS,
        }
    }

    /// Counts one busy-poll, and whether it found completions.
    pub fn note_spin(&mut self, found: bool) {
        self.spin_attempts += 1;
        self.spin_hits += u64::from(found);
    }

    /// Whether the thread has its core to itself, as last judged.
    pub fn own_core(&self) -> bool {
        self.own_core
    }

    /// Whether samples are of use (the placement is detected, not fixed).
    pub fn detecting(&self) -> bool {
        !self.fixed
    }

    /// Feeds the thread's account at `now_ms`; at the end of each busy window, judges again.
    /// Returns the judgement when it changed. `None` for `account` (no schedstat in this
    /// kernel) judges the core shared.
    pub fn sample(&mut self, now_ms: u64, account: Option<SchedAccount>) -> Option<bool> {
        if self.fixed {
            return None;
        }
        let Some(account) = account else {
            return self.judge(false);
        };
        let Some((start_ms, start)) = self.window else {
            self.window = Some((now_ms, account));
            return None;
        };
        let window_ms = now_ms.saturating_sub(start_ms);
        if window_ms < DETECT_WINDOW_MS {
            return None;
        }
        self.window = Some((now_ms, account));
        let (attempts, hits) = (self.spin_attempts, self.spin_hits);
        (self.spin_attempts, self.spin_hits) = (0, 0);
        let per_mille = |ns: u64| ns / 1000 / window_ms;
        if per_mille(account.cpu_ns.saturating_sub(start.cpu_ns)) < BUSY_PER_MILLE {
            return None;
        }
        let spins_counted = attempts >= SPIN_MIN_ATTEMPTS;
        if spins_counted && hits * 1000 < attempts * SPIN_MIN_HIT_PER_MILLE {
            self.hold_until_ms = now_ms + self.hold_ms;
            self.hold_ms = (self.hold_ms * 2).min(SPIN_HOLD_MAX_MS);
            return self.judge(false);
        }
        if spins_counted {
            self.hold_ms = SPIN_HOLD_MIN_MS;
        }
        let waited = per_mille(account.run_delay_ns.saturating_sub(start.run_delay_ns));
        if waited >= SHARED_RUN_DELAY_PER_MILLE {
            return self.judge(false);
        }
        if now_ms < self.hold_until_ms {
            return None;
        }
        self.judge(true)
    }

    fn judge(&mut self, own_core: bool) -> Option<bool> {
        if own_core == self.own_core {
            return None;
        }
        self.own_core = own_core;
        Some(own_core)
    }
}

/// The account in the text of `/proc/<pid>/task/<tid>/schedstat`: CPU time, run delay and
/// time slices, space-separated.
pub fn parse_schedstat(text: &[u8]) -> Option<SchedAccount> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let cpu_ns = fields.next()?.parse().ok()?;
    let run_delay_ns = fields.next()?.parse().ok()?;
    Some(SchedAccount {
        cpu_ns,
        run_delay_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn account(cpu_ms: u64, run_delay_ms: u64) -> Option<SchedAccount> {
        Some(SchedAccount {
            cpu_ns: cpu_ms * MS,
            run_delay_ns: run_delay_ms * MS,
        })
    }

    #[test]
    fn parses_the_scheduler_account() {
        assert_eq!(
            parse_schedstat(b"123456789 4567 89\n"),
            Some(SchedAccount {
                cpu_ns: 123456789,
                run_delay_ns: 4567
            })
        );
        assert_eq!(parse_schedstat(b"123\n"), None);
        assert_eq!(parse_schedstat(b"a b c"), None);
    }

    #[test]
    fn a_busy_thread_that_never_waits_for_its_cpu_has_it_to_itself() {
        let mut d = PlacementDetector::new(Placement::Auto);
        assert!(!d.own_core(), "shared until evidence says otherwise");
        assert_eq!(d.sample(0, account(0, 0)), None);
        assert_eq!(
            d.sample(250, account(200, 1)),
            Some(true),
            "0.4% waiting: own"
        );
        assert!(d.own_core());
    }

    #[test]
    fn waiting_for_the_cpu_means_sharing_it_and_the_judgement_comes_back() {
        let mut d = PlacementDetector::new(Placement::Auto);
        d.sample(0, account(0, 0));
        assert_eq!(d.sample(250, account(240, 1)), Some(true));
        assert_eq!(
            d.sample(400, account(300, 100)),
            None,
            "judged only per window"
        );
        assert_eq!(
            d.sample(500, account(350, 120)),
            Some(false),
            "48% waiting: shared"
        );
        assert_eq!(d.sample(750, account(450, 200)), None, "still shared");
        assert_eq!(
            d.sample(1000, account(700, 202)),
            Some(true),
            "0.8%: own again"
        );
    }

    #[test]
    fn an_idle_window_says_nothing() {
        let mut d = PlacementDetector::new(Placement::Auto);
        d.sample(0, account(0, 0));
        assert_eq!(d.sample(250, account(200, 0)), Some(true));
        assert_eq!(d.sample(500, account(201, 0)), None, "idle: stays own");
        assert_eq!(
            d.sample(750, account(230, 20)),
            Some(false),
            "busy and waiting: shared"
        );
        assert_eq!(d.sample(1000, account(231, 20)), None, "idle: stays shared");
        assert!(!d.own_core());
    }

    #[test]
    fn busy_polls_that_find_nothing_mean_sharing_for_a_doubling_hold() {
        let mut d = PlacementDetector::new(Placement::Auto);
        d.sample(0, account(0, 0));
        assert_eq!(
            d.sample(250, account(200, 0)),
            Some(true),
            "no waiting: own"
        );
        for _ in 0..100 {
            d.note_spin(false);
        }
        assert_eq!(
            d.sample(500, account(450, 0)),
            Some(false),
            "spins miss: shared"
        );
        assert_eq!(d.sample(750, account(700, 0)), None, "held shared for 1 s");
        assert_eq!(d.sample(1000, account(950, 0)), None);
        assert_eq!(
            d.sample(1500, account(1400, 0)),
            Some(true),
            "hold over: own again"
        );
        for _ in 0..100 {
            d.note_spin(false);
        }
        assert_eq!(d.sample(1750, account(1650, 0)), Some(false));
        assert_eq!(d.sample(3500, account(3000, 0)), None, "second hold: 2 s");
        assert_eq!(d.sample(3750, account(3200, 0)), Some(true));
    }

    #[test]
    fn busy_polls_that_pay_keep_the_core_own() {
        let mut d = PlacementDetector::new(Placement::Auto);
        d.sample(0, account(0, 0));
        d.sample(250, account(200, 0));
        for i in 0..100 {
            d.note_spin(i % 2 == 0);
        }
        assert_eq!(
            d.sample(500, account(450, 0)),
            None,
            "half the spins hit: stays own"
        );
        assert!(d.own_core());
        d.note_spin(false);
        assert_eq!(
            d.sample(750, account(700, 0)),
            None,
            "too few spins to count"
        );
        assert!(d.own_core());
    }

    #[test]
    fn no_account_means_no_spinning() {
        let mut d = PlacementDetector::new(Placement::Auto);
        d.sample(0, account(0, 0));
        d.sample(250, account(200, 0));
        assert_eq!(d.sample(500, None), Some(false));
        assert!(!d.own_core());
    }

    #[test]
    fn a_fixed_placement_ignores_samples() {
        let mut own = PlacementDetector::new(Placement::Own);
        assert!(!own.detecting());
        assert!(own.own_core());
        own.sample(0, account(0, 0));
        assert_eq!(own.sample(5000, account(2000, 3000)), None);
        assert!(own.own_core());
        let mut shared = PlacementDetector::new(Placement::Shared);
        shared.sample(0, account(0, 0));
        assert_eq!(shared.sample(5000, account(4000, 0)), None);
        assert!(!shared.own_core());
    }

    #[test]
    fn a_shared_core_never_spins() {
        let config = WaitConfig {
            own: WaitPolicy {
                busy_poll_us: 50,
                wait_batch: 1,
                min_wait_us: 0,
            },
            shared: WaitPolicy {
                busy_poll_us: 50,
                wait_batch: 8,
                min_wait_us: 20,
            },
            ..WaitConfig::default()
        };
        assert_eq!(config.policy(true).busy_poll_us, 50);
        let shared = config.policy(false);
        assert_eq!(shared.busy_poll_us, 0);
        assert_eq!((shared.wait_batch, shared.min_wait_us), (8, 20));
    }

    #[test]
    fn spellings_round_trip() {
        for p in [Placement::Auto, Placement::Own, Placement::Shared] {
            assert_eq!(p.as_str().parse::<Placement>(), Ok(p));
        }
        for t in [TaskRun::Defer, TaskRun::Coop] {
            assert_eq!(t.as_str().parse::<TaskRun>(), Ok(t));
        }
        assert!("fast"
            .parse::<Placement>()
            .unwrap_err()
            .contains("auto, own or shared"));
    }
}
