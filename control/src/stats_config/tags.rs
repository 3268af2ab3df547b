//! Envoy's tag extraction (`TagProducerImpl`, `TagExtractor*Impl`), compiled once per config.
//!
//! Guarantees, each as Envoy does it:
//! - every extractor is tried on the original name: first those without a prefix token
//!   (defaults, then `stats_tags`, in config order), then those whose prefix token is the
//!   name's first dot-separated token (same order);
//! - a tag comes out in that order; the characters each match removes are removed together,
//!   and the empty tokens that leaves are dropped (`cluster.a.x` less `a.` and `x` is
//!   `cluster`);
//! - of several extractors with one tag name, the first that matches gives the tag;
//! - a `stats_tags` regex is searched (not anchored): with at least one group it matches,
//!   group 1 is removed and group 2 (when the regex has one) is the value, else group 1.

use super::defaults::{Default, DEFAULTS};
use super::Pattern;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One tag of a stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// `envoy.cluster_name`.
    pub name: Arc<str>,
    /// `echo`.
    pub value: String,
}

/// How an extractor finds its value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `stats_tags[].regex` (Envoy's std::regex extractor).
    Search(Pattern),
    /// A default RE2 regex: group 1 must be non-empty; group 2, or group 1 when group 2 is
    /// empty, is the value; `negative` as the value is no match.
    Re2 {
        re: Pattern,
        substr: &'static str,
        negative: &'static str,
    },
    /// Dot-separated tokens: `*` one token, `**` any number, `$` the value.
    Tokens {
        tokens: Vec<&'static str>,
        at: usize,
    },
    /// `fixed_value`: on every stat.
    Fixed(Box<str>),
}

/// A removed byte range and the tag value.
type Found = (Option<(usize, usize)>, String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Extractor {
    name: Arc<str>,
    rule: Rule,
}

impl Extractor {
    fn extract(&self, name: &str, tokens: &[&str]) -> Option<Found> {
        match &self.rule {
            Rule::Search(re) => search(&re.0, name),
            Rule::Re2 {
                re,
                substr,
                negative,
            } => {
                if !substr.is_empty() && !name.contains(substr) {
                    return None;
                }
                re2(&re.0, name).filter(|(_, v)| v != negative)
            }
            Rule::Tokens { tokens: pat, at } => match_tokens(pat, *at, tokens),
            Rule::Fixed(v) => Some((None, v.to_string())),
        }
    }
}

/// std::regex_search: group 1 (empty at the end when it took no part) removed; the value is
/// group 2 when the regex has one, else group 1.
fn search(re: &regex::Regex, name: &str) -> Option<Found> {
    if re.captures_len() < 2 {
        return None;
    }
    let c = re.captures(name)?;
    let g1 = c.get(1);
    let range = g1.map_or((name.len(), name.len()), |m| (m.start(), m.end()));
    let value = if re.captures_len() > 2 { c.get(2) } else { g1 };
    Some((Some(range), value.map_or("", |m| m.as_str()).to_string()))
}

/// RE2::PartialMatch with two groups: group 1 must be non-empty.
fn re2(re: &regex::Regex, name: &str) -> Option<Found> {
    let c = re.captures(name)?;
    let g1 = c.get(1).filter(|m| !m.is_empty())?;
    let value = c.get(2).filter(|m| !m.is_empty()).unwrap_or(g1);
    Some((Some((g1.start(), g1.end())), value.as_str().to_string()))
}

/// `TagExtractorTokensImpl`: the `$` token is the value; it goes with the dot after it, or
/// the dot before it when it is the last token.
fn match_tokens(pat: &[&str], at: usize, input: &[&str]) -> Option<Found> {
    let (start, i) = search_tokens(pat, at, input, 0, 0, 0)?;
    let value = input[i];
    let end = start + value.len();
    let range = if i + 1 < input.len() {
        (start, end + 1)
    } else {
        (start.saturating_sub(1), end)
    };
    Some((Some(range), value.to_string()))
}

/// The byte offset and index of the token that `$` matched, when the whole input matches.
fn search_tokens(
    pat: &[&str],
    at: usize,
    input: &[&str],
    mut i: usize,
    mut p: usize,
    mut offset: usize,
) -> Option<(usize, usize)> {
    let mut found = None;
    while i < input.len() && p < pat.len() {
        if p == at {
            found = Some((offset, i));
        } else if pat[p] == "**" {
            if p == pat.len() - 1 {
                return found;
            }
            while i < input.len() {
                if let Some(f) = search_tokens(pat, at, input, i, p + 1, offset) {
                    return Some(f);
                }
                offset += input[i].len() + 1;
                i += 1;
            }
            return None;
        } else if pat[p] != "*" && pat[p] != input[i] {
            return None;
        }
        offset += input[i].len() + 1;
        i += 1;
        p += 1;
    }
    if p == pat.len() && i == input.len() {
        found
    } else {
        None
    }
}

/// Envoy's `extractRegexPrefix`: the leading word of a regex anchored with `^` and followed
/// by `\.` (or `(?=\.)`), or ending the regex with `$`; empty when there is none.
fn regex_prefix(regex: &str) -> &str {
    let Some(rest) = regex.strip_prefix('^') else {
        return "";
    };
    let Some(i) = rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_') else {
        return "";
    };
    let after = &rest[i..];
    let dot = after.len() > 1 && (after.starts_with("\\.") || after.starts_with("(?=\\."));
    if i > 0 && (dot || after == "$") {
        &rest[..i]
    } else {
        ""
    }
}

/// The tag extractors of a config: Envoy's defaults (unless `use_all_default_tags: false`)
/// and `stats_tags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagProducer {
    unprefixed: Vec<Extractor>,
    prefixed: HashMap<Box<str>, Vec<Extractor>>,
    names: HashSet<Arc<str>>,
    shared: HashSet<Arc<str>>,
}

impl std::default::Default for TagProducer {
    /// Envoy's default extractors only.
    fn default() -> TagProducer {
        TagProducer::new(true)
    }
}

impl TagProducer {
    /// With Envoy's default extractors, or none.
    pub fn new(use_all_default_tags: bool) -> TagProducer {
        let mut p = TagProducer {
            unprefixed: Vec::new(),
            prefixed: HashMap::new(),
            names: HashSet::new(),
            shared: HashSet::new(),
        };
        if use_all_default_tags {
            DEFAULTS.iter().for_each(|d| p.add_default(d));
        }
        p
    }

    /// Envoy's default extractors for `name` (a tag name with no regex); how many there are.
    pub fn add_defaults_named(&mut self, name: &str) -> usize {
        let found: Vec<&Default> = DEFAULTS.iter().filter(|d| d.name() == name).collect();
        found.iter().for_each(|d| self.add_default(d));
        found.len()
    }

    /// A `stats_tags` regex, as Envoy's std::regex extractor.
    pub fn add_regex(&mut self, name: &str, re: regex::Regex) {
        let prefix = regex_prefix(re.as_str()).to_string();
        self.add(name.into(), &prefix, Rule::Search(Pattern(re)));
    }

    /// A `fixed_value` tag.
    pub fn add_fixed(&mut self, name: &str, value: &str) {
        let prefix = regex_prefix(value).to_string();
        self.add(name.into(), &prefix, Rule::Fixed(value.into()));
    }

    fn add_default(&mut self, d: &Default) {
        match *d {
            Default::Re2 {
                name,
                regex,
                substr,
                negative,
            } => {
                let re = regex::Regex::new(regex).expect("Envoy's default tag regex");
                let rule = Rule::Re2 {
                    re: Pattern(re),
                    substr,
                    negative,
                };
                self.add(name.into(), regex_prefix(regex), rule);
            }
            Default::Tokens { name, pattern } => {
                let tokens: Vec<&'static str> = pattern.split('.').collect();
                let at = tokens.iter().position(|t| *t == "$").unwrap_or(0);
                let prefix = match tokens[0] {
                    "$" | "*" | "**" => "",
                    first => first,
                };
                self.add(name.into(), prefix, Rule::Tokens { tokens, at });
            }
        }
    }

    fn add(&mut self, name: Arc<str>, prefix: &str, rule: Rule) {
        if !self.names.insert(name.clone()) {
            self.shared.insert(name.clone());
        }
        let e = Extractor { name, rule };
        if prefix.is_empty() {
            self.unprefixed.push(e);
        } else {
            self.prefixed.entry(prefix.into()).or_default().push(e);
        }
    }

    /// The tag-extracted name and the tags of a stat name.
    pub fn produce(&self, name: &str) -> (String, Vec<Tag>) {
        let tokens: Vec<&str> = name.split('.').collect();
        let mut tags = Vec::new();
        let mut removed = Vec::new();
        let mut done: Vec<&str> = Vec::new();
        let by_prefix = name
            .split_once('.')
            .and_then(|(first, _)| self.prefixed.get(first));
        for e in self
            .unprefixed
            .iter()
            .chain(by_prefix.into_iter().flatten())
        {
            let shared = self.shared.contains(&e.name);
            if shared && done.contains(&&*e.name) {
                continue;
            }
            let Some((range, value)) = e.extract(name, &tokens) else {
                continue;
            };
            removed.extend(range);
            if shared {
                done.push(&e.name);
            }
            tags.push(Tag {
                name: e.name.clone(),
                value,
            });
        }
        (remove(name, &removed), tags)
    }
}

/// `name` less the byte ranges, with the empty tokens that leaves dropped.
fn remove(name: &str, ranges: &[(usize, usize)]) -> String {
    let kept: String = name
        .char_indices()
        .filter(|(i, _)| !ranges.iter().any(|&(s, e)| (s..e).contains(i)))
        .map(|(_, c)| c)
        .collect();
    kept.split('.')
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(p: &TagProducer, name: &str) -> (String, Vec<(String, String)>) {
        let (n, t) = p.produce(name);
        let t = t
            .into_iter()
            .map(|t| (t.name.to_string(), t.value))
            .collect();
        (n, t)
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_compile_and_follow_envoy_1_40() {
        let p = TagProducer::default();
        // Checked against Envoy 1.40's /stats/prometheus.
        assert_eq!(
            tags(&p, "tcp.a.b.downstream_cx_total"),
            (
                "tcp.b.downstream_cx_total".into(),
                pairs(&[("envoy.tcp_prefix", "a")])
            )
        );
        assert_eq!(
            tags(&p, "listener.127.0.0.1_10000.worker_1.downstream_cx_total"),
            (
                "listener.worker_downstream_cx_total".into(),
                pairs(&[
                    ("envoy.worker_id", "1"),
                    ("envoy.listener_address", "127.0.0.1_10000")
                ])
            )
        );
        assert_eq!(
            tags(&p, "server.worker_0.watchdog_miss"),
            (
                "server.worker_watchdog_miss".into(),
                pairs(&[("envoy.worker_id", "0")])
            )
        );
        assert_eq!(
            tags(&p, "listener.admin.downstream_cx_total"),
            ("listener.admin.downstream_cx_total".into(), vec![])
        );
        assert_eq!(
            tags(&p, "listener.[__1]_80.downstream_cx_active").1,
            pairs(&[("envoy.listener_address", "[__1]_80")])
        );
        assert_eq!(
            tags(&p, "connection_limit.cl.active_connections").1,
            pairs(&[("envoy.connection_limit_prefix", "cl")])
        );
        assert_eq!(
            tags(&p, "cluster.a.b.upstream_cx_total"),
            (
                "cluster.b.upstream_cx_total".into(),
                pairs(&[("envoy.cluster_name", "a")])
            )
        );
        assert_eq!(
            tags(&p, "cluster.echo.udp.sess_tx_datagrams"),
            (
                "cluster.udp.sess_tx_datagrams".into(),
                pairs(&[("envoy.cluster_name", "echo")])
            )
        );
        assert_eq!(
            tags(&p, "udp.dns.downstream_sess_total"),
            (
                "udp.downstream_sess_total".into(),
                pairs(&[("envoy.udp_prefix", "dns")])
            )
        );
        assert_eq!(tags(&p, "server.live"), ("server.live".into(), vec![]));
        assert_eq!(tags(&p, "tcp.x"), ("tcp.x".into(), vec![]));
    }

    #[test]
    fn custom_tags_fixed_and_removal_together() {
        let mut p = TagProducer::default();
        p.add_regex(
            "custom_tail",
            regex::Regex::new(r"\.(upstream_cx_(\w+))$").unwrap(),
        );
        p.add_fixed("env", "prod");
        // As Envoy 1.40: `cluster.c.x.upstream_cx_total` is `envoy_cluster_x` with
        // custom_tail, env and envoy.cluster_name, in that order.
        assert_eq!(
            tags(&p, "cluster.c.x.upstream_cx_total"),
            (
                "cluster.x".into(),
                pairs(&[
                    ("custom_tail", "total"),
                    ("env", "prod"),
                    ("envoy.cluster_name", "c")
                ])
            )
        );
    }

    #[test]
    fn only_custom_without_defaults_and_first_of_a_name_wins() {
        let mut p = TagProducer::new(false);
        assert_eq!(p.add_defaults_named("envoy.cluster_name"), 1);
        assert_eq!(p.add_defaults_named("nope"), 0);
        p.add_regex("k", regex::Regex::new(r"^tcp\.((\w+)\.)").unwrap());
        p.add_regex("k", regex::Regex::new(r"(cx)").unwrap());
        assert_eq!(
            tags(&p, "tcp.l4.downstream_cx_total"),
            ("tcp.l4.downstream__total".into(), pairs(&[("k", "cx")]))
        );
        assert_eq!(
            tags(&p, "cluster.echo.upstream_rq"),
            (
                "cluster.upstream_rq".into(),
                pairs(&[("envoy.cluster_name", "echo")])
            )
        );
        // No group: no tag. A group that takes no part: an empty value, nothing removed.
        let mut p = TagProducer::new(false);
        p.add_regex("none", regex::Regex::new(r"server").unwrap());
        p.add_regex("opt", regex::Regex::new(r"^server\.(x)?").unwrap());
        assert_eq!(
            tags(&p, "server.live"),
            ("server.live".into(), pairs(&[("opt", "")]))
        );
    }

    #[test]
    fn prefix_tokens_as_envoy() {
        assert_eq!(regex_prefix(r"^cluster\.((.+?)\.)"), "cluster");
        assert_eq!(regex_prefix(r"^http(?=\.).*?"), "http");
        assert_eq!(regex_prefix(r"^server$"), "server");
        assert_eq!(regex_prefix(r"^(?:a|b)\."), "");
        assert_eq!(regex_prefix(r"\.(x)"), "");
        assert_eq!(regex_prefix("prod"), "");
    }
}
