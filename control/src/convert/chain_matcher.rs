//! A TCP listener's `filter_chain_matcher` (the matching API's `xds.type.matcher.v3.Matcher`),
//! compiled to the data plane's [`ChainMatcher`] with every action's chain name resolved to
//! its index in `filter_chains`.
//!
//! Supported: `matcher_list` (`single_predicate` with a `value_match` of `exact`, `prefix`,
//! `suffix` or `contains`, with `ignore_case`; `or_matcher`, `and_matcher`, `not_matcher`),
//! `matcher_tree` with `exact_match_map`, `prefix_match_map`, or `custom_match` with the IP
//! matcher (`xds.type.matcher.v3.IPMatcher`, Envoy's
//! `envoy.matching.custom_matchers.trie_matcher`), `on_no_match` and nested matchers; the
//! inputs `destination_ip`, `destination_port`, `source_ip`,
//! `source_port`, `direct_source_ip`, `source_type`, `server_name`, `transport_protocol` and
//! `application_protocol` (the last three read what the listener's TLS inspector detected:
//! without one, no server name, `raw_buffer` and no protocols, as in Envoy, which injects no
//! inspector for a matcher). `safe_regex` and custom string matchers are refused by path,
//! and so is `keep_matching` (which crashes Envoy 1.40 here). Envoy's own constraints on the
//! messages (a list of at least one matcher, a map of at least one entry, two predicates in
//! an `and`/`or`, required fields) are checked here, by path.

use super::address::cidr;
use super::string_matcher::{plain_string_matcher, string_matcher_parts};
use super::{decode_any, type_name, Result};
use crate::error::ConfigError;
use crate::ext::ip_matcher::IpMatcher;
use crate::path::{field, index};
use crate::type_names::{
    APPLICATION_PROTOCOL_INPUT, DESTINATION_IP_INPUT, DESTINATION_PORT_INPUT,
    DIRECT_SOURCE_IP_INPUT, IP_MATCHER, SERVER_NAME_INPUT, SOURCE_IP_INPUT, SOURCE_PORT_INPUT,
    SOURCE_TYPE_INPUT, STRING_VALUE, TRANSPORT_PROTOCOL_INPUT,
};
use envoy_types::pb::envoy::config::core::v3::CidrRange as PbCidr;
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::{
    single_predicate, MatchType,
};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::{FieldMatcher, Predicate};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::{MatchMap, TreeType};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{on_match, MatcherType, OnMatch};
use envoy_types::pb::xds::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::xds::r#type::matcher::v3::{Matcher, StringMatcher};
use std::collections::HashMap;
use switchyard_dataplane::fib::chain_matcher as fib;
use switchyard_dataplane::fib::ChainMatcher;

/// The filter chains' names and their indices; a matcher action names one of them.
pub(super) type ChainNames<'a> = HashMap<&'a str, u32>;

/// `filter_chain_matcher` at `path`, naming chains of `names`.
pub(super) fn chain_matcher(m: &Matcher, names: &ChainNames, path: &str) -> Result<ChainMatcher> {
    let mut missing = Vec::new();
    let root = Compiler {
        names,
        missing: &mut missing,
    }
    .matcher(m, path)?;
    for (name, at) in missing {
        tracing::warn!(
            action = %at,
            chain = %name,
            "the filter_chain_matcher names a filter chain the listener does not have; its connections will be closed (no_filter_chain_match), as in Envoy"
        );
    }
    Ok(ChainMatcher::new(root))
}

struct Compiler<'a, 'n> {
    names: &'a ChainNames<'n>,
    /// Actions naming no chain (name, path), for the log.
    missing: &'a mut Vec<(String, String)>,
}

impl Compiler<'_, '_> {
    fn matcher(&mut self, m: &Matcher, path: &str) -> Result<fib::Matcher> {
        let on_no_match = match &m.on_no_match {
            Some(o) => Some(self.on_match(o, &field(path, "on_no_match"))?),
            None => None,
        };
        let kind =
            match &m.matcher_type {
                None => fib::MatcherKind::Any,
                Some(MatcherType::MatcherList(list)) => {
                    let lpath = field(path, "matcher_list");
                    let mpath = field(&lpath, "matchers");
                    if list.matchers.is_empty() {
                        return Err(ConfigError::invalid(
                            mpath,
                            "at least one matcher is required",
                        ));
                    }
                    let matchers = list
                        .matchers
                        .iter()
                        .enumerate()
                        .map(|(i, fm)| self.field_matcher(fm, &index(&mpath, i)))
                        .collect::<Result<_>>()?;
                    fib::MatcherKind::List(matchers)
                }
                Some(MatcherType::MatcherTree(tree)) => {
                    let tpath = field(path, "matcher_tree");
                    let input = input(tree.input.as_ref(), &field(&tpath, "input"))?;
                    match &tree.tree_type {
                        None => return Err(ConfigError::invalid(
                            tpath,
                            "one of exact_match_map, prefix_match_map or custom_match is required",
                        )),
                        Some(TreeType::ExactMatchMap(map)) => fib::MatcherKind::Exact(
                            input,
                            self.map(map, &field(&tpath, "exact_match_map"))?,
                        ),
                        Some(TreeType::PrefixMatchMap(map)) => fib::MatcherKind::Prefix(
                            input,
                            self.map(map, &field(&tpath, "prefix_match_map"))?,
                        ),
                        Some(TreeType::CustomMatch(c)) => fib::MatcherKind::Ip(
                            input,
                            self.ip_matcher(c, &field(&tpath, "custom_match"))?,
                        ),
                    }
                }
            };
        Ok(fib::Matcher { kind, on_no_match })
    }

    fn on_match(&mut self, o: &OnMatch, path: &str) -> Result<fib::OnMatch> {
        if o.keep_matching {
            return Err(ConfigError::unsupported(
                field(path, "keep_matching"),
                "not supported in a filter_chain_matcher (Envoy 1.40 accepts it there and \
                 crashes on the first connection that reaches it)",
            ));
        }
        Ok(match &o.on_match {
            None => {
                return Err(ConfigError::invalid(
                    path,
                    "one of action or matcher is required",
                ))
            }
            Some(on_match::OnMatch::Matcher(m)) => {
                fib::OnMatch::Matcher(Box::new(self.matcher(m, &field(path, "matcher"))?))
            }
            Some(on_match::OnMatch::Action(a)) => self.action(a, &field(path, "action"))?,
        })
    }

    /// An action: a `google.protobuf.StringValue` naming a filter chain.
    fn action(&mut self, a: &TypedExtensionConfig, path: &str) -> Result<fib::OnMatch> {
        let (any, tpath) = typed(
            a,
            path,
            &format!("type.googleapis.com/{STRING_VALUE} naming a filter chain"),
        )?;
        let name: StringValue = decode_any(any, STRING_VALUE, &tpath)?;
        Ok(match self.names.get(name.value.as_str()) {
            Some(&i) => fib::OnMatch::Chain(i),
            None => {
                self.missing.push((name.value, tpath));
                fib::OnMatch::Missing
            }
        })
    }

    fn field_matcher(&mut self, fm: &FieldMatcher, path: &str) -> Result<fib::FieldMatcher> {
        let Some(p) = &fm.predicate else {
            return Err(ConfigError::invalid(field(path, "predicate"), "required"));
        };
        let Some(o) = &fm.on_match else {
            return Err(ConfigError::invalid(field(path, "on_match"), "required"));
        };
        Ok(fib::FieldMatcher {
            predicate: predicate(p, &field(path, "predicate"))?,
            on_match: self.on_match(o, &field(path, "on_match"))?,
        })
    }

    /// An exact or prefix map: at least one entry, sorted by key for the data plane.
    fn map(&mut self, map: &MatchMap, path: &str) -> Result<Vec<(Box<str>, fib::OnMatch)>> {
        let mpath = field(path, "map");
        if map.map.is_empty() {
            return Err(ConfigError::invalid(
                mpath,
                "at least one entry is required",
            ));
        }
        // Sorted first, so errors come in a stable order.
        let mut keys: Vec<&String> = map.map.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                Ok((
                    k.as_str().into(),
                    self.on_match(&map.map[k], &field(&mpath, k))?,
                ))
            })
            .collect()
    }

    /// `custom_match`: the IP matcher, its ranges sorted longest prefix first, then in the
    /// order declared.
    fn ip_matcher(&mut self, c: &TypedExtensionConfig, path: &str) -> Result<Vec<fib::IpRange>> {
        let (any, tpath) = typed(c, path, &format!("type.googleapis.com/{IP_MATCHER}"))?;
        let ip: IpMatcher = decode_any(any, IP_MATCHER, &tpath)?;
        let rpath = field(&tpath, "range_matchers");
        let mut ranges = Vec::new();
        for (i, rm) in ip.range_matchers.iter().enumerate() {
            let mpath = index(&rpath, i);
            let Some(o) = &rm.on_match else {
                return Err(ConfigError::invalid(field(&mpath, "on_match"), "required"));
            };
            let on_match = self.on_match(o, &field(&mpath, "on_match"))?;
            let cpath = field(&mpath, "ranges");
            if rm.ranges.is_empty() {
                return Err(ConfigError::invalid(
                    cpath,
                    "at least one range is required",
                ));
            }
            for (j, r) in rm.ranges.iter().enumerate() {
                let range = cidr(
                    &PbCidr {
                        address_prefix: r.address_prefix.clone(),
                        prefix_len: r.prefix_len,
                    },
                    &index(&cpath, j),
                )?;
                ranges.push(fib::IpRange {
                    range,
                    exclusive: rm.exclusive,
                    on_match: on_match.clone(),
                });
            }
        }
        // Stable: equal lengths keep their declaration order.
        ranges.sort_by_key(|r| std::cmp::Reverse(r.range.prefix_len));
        Ok(ranges)
    }
}

/// A typed extension's `name` (required, as in Envoy) and `typed_config` (required: `what`
/// says what it must be), with the latter's path.
fn typed<'c>(c: &'c TypedExtensionConfig, path: &str, what: &str) -> Result<(&'c Any, String)> {
    if c.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty), as in Envoy",
        ));
    }
    let tpath = field(path, "typed_config");
    match &c.typed_config {
        Some(any) => Ok((any, tpath)),
        None => Err(ConfigError::invalid(tpath, format!("required ({what})"))),
    }
}

/// A network input.
fn input(c: Option<&TypedExtensionConfig>, path: &str) -> Result<fib::Input> {
    let Some(c) = c else {
        return Err(ConfigError::invalid(path, "required"));
    };
    let (any, tpath) = typed(c, path, "a network input")?;
    Ok(match type_name(any) {
        DESTINATION_IP_INPUT => fib::Input::DestinationIp,
        DESTINATION_PORT_INPUT => fib::Input::DestinationPort,
        SOURCE_IP_INPUT => fib::Input::SourceIp,
        SOURCE_PORT_INPUT => fib::Input::SourcePort,
        DIRECT_SOURCE_IP_INPUT => fib::Input::DirectSourceIp,
        SOURCE_TYPE_INPUT => fib::Input::SourceType,
        SERVER_NAME_INPUT => fib::Input::ServerName,
        TRANSPORT_PROTOCOL_INPUT => fib::Input::TransportProtocol,
        APPLICATION_PROTOCOL_INPUT => fib::Input::ApplicationProtocol,
        _ => {
            return Err(ConfigError::unsupported(
                tpath,
                format!(
                    "@type '{}' is not a network input (accepted here: the {} inputs of \
                     envoy.extensions.matching.common_inputs.network.v3)",
                    any.type_url,
                    [
                        "DestinationIPInput",
                        "DestinationPortInput",
                        "SourceIPInput",
                        "SourcePortInput",
                        "DirectSourceIPInput",
                        "SourceTypeInput",
                        "ServerNameInput",
                        "TransportProtocolInput",
                        "ApplicationProtocolInput",
                    ]
                    .join(", ")
                ),
            ))
        }
    })
}

fn predicate(p: &Predicate, path: &str) -> Result<fib::Predicate> {
    let list = |ps: &[Predicate], name: &str| -> Result<Vec<fib::Predicate>> {
        let lpath = field(&field(path, name), "predicate");
        if ps.len() < 2 {
            return Err(ConfigError::invalid(
                lpath,
                "at least two predicates are required, as in Envoy",
            ));
        }
        ps.iter()
            .enumerate()
            .map(|(i, p)| predicate(p, &index(&lpath, i)))
            .collect()
    };
    Ok(match &p.match_type {
        None => {
            return Err(ConfigError::invalid(
                path,
                "one of single_predicate, or_matcher, and_matcher or not_matcher is required",
            ))
        }
        Some(MatchType::SinglePredicate(s)) => {
            let spath = field(path, "single_predicate");
            let input = input(s.input.as_ref(), &field(&spath, "input"))?;
            match &s.matcher {
                Some(single_predicate::Matcher::ValueMatch(m)) => {
                    fib::Predicate::Single(input, string_match(m, &field(&spath, "value_match"))?)
                }
                Some(single_predicate::Matcher::CustomMatch(_)) => {
                    return Err(ConfigError::unsupported(
                        field(&spath, "custom_match"),
                        "not supported by Switchyard",
                    ))
                }
                None => return Err(ConfigError::invalid(spath, "value_match is required")),
            }
        }
        Some(MatchType::OrMatcher(l)) => fib::Predicate::Or(list(&l.predicate, "or_matcher")?),
        Some(MatchType::AndMatcher(l)) => fib::Predicate::And(list(&l.predicate, "and_matcher")?),
        Some(MatchType::NotMatcher(p)) => {
            fib::Predicate::Not(Box::new(predicate(p, &field(path, "not_matcher"))?))
        }
    })
}

/// `exact`, `prefix`, `suffix` or `contains` (the last three non-empty, as in Envoy), with
/// `ignore_case` (`convert::string_matcher`); `safe_regex` is refused here.
fn string_match(m: &StringMatcher, path: &str) -> Result<fib::StringMatch> {
    let parts = string_matcher_parts!(&m.match_pattern, MatchPattern);
    plain_string_matcher(parts, m.ignore_case, path)
}
