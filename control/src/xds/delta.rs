//! Delta xDS: one subscription per resource type, resources sent and removed one by one, each
//! with its own version.
//!
//! A wildcard subscription (listeners, clusters) starts, as Envoy's does, with an empty
//! `resource_names_subscribe`. After a reconnect the first request lists every held resource
//! with the version it was accepted at (`initial_resource_versions`), so the server sends only
//! what changed; a resource whose latest version was rejected is listed at its last accepted
//! version (or not at all), so the server sends it again.

use super::{nack_status, reject_late, validate_all, Accepted, Change, Interest, Validator};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use std::collections::BTreeMap;

/// The client side of one resource type.
#[derive(Debug, Clone)]
pub struct Subscription {
    interest: Interest,
}

impl Subscription {
    /// Every resource of `type_url` the server has.
    pub fn wildcard(type_url: &str) -> Subscription {
        Subscription {
            interest: Interest::wildcard(type_url),
        }
    }

    /// Only the resources named.
    pub fn named(type_url: &str, names: impl IntoIterator<Item = String>) -> Subscription {
        Subscription {
            interest: Interest::named(type_url, names),
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

    /// The first request on a stream: the names (none for a wildcard) and the versions held.
    pub fn initial_request(&self, node: Option<Node>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node,
            type_url: self.interest.type_url.clone(),
            resource_names_subscribe: self.interest.name_list(),
            initial_resource_versions: self
                .interest
                .held
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            ..DeltaDiscoveryRequest::default()
        }
    }

    /// Changes the names of a named subscription: the request with what to subscribe and
    /// unsubscribe, and the held resources dropped; `None` when nothing changed.
    pub fn set_names(
        &mut self,
        names: impl IntoIterator<Item = String>,
    ) -> Option<(DeltaDiscoveryRequest, Vec<String>)> {
        let (subscribe, unsubscribe, dropped) = self.interest.set_names(names)?;
        let request = DeltaDiscoveryRequest {
            type_url: self.interest.type_url.clone(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..DeltaDiscoveryRequest::default()
        };
        Some((request, dropped))
    }

    /// Reads a response: what it changes, and the ACK or NACK to send.
    pub fn on_response<T>(
        &mut self,
        response: &DeltaDiscoveryResponse,
        validator: &mut impl Validator<T>,
    ) -> (Change<T>, DeltaDiscoveryRequest) {
        let mut change = Change::new(&self.interest.type_url, &response.system_version_info);
        let versions: BTreeMap<&str, &str> = response
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        let resources = response.resources.iter().enumerate().filter_map(|(i, r)| {
            r.resource
                .as_ref()
                .map(|any| (i, Some(r.name.as_str()), any))
        });
        let (mut accepted, mut rejected) =
            validate_all(&self.interest.type_url, resources, validator);
        let late = validator.conflicts(&accepted, &response.removed_resources, false);
        reject_late(&mut accepted, &mut rejected, late);
        for (name, value, resource) in accepted {
            if !self.interest.wants(&name) {
                continue;
            }
            let version = versions.get(name.as_str()).copied().unwrap_or_default();
            self.interest.held.insert(name.clone(), version.to_string());
            change.upserts.push(Accepted {
                name,
                version: version.to_string(),
                value,
                resource,
            });
        }
        for name in &response.removed_resources {
            if self.interest.held.remove(name).is_some() {
                change.removals.push(name.clone());
            }
        }
        change.rejected = rejected;
        validator.committed(&change);
        let request = DeltaDiscoveryRequest {
            type_url: self.interest.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: nack_status(&change.rejected),
            ..DeltaDiscoveryRequest::default()
        };
        (change, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{ENDPOINTS_TYPE, INVALID_ARGUMENT, LISTENER_TYPE};
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    use crate::xds::test_validator as validator;

    /// `(name, version, body)`; the body is what the test validator reads.
    fn response(
        type_url: &str,
        nonce: &str,
        resources: &[(&str, &str, &str)],
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: format!("sys-{nonce}"),
            type_url: type_url.into(),
            nonce: nonce.into(),
            resources: resources
                .iter()
                .map(|(name, version, body)| Resource {
                    name: name.to_string(),
                    version: version.to_string(),
                    resource: Some(Any {
                        type_url: type_url.into(),
                        value: body.as_bytes().to_vec(),
                    }),
                    ..Resource::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..DeltaDiscoveryResponse::default()
        }
    }

    #[test]
    fn a_wildcard_starts_with_an_empty_subscribe_list() {
        let s = Subscription::wildcard(LISTENER_TYPE);
        let r = s.initial_request(Some(Node::default()));
        assert!(r.resource_names_subscribe.is_empty());
        assert!(r.initial_resource_versions.is_empty());
        assert_eq!(r.type_url, LISTENER_TYPE);
        assert!(r.node.is_some());
    }

    #[test]
    fn resources_are_acked_added_and_removed_one_by_one() {
        let mut s = Subscription::wildcard(LISTENER_TYPE);
        let (c, ack) = s.on_response(
            &response(
                LISTENER_TYPE,
                "n1",
                &[("a", "1", "a"), ("b", "1", "b")],
                &[],
            ),
            &mut validator,
        );
        assert_eq!(c.upserts.len(), 2);
        assert_eq!(ack.response_nonce, "n1");
        assert!(ack.error_detail.is_none());
        let (c, _) = s.on_response(
            &response(
                LISTENER_TYPE,
                "n2",
                &[("b", "2", "b")],
                &["a", "never-held"],
            ),
            &mut validator,
        );
        assert_eq!(c.removals, ["a"], "only held names are reported removed");
        assert_eq!(c.upserts[0].version, "2");
        assert_eq!(
            s.held().iter().collect::<Vec<_>>(),
            [(&"b".to_string(), &"2".to_string())]
        );
    }

    #[test]
    fn a_rejected_resource_keeps_its_last_accepted_version_for_the_reconnect() {
        let mut s = Subscription::wildcard(LISTENER_TYPE);
        s.on_response(
            &response(LISTENER_TYPE, "n1", &[("a", "1", "a")], &[]),
            &mut validator,
        );
        let (c, nack) = s.on_response(
            &response(
                LISTENER_TYPE,
                "n2",
                &[
                    (
                        "a",
                        "2",
                        "a=bad address.socket_address.port_value: 70000 > 65535",
                    ),
                    (
                        "b",
                        "1",
                        "b=bad filter_chains[0].filters[0]: unknown filter type",
                    ),
                    ("c", "1", "c"),
                ],
                &[],
            ),
            &mut validator,
        );
        assert_eq!(c.upserts.len(), 1, "the valid resource is applied");
        let status = nack.error_detail.expect("NACK");
        assert_eq!(status.code, INVALID_ARGUMENT);
        assert!(status
            .message
            .contains("a: address.socket_address.port_value"));
        assert!(status.message.contains("b: filter_chains[0]"));
        assert_eq!(nack.response_nonce, "n2");
        let again = s.initial_request(None);
        assert_eq!(
            again.initial_resource_versions.get("a").map(String::as_str),
            Some("1")
        );
        assert!(!again.initial_resource_versions.contains_key("b"));
        assert_eq!(
            again.initial_resource_versions.get("c").map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn the_wire_name_must_match_the_resource() {
        let mut s = Subscription::wildcard(LISTENER_TYPE);
        let (c, nack) = s.on_response(
            &response(LISTENER_TYPE, "n1", &[("a", "1", "other")], &[]),
            &mut validator,
        );
        assert!(c.upserts.is_empty());
        assert_eq!(c.rejected[0].name, "a");
        assert!(nack.error_detail.is_some());
    }

    #[test]
    fn named_subscriptions_subscribe_and_unsubscribe_by_difference() {
        let mut s = Subscription::named(ENDPOINTS_TYPE, ["a".to_string(), "b".to_string()]);
        assert_eq!(s.initial_request(None).resource_names_subscribe, ["a", "b"]);
        s.on_response(
            &response(
                ENDPOINTS_TYPE,
                "n1",
                &[("a", "1", "a"), ("z", "1", "z")],
                &[],
            ),
            &mut validator,
        );
        assert!(!s.held().contains_key("z"), "unrequested names are ignored");
        let (req, dropped) = s
            .set_names(["b".to_string(), "c".to_string()])
            .expect("changed");
        assert_eq!(req.resource_names_subscribe, ["c"]);
        assert_eq!(req.resource_names_unsubscribe, ["a"]);
        assert_eq!(dropped, ["a"]);
        assert!(s.set_names(["b".to_string(), "c".to_string()]).is_none());
    }

    #[test]
    fn a_warm_start_announces_what_it_holds() {
        let held: crate::xds::Held = [(
            LISTENER_TYPE.to_string(),
            [("l".to_string(), "7".to_string())].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        let s = Subscription::wildcard(LISTENER_TYPE).holding(&held);
        let first = s.initial_request(None);
        assert_eq!(
            first.initial_resource_versions.get("l").map(String::as_str),
            Some("7")
        );
    }
}
