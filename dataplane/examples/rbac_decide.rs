//! One RBAC decision, many times, for `ci/bench-rbac` to count under callgrind: `N`
//! policies, each allowing one client address (`10.1.x.y/32`) on port 443, in name order,
//! and connections from addresses spread over them (so the matching policy is anywhere in
//! the order, as a linear walk would feel it).
//!
//! `cargo run --release --example rbac_decide -- N DECISIONS`: prints the allowed count.
//! Callgrind counts the instructions of `decide_all` alone (`--toggle-collect`).

use std::net::SocketAddr;
use switchyard_dataplane::fib::CidrRange;
use switchyard_dataplane::rbac::{
    Action, Decision, Inputs, Known, Permission, Policy, Principal, Rbac,
};

fn address(i: u32) -> [u8; 4] {
    let [_, _, a, b] = i.to_be_bytes();
    [10, 1, a, b]
}

fn rules(n: u32) -> Rbac {
    let policies = (0..n)
        .map(|i| {
            let [p, q, a, b] = address(i);
            Policy {
                name: format!("policy-{i:05}").into(),
                permissions: vec![Permission::DestinationPort(443)],
                principals: vec![Principal::RemoteIp(
                    format!("{p}.{q}.{a}.{b}/32").parse::<CidrRange>().unwrap(),
                )],
            }
        })
        .collect();
    Rbac::new(Action::Allow, policies)
}

#[inline(never)]
fn decide_all(rules: &Rbac, n: u32, decisions: u32) -> u32 {
    let mut allowed = 0;
    for k in 0..decisions {
        let remote = SocketAddr::from((address(k.wrapping_mul(7919) % n), 40000));
        let inputs = Inputs {
            local: SocketAddr::from(([10, 0, 0, 1], 443)),
            remote,
            direct_remote: remote,
            server_name: Known::Now(None),
            peer: Known::Now(None),
        };
        if let Decision::Allowed { .. } = std::hint::black_box(rules.decide(&inputs)) {
            allowed += 1;
        }
    }
    allowed
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N DECISIONS"))
        .collect();
    let (n, decisions) = (args[0].max(1), args[1]);
    let rules = rules(n);
    println!("{}", decide_all(&rules, n, decisions));
}
