//! The connection machine on its own: its transitions one by one, then whole runs of the
//! simulator ([`super::sim`]) under proptest. Failing seeds are kept by proptest in
//! `dataplane/proptest-regressions/conn/tests.txt` and replayed first on every run.

use super::sim::{Sim, World};
use super::*;
use crate::relay::Dir;
use proptest::prelude::*;

/// A cluster that admits and picks as told.
struct Fixed {
    admit: bool,
    endpoint: Option<u32>,
    admitted: u32,
    /// What `authorize` answers, and how often it was asked.
    authorized: bool,
    authorize_asked: u32,
}

impl Upstreams for Fixed {
    fn admit(&mut self) -> Result<(), Overflow> {
        self.admitted += u32::from(self.admit);
        if self.admit {
            Ok(())
        } else {
            Err(Overflow)
        }
    }

    fn pick(&mut self, exclude: Option<u32>) -> Option<Target> {
        self.endpoint
            .map(|e| Target::Endpoint(if Some(e) == exclude { e + 1 } else { e }))
    }

    fn authorize(&mut self) -> bool {
        self.authorize_asked += 1;
        self.authorized
    }
}

fn healthy() -> Fixed {
    Fixed {
        admit: true,
        endpoint: Some(0),
        admitted: 0,
        authorized: true,
        authorize_asked: 0,
    }
}

fn proxy(max_attempts: u32) -> Verdict {
    Verdict::Proxy(Proxy {
        idle_timeout_ms: Some(1_000),
        max_attempts,
        holds_limit: true,
        faults: Faults::default(),
        buffer_limits: relay::BufferLimits::ENVOY_DEFAULT,
        tls: TlsPlan::default(),
        carrier: Carrier::No,
    })
}

/// Feeds `event` and returns the actions, settled.
fn feed(m: &mut Machine, now_ms: u64, event: Event, up: &mut Fixed) -> Vec<Action> {
    let mut out = Actions::default();
    m.on_event(now_ms, event, up, &mut out)
        .expect("a valid event");
    m.settle(&mut out);
    out.iter().collect()
}

/// Feeds one completion for each operation in flight.
fn complete_all(m: &mut Machine) -> Vec<Action> {
    let mut all = Vec::new();
    while m.inflight() > 0 {
        m.completed().expect("an operation in flight");
        let mut out = Actions::default();
        m.settle(&mut out);
        all.extend(out.iter());
    }
    all
}

#[test]
fn a_connect_moves_the_breaker_from_pending_to_connection() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    assert_eq!(
        feed(&mut m, 0, Event::Accepted(proxy(1)), &mut up),
        [Action::OpenSocket]
    );
    assert_eq!(m.breaker(), Breaker::Pending);
    m.started(1);
    m.completed().unwrap();
    assert_eq!(
        feed(&mut m, 0, Event::SocketCreated(Ok(())), &mut up),
        [Action::Connect]
    );
    m.started(1);
    m.completed().unwrap();
    let actions = feed(&mut m, 5, Event::ConnectDone(Ok(Transport::Ready)), &mut up);
    assert_eq!(actions[0], Action::Release(Seat::BreakerPending));
    assert!(actions.contains(&Action::Note(Note::Connected { endpoint: Some(0) })));
    assert!(actions.contains(&Action::Relay(relay::Action::Recv(Dir::Up))));
    assert_eq!(m.breaker(), Breaker::Connection);
    assert_eq!(m.stage(), Stage::Relaying);
    assert_eq!(
        m.upstream(),
        Upstream::Connected {
            endpoint: Some(0),
            remote_close: false
        }
    );
}

#[test]
fn a_failed_attempt_retries_another_endpoint_then_gives_up_with_its_flags() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    feed(&mut m, 0, Event::Accepted(proxy(2)), &mut up);
    feed(&mut m, 0, Event::SocketCreated(Ok(())), &mut up);
    let retry = feed(
        &mut m,
        0,
        Event::ConnectDone(Err(libc::ECONNREFUSED)),
        &mut up,
    );
    assert_eq!(retry[0], Action::CloseAttempt);
    assert_eq!(*retry.last().unwrap(), Action::OpenSocket);
    assert_eq!(
        m.upstream(),
        Upstream::Tried(Some(1)),
        "not the endpoint that failed"
    );
    assert_eq!(up.admitted, 1, "a retry keeps its admission");
    feed(&mut m, 0, Event::SocketCreated(Ok(())), &mut up);
    let give_up = feed(&mut m, 0, Event::ConnectDone(Err(libc::ECANCELED)), &mut up);
    assert!(give_up.contains(&Action::Note(Note::ConnectFailed {
        endpoint: Some(1),
        timed_out: true,
        local: false,
        attempts_exceeded: true
    })));
    assert!(give_up.contains(&Action::CloseClient { reset: false }));
    // Envoy's tcp_proxy: a timeout is a connect failure too, `UF,URX`.
    assert_eq!(
        m.flags(),
        ResponseFlags(
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE
                | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
        )
    );
    // Nothing was started through the driver in this test, so the finish is immediate,
    // with both breaker seats and the limit seat given back once.
    assert_eq!(
        &give_up[give_up.len() - 4..],
        [
            Action::Release(Seat::BreakerPending),
            Action::Release(Seat::BreakerConnection),
            Action::Release(Seat::ConnectionLimit),
            Action::Finish
        ]
    );
    assert_eq!(m.stage(), Stage::Free);
}

#[test]
fn a_refused_admission_closes_the_client_holding_nothing() {
    let mut up = Fixed {
        admit: false,
        ..healthy()
    };
    let mut m = Machine::accepted_at(0);
    let actions = feed(&mut m, 0, Event::Accepted(proxy(1)), &mut up);
    assert_eq!(
        actions,
        [
            Action::Note(Note::Overflow),
            Action::CloseClient { reset: false },
            Action::Release(Seat::ConnectionLimit),
            Action::Finish
        ]
    );
    assert!(m.flags().has(ResponseFlags::UPSTREAM_OVERFLOW));
}

#[test]
fn the_slot_finishes_only_after_its_last_completion() {
    let mut up = Fixed {
        endpoint: None,
        ..healthy()
    };
    let mut m = Machine::accepted_at(0);
    let mut out = Actions::default();
    m.on_event(0, Event::Accepted(proxy(1)), &mut up, &mut out)
        .unwrap();
    assert!(out
        .iter()
        .any(|a| a == Action::CloseClient { reset: false }));
    m.started(1); // the driver's close
    m.settle(&mut out);
    assert!(!out.iter().any(|a| a == Action::Finish));
    let finish = complete_all(&mut m);
    assert_eq!(finish.iter().filter(|a| **a == Action::Finish).count(), 1);
    assert!(m.flags().has(ResponseFlags::NO_HEALTHY_UPSTREAM));
}

#[test]
fn a_completion_with_nothing_in_flight_is_refused_not_wrapped() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    let mut out = Actions::default();
    assert_eq!(m.completed(), Err(Violation::OpUnderflow));
    assert_eq!(m.inflight(), 0);
    m.on_event(0, Event::Accepted(proxy(1)), &mut up, &mut out)
        .unwrap();
    assert_eq!(
        m.on_event(0, Event::Accepted(proxy(1)), &mut up, &mut out),
        Err(Violation::Decided)
    );
    let mut free = Machine::default();
    assert_eq!(
        free.on_event(0, Event::Tick, &mut up, &mut out),
        Err(Violation::FreeSlot)
    );
}

#[test]
fn idle_time_counts_from_the_last_byte_and_not_during_a_fault_delay() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    let delayed = Verdict::Proxy(Proxy {
        idle_timeout_ms: Some(10),
        max_attempts: 1,
        holds_limit: false,
        faults: Faults {
            active: true,
            abort_at_accept: false,
            delay_ms: Some(50),
        },
        buffer_limits: relay::BufferLimits::ENVOY_DEFAULT,
        tls: TlsPlan::default(),
        carrier: Carrier::No,
    });
    assert_eq!(
        feed(&mut m, 0, Event::Accepted(delayed), &mut up),
        [Action::ScheduleDelay { at_ms: 50 }]
    );
    assert!(
        feed(&mut m, 40, Event::Tick, &mut up).is_empty(),
        "a delay is not idleness"
    );
    assert_eq!(
        feed(&mut m, 50, Event::DelayOver, &mut up),
        [Action::OpenSocket]
    );
    feed(&mut m, 55, Event::Tick, &mut up);
    assert!(m.is_live());
    let idle = feed(&mut m, 60, Event::Tick, &mut up);
    assert_eq!(idle[0], Action::Note(Note::IdleTimeout));
    assert!(idle.contains(&Action::CloseClient { reset: false }));
    assert!(idle.contains(&Action::Release(Seat::Fault)));
    // Envoy logs it as `-`: no flag, no termination details (its stat counts it).
    assert_eq!(m.flags(), ResponseFlags(ResponseFlags::DELAY_INJECTED));
    assert_eq!(m.details(), "-");
}

#[test]
fn a_limited_connection_closes_after_the_filters_delay() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    assert!(feed(
        &mut m,
        0,
        Event::Accepted(Verdict::Limited { delay_ms: 30 }),
        &mut up
    )
    .is_empty());
    assert!(feed(&mut m, 29, Event::Tick, &mut up).is_empty());
    assert_eq!(
        feed(&mut m, 30, Event::Tick, &mut up),
        [Action::CloseClient { reset: false }, Action::Finish]
    );
    // Envoy logs the refused connection as `-`, with no termination details.
    assert_eq!(m.flags(), ResponseFlags::default());
    assert_eq!(m.details(), "-");
}

#[test]
fn a_backend_reset_resets_the_client_and_counts_as_remote() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    feed(&mut m, 0, Event::Accepted(proxy(1)), &mut up);
    feed(&mut m, 0, Event::SocketCreated(Ok(())), &mut up);
    feed(&mut m, 0, Event::ConnectDone(Ok(Transport::Ready)), &mut up);
    let reset = feed(
        &mut m,
        1,
        Event::Relay(relay::Event::Recv(
            Dir::Down,
            relay::Received::Error(libc::ECONNRESET),
        )),
        &mut up,
    );
    assert!(reset.contains(&Action::CloseBoth {
        reset_client: true,
        reset_backend: false,
        clean: false
    }));
    assert!(m
        .flags()
        .has(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION));
    assert_eq!(
        m.upstream(),
        Upstream::Connected {
            endpoint: Some(0),
            remote_close: true
        }
    );
}

#[test]
fn a_socket_created_after_an_abort_is_closed_as_a_stray() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    feed(&mut m, 0, Event::Accepted(proxy(1)), &mut up);
    m.started(1); // the socket() in flight
    let drained = feed(&mut m, 1, Event::Abort(Abort::Drain), &mut up);
    assert_eq!(
        &drained[..2],
        [
            Action::Note(Note::DrainClose),
            Action::CloseClient { reset: true }
        ]
    );
    assert_eq!(
        feed(&mut m, 2, Event::SocketCreated(Ok(())), &mut up),
        [Action::CloseStraySocket]
    );
}

/// A world hostile in every way at once.
fn hostile(slots: usize, buffers: u16, rates: [u64; 6]) -> World {
    let [fail, error, shed, fault, timer, mirror] = rates;
    World {
        slots,
        connections: 40,
        buffers,
        max_pending: 3,
        max_connections: 5,
        max_attempts: 1 + (fail % 3) as u32,
        socket_fail: fail / 2,
        connect_fail: fail,
        connect_timeout: fail / 2,
        no_endpoint: fail / 4,
        recv_error: error,
        send_error: error / 4,
        refuse: shed,
        limited: shed,
        fault_abort: fault,
        fault_delay: fault,
        mirror,
        tick: timer,
        drain: timer / 8,
        abort: timer / 8,
        idle_timeout_ms: (timer % 2 == 0).then_some(200),
        tls_client: fault,
        tls_backend: error,
        handshake_fail: fail,
        inspect: shed + fault,
        inspect_fail: fail,
        continue_on_timeout: 500,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    /// Whatever the world does, in whatever order: every slot freed once, nothing in
    /// flight, every budget given back, one finish per connection, every buffer home, and
    /// clean connections moved every byte both ways.
    #[test]
    fn every_run_ends_with_everything_given_back(
        seed in any::<u64>(),
        slots in 1usize..12,
        buffers in 1u16..8,
        rates in prop::array::uniform6(0u64..300),
    ) {
        let mut sim = Sim::new(seed, hostile(slots, buffers, rates));
        sim.run(20_000);
        sim.check_end();
        prop_assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
        prop_assert_eq!(sim.finished, 40, "every connection was accepted and finished");
    }
}

/// A friendly world lets most connections finish cleanly: the byte checks above are not
/// vacuous.
#[test]
fn a_friendly_world_relays_most_connections_cleanly() {
    let mut world = hostile(8, 6, [0, 0, 0, 0, 51, 0]);
    world.max_pending = 100;
    world.max_connections = 100;
    world.drain = 0;
    world.abort = 0;
    let mut sim = Sim::new(7, world);
    sim.run(200_000);
    sim.check_end();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    assert!(sim.clean >= 30, "only {} of 40 clean", sim.clean);
}

fn tls_proxy(client: bool, backend: bool, max_attempts: u32) -> Verdict {
    Verdict::Proxy(Proxy {
        idle_timeout_ms: None,
        max_attempts,
        holds_limit: false,
        faults: Faults::default(),
        buffer_limits: relay::BufferLimits::ENVOY_DEFAULT,
        tls: TlsPlan {
            client,
            authorize_client: false,
            client_timeout_ms: Some(100),
            backend,
            connect_timeout_ms: 1_000,
        },
        carrier: Carrier::No,
    })
}

#[test]
fn the_client_handshake_comes_before_any_upstream_is_picked() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    let out = feed(
        &mut m,
        0,
        Event::Accepted(tls_proxy(true, false, 1)),
        &mut up,
    );
    assert_eq!(out, [Action::StartHandshake(Side::Client)]);
    assert_eq!(up.admitted, 0, "nothing admitted before the handshake");
    m.started(1);
    m.completed().unwrap();
    let done = Event::Handshaken {
        side: Side::Client,
        end: HandshakeEnd::Done,
    };
    assert_eq!(feed(&mut m, 5, done, &mut up), [Action::OpenSocket]);
    assert_eq!(up.admitted, 1);
}

#[test]
fn a_policy_on_the_client_certificate_is_decided_after_its_handshake_before_any_upstream() {
    for authorized in [true, false] {
        let mut up = healthy();
        up.authorized = authorized;
        let mut m = Machine::accepted_at(0);
        let Verdict::Proxy(mut p) = tls_proxy(true, false, 1) else {
            unreachable!()
        };
        p.tls.authorize_client = true;
        let out = feed(&mut m, 0, Event::Accepted(Verdict::Proxy(p)), &mut up);
        assert_eq!(out, [Action::StartHandshake(Side::Client)]);
        assert_eq!(up.authorize_asked, 0, "not before the certificate is known");
        m.started(1);
        m.completed().unwrap();
        let done = Event::Handshaken {
            side: Side::Client,
            end: HandshakeEnd::Done,
        };
        let out = feed(&mut m, 5, done, &mut up);
        assert_eq!(up.authorize_asked, 1);
        if authorized {
            assert_eq!(out, [Action::OpenSocket]);
        } else {
            assert_eq!(up.admitted, 0, "nothing admitted for a denied client");
            assert_eq!(
                out,
                [Action::CloseClient { reset: false }, Action::Finish],
                "closed at once, nothing upstream"
            );
            assert_eq!(m.details(), crate::rbac::DENIED_DETAILS);
            assert_eq!(m.flags().0, 0, "Envoy's RBAC sets no response flag");
        }
    }
}

#[test]
fn a_failed_client_handshake_closes_the_client_and_a_late_one_is_abandoned_first() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    feed(
        &mut m,
        0,
        Event::Accepted(tls_proxy(true, false, 1)),
        &mut up,
    );
    m.started(1);
    // Before the deadline, nothing; at it, the driver is asked to give up, once.
    assert!(feed(&mut m, 50, Event::Tick, &mut up).is_empty());
    assert_eq!(
        feed(&mut m, 100, Event::Tick, &mut up),
        [Action::AbandonHandshake(Side::Client)]
    );
    assert!(feed(&mut m, 200, Event::Tick, &mut up).is_empty());
    m.completed().unwrap();
    let timed_out = Event::Handshaken {
        side: Side::Client,
        end: HandshakeEnd::TimedOut,
    };
    let out = feed(&mut m, 200, timed_out, &mut up);
    assert_eq!(
        out[..2],
        [
            Action::Note(Note::HandshakeFailed {
                side: Side::Client,
                timed_out: true
            }),
            Action::CloseClient { reset: false },
        ]
    );
    assert_eq!(up.admitted, 0);
}

#[test]
fn a_backend_handshake_is_part_of_the_connect_and_its_failure_retries() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    feed(
        &mut m,
        0,
        Event::Accepted(tls_proxy(false, true, 2)),
        &mut up,
    );
    m.started(1);
    m.completed().unwrap();
    feed(&mut m, 0, Event::SocketCreated(Ok(())), &mut up);
    m.started(3);
    for _ in 0..3 {
        m.completed().unwrap();
    }
    let out = feed(
        &mut m,
        10,
        Event::ConnectDone(Ok(Transport::Ready)),
        &mut up,
    );
    assert_eq!(out, [Action::StartHandshake(Side::Backend)]);
    assert_eq!(
        m.breaker(),
        Breaker::Pending,
        "still connecting until the handshake"
    );
    m.started(1);
    m.completed().unwrap();
    let failed = Event::Handshaken {
        side: Side::Backend,
        end: HandshakeEnd::Failed,
    };
    let out = feed(&mut m, 20, failed, &mut up);
    assert!(out.contains(&Action::CloseAttempt));
    assert!(out.contains(&Action::OpenSocket), "retried: {out:?}");
    // The second attempt connects and its handshake passes: the relay starts.
    m.started(1);
    m.completed().unwrap();
    feed(&mut m, 30, Event::SocketCreated(Ok(())), &mut up);
    m.started(3);
    for _ in 0..3 {
        m.completed().unwrap();
    }
    feed(
        &mut m,
        30,
        Event::ConnectDone(Ok(Transport::Ready)),
        &mut up,
    );
    m.started(1);
    m.completed().unwrap();
    let done = Event::Handshaken {
        side: Side::Backend,
        end: HandshakeEnd::Done,
    };
    let out = feed(&mut m, 40, done, &mut up);
    assert!(out.contains(&Action::Release(Seat::BreakerPending)));
    assert_eq!(m.stage(), Stage::Relaying);
    // The backend handshake's deadline is the attempt's connect timeout.
    let mut m2 = Machine::accepted_at(0);
    feed(
        &mut m2,
        0,
        Event::Accepted(tls_proxy(false, true, 1)),
        &mut up,
    );
    m2.started(1);
    m2.completed().unwrap();
    feed(&mut m2, 0, Event::SocketCreated(Ok(())), &mut up);
    feed(
        &mut m2,
        900,
        Event::ConnectDone(Ok(Transport::Ready)),
        &mut up,
    );
    assert!(feed(&mut m2, 999, Event::Tick, &mut up).is_empty());
    assert_eq!(
        feed(&mut m2, 1_000, Event::Tick, &mut up),
        [Action::AbandonHandshake(Side::Backend)]
    );
}

#[test]
fn an_inspected_connection_waits_for_its_verdict() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    let start = feed(
        &mut m,
        0,
        Event::Inspect {
            timeout_ms: Some(100),
        },
        &mut up,
    );
    assert_eq!(start, [Action::StartInspection]);
    assert_eq!(m.stage(), Stage::Inspecting);
    m.started(1); // the inspection's read
    assert!(feed(&mut m, 50, Event::Tick, &mut up).is_empty());
    m.completed().unwrap();
    let decided = feed(&mut m, 60, Event::Accepted(proxy(1)), &mut up);
    assert_eq!(decided, [Action::OpenSocket]);
    // The deadline is the inspection's only: past it, nothing is abandoned.
    assert!(feed(&mut m, 500, Event::Tick, &mut up).is_empty());
}

#[test]
fn an_inspection_past_its_deadline_is_abandoned_once_then_fails() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    feed(
        &mut m,
        0,
        Event::Inspect {
            timeout_ms: Some(100),
        },
        &mut up,
    );
    m.started(1);
    assert_eq!(
        feed(&mut m, 100, Event::Tick, &mut up),
        [Action::AbandonInspection]
    );
    assert!(feed(&mut m, 200, Event::Tick, &mut up).is_empty());
    m.completed().unwrap();
    let failed = feed(&mut m, 201, Event::InspectionFailed, &mut up);
    assert_eq!(&failed[..1], [Action::CloseClient { reset: false }]);
    // Nothing else in flight: the slot finishes at once.
    assert_eq!(failed.last(), Some(&Action::Finish));
}

fn carrier(kind: Carrier) -> Verdict {
    let Verdict::Proxy(mut p) = proxy(1) else {
        unreachable!()
    };
    p.carrier = kind;
    Verdict::Proxy(p)
}

#[test]
fn a_terminating_carrier_relays_at_once_with_nothing_upstream() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    let actions = feed(
        &mut m,
        0,
        Event::Accepted(carrier(Carrier::Server)),
        &mut up,
    );
    assert_eq!(m.stage(), Stage::Relaying);
    assert!(actions.contains(&Action::Relay(relay::Action::Recv(Dir::Up))));
    assert!(!actions.contains(&Action::OpenSocket));
    assert_eq!(up.admitted, 0, "no circuit-breaker seat for a carrier");
    assert_eq!(m.breaker(), Breaker::Free);
}

#[test]
fn a_pooled_carrier_connects_without_taking_a_breaker_seat() {
    let mut up = healthy();
    let mut m = Machine::accepted_at(0);
    let actions = feed(
        &mut m,
        0,
        Event::Accepted(carrier(Carrier::Client)),
        &mut up,
    );
    assert_eq!(actions, [Action::OpenSocket]);
    assert_eq!(up.admitted, 0, "its streams hold the breaker, not it");
    m.started(1);
    m.completed().unwrap();
    feed(&mut m, 0, Event::SocketCreated(Ok(())), &mut up);
    m.started(1);
    m.completed().unwrap();
    let actions = feed(&mut m, 1, Event::ConnectDone(Ok(Transport::Ready)), &mut up);
    assert_eq!(m.stage(), Stage::Relaying);
    assert!(!actions.contains(&Action::Release(Seat::BreakerPending)));
    assert_eq!(m.breaker(), Breaker::Free);
}
