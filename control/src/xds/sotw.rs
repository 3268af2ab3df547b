//! State of the World: one subscription per resource type on an ADS stream.
//!
//! Every response carries the whole set the server has for the subscription, under one
//! `version_info`. For a wildcard subscription (listeners, clusters) a held resource missing
//! from a response is removed; for a named one (endpoints of the clusters that asked), the
//! response covers the names requested and names are removed by unsubscribing.

use super::{nack_status, reject_late, validate_all, Accepted, Change, Interest, Validator};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeMap, BTreeSet};

/// The client side of one resource type.
#[derive(Debug, Clone)]
pub struct Subscription {
    interest: Interest,
    /// The last `version_info` acknowledged ("" before the first ACK).
    accepted_version: String,
    /// The nonce of the last response (echoed by the next request).
    nonce: String,
}

impl Subscription {
    /// Every resource of `type_url` the server has (listeners, clusters).
    pub fn wildcard(type_url: &str) -> Subscription {
        Subscription::with(Interest::wildcard(type_url))
    }

    /// Only the resources named (endpoint assignments of the EDS clusters).
    pub fn named(type_url: &str, names: impl IntoIterator<Item = String>) -> Subscription {
        Subscription::with(Interest::named(type_url, names))
    }

    fn with(interest: Interest) -> Subscription {
        Subscription {
            interest,
            accepted_version: String::new(),
            nonce: String::new(),
        }
    }

    /// Starts out holding what `held` has of this type (loaded from `--state-dir`), as if
    /// it had been received: a reconnect announces it, and what the server no longer has is
    /// removed.
    pub fn holding(mut self, held: &super::Held) -> Subscription {
        self.interest.hold(held);
        self
    }

    /// The type this subscription is for.
    pub fn type_url(&self) -> &str {
        &self.interest.type_url
    }

    /// Resources held, with the version each was accepted at.
    pub fn held(&self) -> &BTreeMap<String, String> {
        &self.interest.held
    }

    /// The names of a named subscription (none for a wildcard).
    pub fn names(&self) -> Vec<String> {
        self.interest.name_list()
    }

    /// The version last acknowledged.
    pub fn accepted_version(&self) -> &str {
        &self.accepted_version
    }

    /// The first request on a new stream. After a reconnect it carries the version last
    /// accepted, as Envoy does, and no nonce (nonces belong to a stream).
    pub fn initial_request(&mut self, node: Option<Node>) -> DiscoveryRequest {
        self.nonce.clear();
        DiscoveryRequest {
            version_info: self.accepted_version.clone(),
            node,
            resource_names: self.interest.name_list(),
            type_url: self.interest.type_url.clone(),
            ..DiscoveryRequest::default()
        }
    }

    /// Changes the names of a named subscription. Returns the request announcing it (with the
    /// last version and nonce) and the held resources dropped, or `None` when nothing changed.
    pub fn set_names(
        &mut self,
        names: impl IntoIterator<Item = String>,
    ) -> Option<(DiscoveryRequest, Vec<String>)> {
        let (_, _, dropped) = self.interest.set_names(names)?;
        let request = DiscoveryRequest {
            version_info: self.accepted_version.clone(),
            resource_names: self.interest.name_list(),
            type_url: self.interest.type_url.clone(),
            response_nonce: self.nonce.clone(),
            ..DiscoveryRequest::default()
        };
        Some((request, dropped))
    }

    /// Reads a response: what it changes, and the ACK or NACK to send.
    pub fn on_response<T>(
        &mut self,
        response: &DiscoveryResponse,
        validator: &mut impl Validator<T>,
    ) -> (Change<T>, DiscoveryRequest) {
        let mut change = Change::new(&self.interest.type_url, &response.version_info);
        let resources = response
            .resources
            .iter()
            .enumerate()
            .map(|(i, any)| (i, None, any));
        let (mut accepted, mut rejected) =
            validate_all(&self.interest.type_url, resources, validator);
        let late = validator.conflicts(&accepted, &[], self.interest.wildcard);
        reject_late(&mut accepted, &mut rejected, late);
        let in_response: BTreeSet<&str> = accepted
            .iter()
            .map(|(n, _, _)| n.as_str())
            .chain(rejected.iter().map(|r| r.name.as_str()))
            .collect();
        let held = &mut self.interest.held;
        if self.interest.wildcard {
            change.removals = held
                .keys()
                .filter(|n| !in_response.contains(n.as_str()))
                .cloned()
                .collect();
            for n in &change.removals {
                held.remove(n);
            }
        }
        for (name, value, resource) in accepted {
            if !self.interest.wants(&name) {
                continue;
            }
            self.interest
                .held
                .insert(name.clone(), response.version_info.clone());
            change.upserts.push(Accepted {
                name,
                version: response.version_info.clone(),
                value,
                resource,
            });
        }
        change.rejected = rejected;
        validator.committed(&change);
        self.nonce = response.nonce.clone();
        if change.accepted_all() {
            self.accepted_version = response.version_info.clone();
        }
        let request = DiscoveryRequest {
            version_info: self.accepted_version.clone(),
            resource_names: self.interest.name_list(),
            type_url: self.interest.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: nack_status(&change.rejected),
            ..DiscoveryRequest::default()
        };
        (change, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{CLUSTER_TYPE, ENDPOINTS_TYPE, INVALID_ARGUMENT};
    use envoy_types::pb::google::protobuf::Any;

    /// Test payloads: `value` is `name` or `name=bad reason`.
    fn res(type_url: &str, body: &str) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: body.as_bytes().to_vec(),
        }
    }

    use crate::xds::test_validator as validator;

    fn response(version: &str, nonce: &str, bodies: &[&str]) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: CLUSTER_TYPE.into(),
            resources: bodies.iter().map(|b| res(CLUSTER_TYPE, b)).collect(),
            ..DiscoveryResponse::default()
        }
    }

    fn names<T>(c: &Change<T>) -> Vec<&str> {
        c.upserts.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn first_request_is_a_wildcard_without_version_or_nonce() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        let node = Node {
            id: "n1".into(),
            ..Node::default()
        };
        let r = s.initial_request(Some(node));
        assert_eq!(r.type_url, CLUSTER_TYPE);
        assert_eq!(r.version_info, "");
        assert_eq!(r.response_nonce, "");
        assert!(r.resource_names.is_empty());
        assert_eq!(r.node.unwrap().id, "n1");
    }

    #[test]
    fn a_clean_response_is_acked_with_its_version_and_nonce() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        let (c, ack) = s.on_response(&response("v1", "n-1", &["a", "b"]), &mut validator);
        assert_eq!(names(&c), ["a", "b"]);
        assert!(c.removals.is_empty() && c.rejected.is_empty());
        assert_eq!(ack.version_info, "v1");
        assert_eq!(ack.response_nonce, "n-1");
        assert!(ack.error_detail.is_none());
        assert_eq!(s.accepted_version(), "v1");
    }

    #[test]
    fn a_bad_resource_is_nacked_with_the_last_good_version_and_the_rest_applied() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        s.on_response(&response("v1", "n-1", &["a", "b"]), &mut validator);
        let bad = "c=bad load_assignment.endpoints[0]: port 70000 out of range";
        let (c, nack) = s.on_response(&response("v2", "n-2", &["a", "b", bad]), &mut validator);
        assert_eq!(names(&c), ["a", "b"], "the valid ones are still applied");
        assert_eq!(c.rejected.len(), 1);
        assert_eq!(c.rejected[0].name, "c");
        assert_eq!(
            nack.version_info, "v1",
            "a NACK echoes the last accepted version"
        );
        assert_eq!(nack.response_nonce, "n-2");
        let status = nack.error_detail.expect("NACK");
        assert_eq!(status.code, INVALID_ARGUMENT);
        assert!(
            status.message.contains("c: load_assignment.endpoints[0]"),
            "{}",
            status.message
        );
        assert!(
            !s.held().contains_key("c"),
            "a rejected resource is not held"
        );
        assert_eq!(s.accepted_version(), "v1");
    }

    #[test]
    fn a_rejected_update_keeps_the_previous_version_held() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        s.on_response(&response("v1", "n-1", &["a"]), &mut validator);
        let (c, _) = s.on_response(
            &response("v2", "n-2", &["a=bad type: unknown"]),
            &mut validator,
        );
        assert!(c.removals.is_empty(), "present but invalid is not removed");
        assert_eq!(s.held().get("a").map(String::as_str), Some("v1"));
    }

    #[test]
    fn wildcard_resources_missing_from_a_response_are_removed() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        s.on_response(&response("v1", "n-1", &["a", "b", "c"]), &mut validator);
        let (c, ack) = s.on_response(&response("v2", "n-2", &["b"]), &mut validator);
        assert_eq!(c.removals, ["a", "c"]);
        assert_eq!(names(&c), ["b"]);
        assert!(ack.error_detail.is_none());
        assert_eq!(s.held().keys().collect::<Vec<_>>(), ["b"]);
    }

    fn held(type_url: &str, names: &[(&str, &str)]) -> crate::xds::Held {
        let names = names
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        [(type_url.to_string(), names)].into_iter().collect()
    }

    #[test]
    fn what_a_warm_start_holds_is_removed_when_the_server_no_longer_has_it() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE)
            .holding(&held(CLUSTER_TYPE, &[("a", "v1"), ("gone", "v1")]));
        let (c, _) = s.on_response(&response("v7", "n-1", &["a"]), &mut validator);
        assert_eq!(c.removals, ["gone"]);
        assert_eq!(s.held().keys().collect::<Vec<_>>(), ["a"]);
        // A named subscription asks for what it holds.
        let mut e = Subscription::named(ENDPOINTS_TYPE, [])
            .holding(&held(ENDPOINTS_TYPE, &[("svc", "e1")]));
        assert_eq!(e.initial_request(None).resource_names, ["svc"]);
    }

    #[test]
    fn a_large_response_is_validated_in_parallel_with_the_same_decisions() {
        let bodies: Vec<String> = (0..1000)
            .map(|i| match i % 97 {
                0 => format!("r{i}=bad broken"),
                _ => format!("r{i}"),
            })
            .collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let mut mixed = response("v1", "n-1", &refs);
        mixed.resources.insert(500, res(ENDPOINTS_TYPE, "foreign"));
        let mut one = Subscription::wildcard(CLUSTER_TYPE);
        let (sequential, ack1) = one.on_response(&mixed, &mut validator);
        let mut two = Subscription::wildcard(CLUSTER_TYPE);
        let (parallel, ack2) = two.on_response(
            &mixed,
            &mut crate::xds::Parallel(crate::xds::test_validator),
        );
        assert_eq!(sequential, parallel);
        assert_eq!(ack1, ack2);
        assert_eq!(parallel.upserts.len(), 1000 - 11);
        assert_eq!(parallel.rejected.len(), 11 + 1, "11 bad, 1 foreign");
        assert_eq!(parallel.upserts[0].name, "r1", "in order");
    }

    #[test]
    fn duplicate_names_and_foreign_types_are_rejections() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        let mut resp = response("v1", "n-1", &["a", "b", "a"]);
        resp.resources.push(res(ENDPOINTS_TYPE, "x"));
        let (c, nack) = s.on_response(&resp, &mut validator);
        assert_eq!(
            names(&c),
            ["b"],
            "neither copy of a duplicated name is applied"
        );
        let why: Vec<_> = c.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(why, ["a", "#3"]);
        assert!(nack.error_detail.unwrap().message.contains("duplicate"));
    }

    #[test]
    fn named_subscriptions_ignore_unrequested_names_and_drop_on_unsubscribe() {
        let mut s = Subscription::named(ENDPOINTS_TYPE, ["a".to_string(), "b".to_string()]);
        assert_eq!(s.initial_request(None).resource_names, ["a", "b"]);
        let mut resp = response("v1", "n-1", &[]);
        resp.type_url = ENDPOINTS_TYPE.into();
        resp.resources = ["a", "b", "z"]
            .iter()
            .map(|b| res(ENDPOINTS_TYPE, b))
            .collect();
        let (c, _) = s.on_response(&resp, &mut validator);
        assert_eq!(names(&c), ["a", "b"]);
        resp.resources.truncate(1);
        resp.nonce = "n-2".into();
        let (c, _) = s.on_response(&resp, &mut validator);
        assert!(c.removals.is_empty(), "named: absence is not removal");
        let (req, dropped) = s.set_names(["a".to_string()]).expect("changed");
        assert_eq!(dropped, ["b"]);
        assert_eq!(req.resource_names, ["a"]);
        assert_eq!(req.response_nonce, "n-2");
        assert_eq!(req.version_info, "v1");
        assert!(s.set_names(["a".to_string()]).is_none());
    }

    #[test]
    fn a_reconnect_announces_the_accepted_version_without_a_nonce() {
        let mut s = Subscription::wildcard(CLUSTER_TYPE);
        s.on_response(&response("v7", "n-9", &["a"]), &mut validator);
        let r = s.initial_request(None);
        assert_eq!(r.version_info, "v7");
        assert_eq!(r.response_nonce, "");
    }
}
