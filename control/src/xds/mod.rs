//! xDS: the protocol Envoy speaks with its management server, as Switchyard's config source.
//!
//! This module is the wire layer. It builds `DiscoveryRequest`s and reads `DiscoveryResponse`s
//! (State of the World, [`sotw`]) and their Delta counterparts ([`delta`]); resource payloads
//! (`google.protobuf.Any`) are never read here but handed to a [`Validator`], which is where
//! they become RIB types (`convert`). The per-type state machines are pure (no I/O, no clock),
//! so every ACK/NACK rule is unit-tested without a server.
//!
//! Guarantees, for both variants:
//! - every response is answered by exactly one request carrying its nonce: an ACK when every
//!   resource in it was accepted, else a NACK whose `error_detail` names each rejected resource
//!   and why (`INVALID_ARGUMENT`);
//! - a NACK echoes the last accepted version (SotW `version_info`), never the rejected one;
//! - valid resources in a response that also holds invalid ones are applied; a rejected
//!   resource is not recorded as held at its new version, so after a reconnect the server
//!   sends it again (Delta `initial_resource_versions` carries the last accepted version, or
//!   nothing for a resource never accepted); a previously accepted version keeps serving;
//! - resources of another type than the subscription's, and duplicate names within one
//!   response, are rejections, not silent drops.

pub mod client;
pub mod delta;
pub mod file;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod resource;
#[cfg(any(test, feature = "testing"))]
pub mod server;
pub mod sotw;

use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use std::collections::{BTreeMap, BTreeSet};

/// `type_url` of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `type_url` of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type_url` of endpoint assignments (EDS).
pub const ENDPOINTS_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Resources a client starts out holding (loaded from `--state-dir`): by type URL, each name
/// with the version it was accepted at.
pub type Held = BTreeMap<String, BTreeMap<String, String>>;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
pub const INVALID_ARGUMENT: i32 = 3;

/// Turns one resource payload into a domain value, or says why it cannot.
pub trait Validator<T> {
    /// The resource's name and value, or the reason it is rejected (naming the field).
    fn validate(&mut self, resource: &Any) -> Result<(String, T), Rejected>;

    /// [`Validator::validate`] of each of `resources`, in order.
    fn validate_many(&mut self, resources: &[&Any]) -> Vec<Result<(String, T), Rejected>> {
        resources.iter().map(|r| self.validate(r)).collect()
    }

    /// Conflicts between resources, which no single one shows: given what one response
    /// would add or replace (`accepted`) and remove (`removed`; `replaces_all` when the
    /// response is the whole set, as in State of the World), the indices of `accepted` to
    /// reject, with why. Accepts everything by default.
    fn conflicts(
        &mut self,
        _accepted: &[(String, T, Any)],
        _removed: &[String],
        _replaces_all: bool,
    ) -> Vec<(usize, String)> {
        Vec::new()
    }

    /// The change a response made, once decided (for a validator that tracks what is held).
    fn committed(&mut self, _change: &Change<T>) {}
}

/// Moves the `late` rejections (indices into `accepted`, from [`Validator::conflicts`]) from
/// `accepted` to `rejected`.
fn reject_late<T>(
    accepted: &mut Vec<(String, T, Any)>,
    rejected: &mut Vec<Rejected>,
    late: Vec<(usize, String)>,
) {
    let mut late: BTreeMap<usize, String> = late.into_iter().collect();
    let mut i = 0;
    accepted.retain(|(name, _, any)| {
        let keep = match late.remove(&i) {
            Some(reason) => {
                rejected.push(Rejected {
                    resource: Some(any.clone()),
                    ..Rejected::new(name.clone(), reason)
                });
                false
            }
            None => true,
        };
        i += 1;
        keep
    });
}

/// A validator that is a plain function, run on several threads for a large response: a
/// first push of 10k assignments is decoded and checked in parallel, in order of arrival.
#[derive(Debug, Clone, Copy)]
pub struct Parallel<T>(pub fn(&Any) -> Result<(String, T), Rejected>);

/// Below this many resources a response is validated on the calling thread.
const PARALLEL_MIN_RESOURCES: usize = 256;

impl<T: Send> Validator<T> for Parallel<T> {
    fn validate(&mut self, resource: &Any) -> Result<(String, T), Rejected> {
        (self.0)(resource)
    }

    fn validate_many(&mut self, resources: &[&Any]) -> Vec<Result<(String, T), Rejected>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if resources.len() < PARALLEL_MIN_RESOURCES || threads < 2 {
            return resources.iter().map(|r| (self.0)(r)).collect();
        }
        let f = self.0;
        let chunk = resources.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = resources
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(|r| f(r)).collect::<Vec<_>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }
}

impl<T, F> Validator<T> for F
where
    F: FnMut(&Any) -> Result<(String, T), Rejected>,
{
    fn validate(&mut self, resource: &Any) -> Result<(String, T), Rejected> {
        self(resource)
    }
}

/// A resource the client refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The resource's name, when it could be read (else its position, `#3`).
    pub name: String,
    /// Why: the field path and the problem, as `convert` reports them.
    pub reason: String,
    /// The payload refused (for `/config_dump`'s `error_state`), when there was one.
    pub resource: Option<Any>,
}

impl Rejected {
    /// A rejection of the resource `name`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Rejected {
        Rejected {
            name: name.into(),
            reason: reason.into(),
            resource: None,
        }
    }
}

/// An accepted resource, with the version it was accepted at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted<T> {
    pub name: String,
    pub version: String,
    pub value: T,
    /// The payload as received (for `/config_dump`).
    pub resource: Any,
}

/// What one response changes for one resource type: the RIB applies `upserts` and
/// `removals` and records `rejected` with their reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<T> {
    pub type_url: String,
    /// Resources to add or replace.
    pub upserts: Vec<Accepted<T>>,
    /// Names no longer held.
    pub removals: Vec<String>,
    /// Resources refused, each with its reason (the previous version, if any, keeps serving).
    pub rejected: Vec<Rejected>,
    /// The server's version for this response (`version_info` / `system_version_info`).
    pub version: String,
}

impl<T> Change<T> {
    fn new(type_url: &str, version: &str) -> Change<T> {
        Change {
            type_url: type_url.to_string(),
            upserts: Vec::new(),
            removals: Vec::new(),
            rejected: Vec::new(),
            version: version.to_string(),
        }
    }

    /// True when nothing was refused (the answer is an ACK).
    pub fn accepted_all(&self) -> bool {
        self.rejected.is_empty()
    }

    /// The names of the upserts whose value satisfies `want`.
    pub fn upserts_where(&self, want: impl Fn(&T) -> bool) -> BTreeSet<&str> {
        self.upserts
            .iter()
            .filter(|a| want(&a.value))
            .map(|a| a.name.as_str())
            .collect()
    }
}

/// The `error_detail` of a NACK: every rejected resource with its reason.
fn nack_status(rejected: &[Rejected]) -> Option<Status> {
    if rejected.is_empty() {
        return None;
    }
    let message = rejected
        .iter()
        .map(|r| format!("{}: {}", r.name, r.reason))
        .collect::<Vec<_>>()
        .join("; ");
    Some(Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    })
}

/// Validates the resources of one response in order: each must be of `type_url`, have a name
/// not seen before in this response, and pass `validator`. Returns the accepted ones (name,
/// value) and the rejections.
fn validate_all<'a, T>(
    type_url: &str,
    resources: impl Iterator<Item = (usize, Option<&'a str>, &'a Any)>,
    validator: &mut impl Validator<T>,
) -> (Vec<(String, T, Any)>, Vec<Rejected>) {
    let resources: Vec<_> = resources.collect();
    let matching: Vec<&Any> = resources
        .iter()
        .filter(|(_, _, any)| any.type_url == type_url)
        .map(|(_, _, any)| *any)
        .collect();
    let mut results = validator.validate_many(&matching).into_iter();
    let mut accepted: Vec<(String, T, Any)> = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, wire_name, any) in resources {
        let label = wire_name
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("#{i}"), str::to_string);
        let refuse = |name: String, reason: String| Rejected {
            resource: Some(any.clone()),
            ..Rejected::new(name, reason)
        };
        if any.type_url != type_url {
            rejected.push(refuse(
                label,
                format!("type_url: {:?} in a {type_url} response", any.type_url),
            ));
            continue;
        }
        let Some(result) = results.next() else {
            break;
        };
        match result {
            Ok((name, value)) => {
                if let Some(wire) = wire_name.filter(|n| !n.is_empty()) {
                    if wire != name {
                        rejected.push(refuse(
                            wire.to_string(),
                            format!("name: the resource is named {name:?}"),
                        ));
                        continue;
                    }
                }
                if !seen.insert(name.clone()) {
                    rejected.push(refuse(
                        name,
                        "name: duplicate resource name in one response".to_string(),
                    ));
                    continue;
                }
                accepted.push((name, value, any.clone()));
            }
            Err(mut r) => {
                if r.name.is_empty() {
                    r.name = label;
                }
                r.resource = Some(any.clone());
                rejected.push(r);
            }
        }
    }
    // A name rejected as a duplicate must not stay accepted under its first copy either: the
    // server sent two different resources for one name, and which one it meant is unknown.
    let dup: std::collections::BTreeSet<String> = rejected
        .iter()
        .filter(|r| r.reason.starts_with("name: duplicate"))
        .map(|r| r.name.clone())
        .collect();
    accepted.retain(|(name, _, _)| !dup.contains(name));
    (accepted, rejected)
}

/// What a subscription asks for and what it holds, common to both variants.
#[derive(Debug, Clone)]
struct Interest {
    type_url: String,
    /// Names asked for; ignored when `wildcard`.
    names: BTreeSet<String>,
    wildcard: bool,
    /// Resources held now, with the version each was accepted at.
    held: BTreeMap<String, String>,
}

impl Interest {
    fn wildcard(type_url: &str) -> Interest {
        Interest {
            type_url: type_url.to_string(),
            names: BTreeSet::new(),
            wildcard: true,
            held: BTreeMap::new(),
        }
    }

    fn named(type_url: &str, names: impl IntoIterator<Item = String>) -> Interest {
        Interest {
            names: names.into_iter().collect(),
            wildcard: false,
            ..Interest::wildcard(type_url)
        }
    }

    /// Starts out holding `held` (a named interest also asks for those names).
    fn hold(&mut self, held: &Held) {
        if let Some(held) = held.get(&self.type_url) {
            if !self.wildcard {
                self.names.extend(held.keys().cloned());
            }
            self.held = held.clone();
        }
    }

    /// Whether a resource of this name is wanted (an unrequested one is ignored, as Envoy
    /// does).
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Replaces the names of a named interest: `(added, removed, dropped held names)`, or
    /// `None` when nothing changes (or it is a wildcard).
    fn set_names(
        &mut self,
        names: impl IntoIterator<Item = String>,
    ) -> Option<(Vec<String>, Vec<String>, Vec<String>)> {
        let names: BTreeSet<String> = names.into_iter().collect();
        if self.wildcard || names == self.names {
            return None;
        }
        let added: Vec<String> = names.difference(&self.names).cloned().collect();
        let removed: Vec<String> = self.names.difference(&names).cloned().collect();
        let dropped: Vec<String> = removed
            .iter()
            .filter(|n| self.held.remove(*n).is_some())
            .cloned()
            .collect();
        self.names = names;
        Some((added, removed, dropped))
    }

    fn name_list(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }
}

/// A validator for tests: the payload is `name` (accepted) or `name=bad reason` (rejected).
#[cfg(test)]
pub(crate) fn test_validator(any: &Any) -> Result<(String, String), Rejected> {
    let body = String::from_utf8(any.value.clone()).expect("test payloads are UTF-8");
    match body.split_once("=bad ") {
        Some((name, why)) => Err(Rejected::new(name, why)),
        None => Ok((body.clone(), format!("value of {body}"))),
    }
}

/// A change for tests: `upserts` (name, value) at version "1", and `removals`.
#[cfg(test)]
pub(crate) fn test_change<T>(upserts: Vec<(&str, T)>, removals: &[&str]) -> Change<T> {
    Change {
        type_url: String::new(),
        upserts: upserts
            .into_iter()
            .map(|(n, value)| Accepted {
                name: n.into(),
                version: "1".into(),
                value,
                resource: Default::default(),
            })
            .collect(),
        removals: removals.iter().map(|s| s.to_string()).collect(),
        rejected: Vec::new(),
        version: "1".into(),
    }
}
