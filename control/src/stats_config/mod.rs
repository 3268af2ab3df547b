//! Envoy's bootstrap `stats_config`, compiled when the config is loaded: the tag extractors
//! (`stats_tags`, `use_all_default_tags`) the Prometheus form uses, and the `stats_matcher`
//! that decides which stats exist at all.
//!
//! Guarantees:
//! - a stat the matcher rejects is in no admin stats form (text, JSON, Prometheus), as Envoy
//!   never creates it; the matcher sees the full name, before tag extraction;
//! - tags follow Envoy's `TagProducerImpl` (see [`tags`]), with Envoy's default extractors
//!   (see `defaults`) unless `use_all_default_tags: false`;
//! - fixed at start, like `admin`: a reload that changes it is logged and takes effect at the
//!   next start (a bootstrap is static in Envoy too).

mod defaults;
pub mod tags;

pub use tags::{Tag, TagProducer};

use regex::Regex;
use switchyard_dataplane::fib::chain_matcher::StringMatch;

/// A compiled regex, compared by its source.
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// `envoy.type.matcher.v3.StringMatcher` over a stat name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    /// `exact`, `prefix`, `suffix` or `contains`, with `ignore_case`.
    Plain(StringMatch),
    /// `safe_regex`: the whole name must match (anchored when compiled).
    Regex(Pattern),
}

impl NameMatch {
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameMatch::Plain(m) => m.matches(name.as_bytes()),
            NameMatch::Regex(re) => re.0.is_match(name),
        }
    }
}

/// `stats_matcher`: which stats exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StatsMatcher {
    /// No matcher: every stat.
    #[default]
    All,
    /// `reject_all: true`: none.
    RejectAll,
    /// `exclusion_list`: those no pattern matches.
    Exclude(Vec<NameMatch>),
    /// `inclusion_list`: those a pattern matches.
    Include(Vec<NameMatch>),
}

impl StatsMatcher {
    /// Whether the stat named `name` exists.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            StatsMatcher::All => true,
            StatsMatcher::RejectAll => false,
            StatsMatcher::Exclude(l) => !l.iter().any(|m| m.matches(name)),
            StatsMatcher::Include(l) => l.iter().any(|m| m.matches(name)),
        }
    }
}

/// The bootstrap's `stats_config` (Envoy's defaults without one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsConfig {
    /// `stats_tags` and `use_all_default_tags`.
    pub tags: TagProducer,
    /// `stats_matcher`.
    pub matcher: StatsMatcher,
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_dataplane::fib::chain_matcher::StringMatchKind;

    #[test]
    fn matcher_lists() {
        let prefix = NameMatch::Plain(StringMatch {
            kind: StringMatchKind::Prefix,
            pattern: "cluster.".into(),
            ignore_case: false,
        });
        let re = NameMatch::Regex(Pattern(Regex::new("^(?:server\\..*)$").unwrap()));
        let inc = StatsMatcher::Include(vec![prefix.clone(), re]);
        assert!(inc.keeps("cluster.a.upstream_cx_total"));
        assert!(inc.keeps("server.live"));
        assert!(!inc.keeps("tcp.a.downstream_cx_total"));
        let exc = StatsMatcher::Exclude(vec![prefix]);
        assert!(!exc.keeps("cluster.a.upstream_cx_total"));
        assert!(exc.keeps("server.live"));
        assert!(!StatsMatcher::RejectAll.keeps("server.live"));
        assert!(StatsMatcher::All.keeps("server.live"));
    }
}
