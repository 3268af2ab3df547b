//! The bootstrap's `stats_config`: `stats_tags`, `use_all_default_tags` and `stats_matcher`,
//! compiled into a [`StatsConfig`] once, when the config is loaded (the walker refuses every
//! other field by path).
//!
//! Checks, as Envoy's `TagProducerImpl`: a `tag_name` with no `regex` needs a default
//! extractor of that name; a `regex` tag needs a non-empty `tag_name`; a regex the `regex`
//! crate cannot compile (look-around, backreferences) is refused with its path and reason.
//! One tag name may be given more than once (Envoy allows it: the first match wins).

use super::string_matcher::{compile_regex, string_matcher, string_matcher_parts};
use super::Result;
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::stats_config::{NameMatch, StatsConfig, StatsMatcher, TagProducer};
use envoy_types::pb::envoy::config::metrics::v3::stats_matcher::StatsMatcher as PbMatcher;
use envoy_types::pb::envoy::config::metrics::v3::tag_specifier::TagValue;
use envoy_types::pb::envoy::config::metrics::v3::{
    StatsConfig as PbStatsConfig, StatsMatcher as PbStatsMatcher, TagSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;

const PATH: &str = "stats_config";

/// `stats_config` (Envoy's defaults when absent).
pub(super) fn stats_config(c: Option<&PbStatsConfig>) -> Result<StatsConfig> {
    let Some(c) = c else {
        return Ok(StatsConfig::default());
    };
    let mut tags = TagProducer::new(c.use_all_default_tags.as_ref().is_none_or(|b| b.value));
    for (i, t) in c.stats_tags.iter().enumerate() {
        tag_specifier(&mut tags, t, &index(&field(PATH, "stats_tags"), i))?;
    }
    let matcher = match &c.stats_matcher {
        Some(m) => stats_matcher(m, &field(PATH, "stats_matcher"))?,
        None => StatsMatcher::All,
    };
    Ok(StatsConfig { tags, matcher })
}

fn tag_specifier(tags: &mut TagProducer, t: &TagSpecifier, path: &str) -> Result<()> {
    let name = t.tag_name.as_str();
    match &t.tag_value {
        Some(TagValue::FixedValue(v)) => tags.add_fixed(name, v),
        Some(TagValue::Regex(re)) if !re.is_empty() => {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    field(path, "tag_name"),
                    "tag_name cannot be empty (Envoy refuses it too)",
                ));
            }
            tags.add_regex(name, compile_regex(re, &field(path, "regex"), false)?);
        }
        Some(TagValue::Regex(_)) | None => {
            if tags.add_defaults_named(name) == 0 {
                return Err(ConfigError::invalid(
                    path,
                    format!(
                        "No regex specified for tag specifier and no default regex for name: \
                         '{name}' (as Envoy)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn stats_matcher(m: &PbStatsMatcher, path: &str) -> Result<StatsMatcher> {
    Ok(match &m.stats_matcher {
        None | Some(PbMatcher::RejectAll(false)) => StatsMatcher::All,
        Some(PbMatcher::RejectAll(true)) => StatsMatcher::RejectAll,
        Some(PbMatcher::ExclusionList(l)) => {
            StatsMatcher::Exclude(list(l, &field(path, "exclusion_list"))?)
        }
        Some(PbMatcher::InclusionList(l)) => {
            StatsMatcher::Include(list(l, &field(path, "inclusion_list"))?)
        }
    })
}

fn list(l: &ListStringMatcher, path: &str) -> Result<Vec<NameMatch>> {
    let patterns = field(path, "patterns");
    if l.patterns.is_empty() {
        return Err(ConfigError::invalid(
            patterns,
            "needs at least one pattern, as in Envoy",
        ));
    }
    l.patterns
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let parts = string_matcher_parts!(&m.match_pattern, MatchPattern);
            string_matcher(parts, m.ignore_case, &index(&patterns, i))
        })
        .collect()
}
