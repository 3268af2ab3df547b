//! `envoy.filters.network.rbac` (`envoy.extensions.filters.network.rbac.v3.RBAC`) and its
//! policies (`envoy.config.rbac.v3.RBAC`): Envoy's validation, then the data plane's
//! [`Rbac`], compiled once here (its index too) and shared by every FIB built from it.
//!
//! Taken: `rules`, `shadow_rules` (action ALLOW, DENY or LOG), `stat_prefix` (required),
//! `shadow_rules_stat_prefix`, `enforcement_type`; permissions `any`, `and_rules`,
//! `or_rules`, `not_rule`, `destination_ip`, `destination_port`, `destination_port_range`,
//! `requested_server_name` (exact, prefix, suffix, contains); principals `any`, `and_ids`,
//! `or_ids`, `not_id`, `direct_remote_ip`, `remote_ip`, `source_ip`, `authenticated`.
//! Refused by path, as nothing at L4 could honour them here: the matcher API (`matcher`,
//! `shadow_matcher`), `delay_deny`, audit logging, CEL conditions, HTTP-only rules
//! (`header`, `url_path`, `uri_template`), metadata and filter state, extension matchers
//! and principals, `safe_regex` server names.

use super::address::cidr;
use super::string_matcher::{plain_string_matcher, string_matcher_parts};
use super::Result;
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::RbacConfig;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission::Rule, principal::Identifier, Permission as PbPermission, Policy as PbPolicy,
    Principal as PbPrincipal, Rbac as PbRules,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::{rbac, Rbac as PbRbac};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use std::sync::Arc;
use switchyard_dataplane::fib::chain_matcher::StringMatch;
use switchyard_dataplane::rbac::{Action, Permission, Policy, Principal, Rbac};

/// The filter's `typed_config` at `path`.
pub(super) fn rbac_config(r: &PbRbac, path: &str) -> Result<RbacConfig> {
    if r.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    for (present, name) in [
        (r.matcher.is_some(), "matcher"),
        (r.shadow_matcher.is_some(), "shadow_matcher"),
    ] {
        if present {
            return Err(ConfigError::unsupported(
                field(path, name),
                "the matcher API is not supported by Switchyard's RBAC; use rules and \
                 shadow_rules",
            ));
        }
    }
    if r.delay_deny.is_some() {
        return Err(ConfigError::unsupported(
            field(path, "delay_deny"),
            "not supported by Switchyard (a denied connection is closed at once)",
        ));
    }
    let continuous = match rbac::EnforcementType::try_from(r.enforcement_type) {
        Ok(rbac::EnforcementType::Continuous) => true,
        Ok(rbac::EnforcementType::OneTimeOnFirstByte) => false,
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "enforcement_type"),
                format!("unknown value {}", r.enforcement_type),
            ))
        }
    };
    let rules = match &r.rules {
        Some(rules) => Some(rule_set(rules, &field(path, "rules"))?),
        None => None,
    };
    let shadow_rules = match &r.shadow_rules {
        Some(rules) => Some(rule_set(rules, &field(path, "shadow_rules"))?),
        None => None,
    };
    Ok(RbacConfig {
        stat_prefix: r.stat_prefix.clone(),
        shadow_rules_stat_prefix: r.shadow_rules_stat_prefix.clone(),
        rules,
        shadow_rules,
        continuous,
    })
}

/// `envoy.config.rbac.v3.RBAC`: its action and policies, compiled.
fn rule_set(r: &PbRules, path: &str) -> Result<Arc<Rbac>> {
    use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as PbAction;
    let action = match PbAction::try_from(r.action) {
        Ok(PbAction::Allow) => Action::Allow,
        Ok(PbAction::Deny) => Action::Deny,
        Ok(PbAction::Log) => Action::Log,
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "action"),
                format!("unknown value {}", r.action),
            ))
        }
    };
    if r.audit_logging_options.is_some() {
        return Err(ConfigError::unsupported(
            field(path, "audit_logging_options"),
            "not supported by Switchyard",
        ));
    }
    let ppath = field(path, "policies");
    // In name order, so that errors come in a stable order.
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|name| policy(name, &r.policies[name], &field(&ppath, name)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Rbac::new(action, policies)))
}

fn policy(name: &str, p: &PbPolicy, path: &str) -> Result<Policy> {
    for (present, what) in [
        (p.condition.is_some(), "condition"),
        (p.checked_condition.is_some(), "checked_condition"),
        (p.cel_config.is_some(), "cel_config"),
    ] {
        if present {
            return Err(ConfigError::unsupported(
                field(path, what),
                "CEL conditions are not supported by Switchyard",
            ));
        }
    }
    Ok(Policy {
        name: name.into(),
        permissions: at_least_one(&p.permissions, &field(path, "permissions"), permission)?,
        principals: at_least_one(&p.principals, &field(path, "principals"), principal)?,
    })
}

/// A repeated field Envoy requires at least one of, each converted by `f`.
fn at_least_one<T, U>(
    items: &[T],
    path: &str,
    f: impl Fn(&T, &str) -> Result<U>,
) -> Result<Vec<U>> {
    if items.is_empty() {
        return Err(ConfigError::invalid(path, "at least one is required"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| f(item, &index(path, i)))
        .collect()
}

// `metadata` is deprecated in Envoy's proto, and refused here by name all the same.
#[allow(deprecated)]
fn permission(p: &PbPermission, path: &str) -> Result<Permission> {
    let unsupported = |name: &str| {
        Err(ConfigError::unsupported(
            field(path, name),
            "not supported by Switchyard's network RBAC (it has no L4 meaning here)",
        ))
    };
    Ok(match &p.rule {
        None => return Err(ConfigError::invalid(path, "a rule is required")),
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) => {
            return Err(ConfigError::invalid(field(path, "any"), "must be true"))
        }
        Some(Rule::AndRules(set)) => Permission::And(at_least_one(
            &set.rules,
            &field(&field(path, "and_rules"), "rules"),
            permission,
        )?),
        Some(Rule::OrRules(set)) => Permission::Or(at_least_one(
            &set.rules,
            &field(&field(path, "or_rules"), "rules"),
            permission,
        )?),
        Some(Rule::NotRule(inner)) => {
            Permission::Not(Box::new(permission(inner, &field(path, "not_rule"))?))
        }
        Some(Rule::DestinationIp(c)) => {
            Permission::DestinationIp(cidr(c, &field(path, "destination_ip"))?)
        }
        Some(Rule::DestinationPort(port)) => {
            if *port > 65535 {
                return Err(ConfigError::invalid(
                    field(path, "destination_port"),
                    format!("{port} is not a port (at most 65535)"),
                ));
            }
            Permission::DestinationPort(*port as u16)
        }
        Some(Rule::DestinationPortRange(r)) => {
            let rpath = field(path, "destination_port_range");
            if r.start < 0 || r.end < 0 || r.start > 65536 || r.end > 65536 {
                return Err(ConfigError::invalid(
                    rpath,
                    format!("[{}, {}) is not a range of ports", r.start, r.end),
                ));
            }
            Permission::DestinationPortRange {
                start: r.start as u32,
                end: r.end as u32,
            }
        }
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(string_match(m, &field(path, "requested_server_name"))?)
        }
        Some(Rule::Header(_)) => return unsupported("header"),
        Some(Rule::UrlPath(_)) => return unsupported("url_path"),
        Some(Rule::UriTemplate(_)) => return unsupported("uri_template"),
        Some(Rule::Metadata(_)) => return unsupported("metadata"),
        Some(Rule::SourcedMetadata(_)) => return unsupported("sourced_metadata"),
        Some(Rule::Matcher(_)) => return unsupported("matcher"),
    })
}

// `source_ip` and `metadata` are deprecated in Envoy's proto; Envoy still takes them.
#[allow(deprecated)]
fn principal(p: &PbPrincipal, path: &str) -> Result<Principal> {
    let unsupported = |name: &str| {
        Err(ConfigError::unsupported(
            field(path, name),
            "not supported by Switchyard's network RBAC (it has no L4 meaning here)",
        ))
    };
    Ok(match &p.identifier {
        None => return Err(ConfigError::invalid(path, "an identifier is required")),
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Any(false)) => {
            return Err(ConfigError::invalid(field(path, "any"), "must be true"))
        }
        Some(Identifier::AndIds(set)) => Principal::And(at_least_one(
            &set.ids,
            &field(&field(path, "and_ids"), "ids"),
            principal,
        )?),
        Some(Identifier::OrIds(set)) => Principal::Or(at_least_one(
            &set.ids,
            &field(&field(path, "or_ids"), "ids"),
            principal,
        )?),
        Some(Identifier::NotId(inner)) => {
            Principal::Not(Box::new(principal(inner, &field(path, "not_id"))?))
        }
        Some(Identifier::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(c, &field(path, "direct_remote_ip"))?)
        }
        Some(Identifier::RemoteIp(c)) => Principal::RemoteIp(cidr(c, &field(path, "remote_ip"))?),
        // Deprecated; at L4 Envoy reads it as the connection's remote address.
        Some(Identifier::SourceIp(c)) => Principal::RemoteIp(cidr(c, &field(path, "source_ip"))?),
        Some(Identifier::Authenticated(a)) => {
            let apath = field(path, "authenticated");
            Principal::Authenticated(match &a.principal_name {
                Some(m) => Some(string_match(m, &field(&apath, "principal_name"))?),
                None => None,
            })
        }
        Some(Identifier::Header(_)) => return unsupported("header"),
        Some(Identifier::UrlPath(_)) => return unsupported("url_path"),
        Some(Identifier::Metadata(_)) => return unsupported("metadata"),
        Some(Identifier::SourcedMetadata(_)) => return unsupported("sourced_metadata"),
        Some(Identifier::FilterState(_)) => return unsupported("filter_state"),
        Some(Identifier::Custom(_)) => return unsupported("custom"),
    })
}

/// A `StringMatcher` (checked as everywhere else); `safe_regex` is refused.
fn string_match(m: &StringMatcher, path: &str) -> Result<StringMatch> {
    let parts = string_matcher_parts!(&m.match_pattern, MatchPattern);
    plain_string_matcher(parts, m.ignore_case, path)
}
