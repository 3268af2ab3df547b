//! `StringMatcher`, in both its packages (`xds.type.matcher.v3` for the matching API,
//! `envoy.type.matcher.v3` for `stats_matcher`): one conversion, Envoy's checks.
//!
//! `prefix`, `suffix` and `contains` must not be empty; `safe_regex.regex` must not be empty
//! and must compile in the `regex` crate (RE2's syntax, Envoy's engine); it matches the whole
//! string, as Envoy's `FullMatch`; `ignore_case` with `safe_regex` is refused, as Envoy does.

use super::Result;
use crate::error::ConfigError;
use crate::path::field;
use crate::stats_config::{NameMatch, Pattern};
use switchyard_dataplane::fib::chain_matcher::{StringMatch, StringMatchKind as K};

/// A `StringMatcher`'s `match_pattern`, whichever package it came from.
pub(super) enum Parts<'a> {
    /// `exact`, `prefix`, `suffix`, `contains`: the kind, the field name, the pattern.
    Plain(K, &'static str, &'a str),
    /// `safe_regex.regex`.
    Regex(&'a str),
    /// `custom`.
    Custom,
    /// No pattern.
    Missing,
}

/// The [`Parts`] of a `match_pattern` oneof (`$kind` is the package's `MatchPattern`).
macro_rules! string_matcher_parts {
    ($pattern:expr, $kind:ident) => {{
        use switchyard_dataplane::fib::chain_matcher::StringMatchKind as K;
        use $crate::convert::string_matcher::Parts as P;
        match $pattern {
            Some($kind::Exact(s)) => P::Plain(K::Exact, "exact", s.as_str()),
            Some($kind::Prefix(s)) => P::Plain(K::Prefix, "prefix", s.as_str()),
            Some($kind::Suffix(s)) => P::Plain(K::Suffix, "suffix", s.as_str()),
            Some($kind::Contains(s)) => P::Plain(K::Contains, "contains", s.as_str()),
            Some($kind::SafeRegex(r)) => P::Regex(r.regex.as_str()),
            Some($kind::Custom(_)) => P::Custom,
            None => P::Missing,
        }
    }};
}
pub(super) use string_matcher_parts;

/// The matcher at `path`.
pub(super) fn string_matcher(parts: Parts<'_>, ignore_case: bool, path: &str) -> Result<NameMatch> {
    let (kind, name, pattern) = match parts {
        Parts::Plain(kind, name, pattern) => (kind, name, pattern),
        Parts::Regex(re) => return safe_regex(re, ignore_case, path).map(NameMatch::Regex),
        Parts::Custom => {
            return Err(ConfigError::unsupported(
                field(path, "custom"),
                "not supported by Switchyard",
            ))
        }
        Parts::Missing => {
            return Err(ConfigError::invalid(
                path,
                "one of exact, prefix, suffix, contains or safe_regex is required",
            ))
        }
    };
    if kind != K::Exact && pattern.is_empty() {
        return Err(ConfigError::invalid(
            field(path, name),
            "must not be empty, as in Envoy",
        ));
    }
    Ok(NameMatch::Plain(StringMatch {
        kind,
        pattern: if ignore_case {
            pattern.to_ascii_lowercase().into()
        } else {
            pattern.into()
        },
        ignore_case,
    }))
}

/// The matcher at `path` where only plain patterns are taken: `safe_regex` is refused by
/// path.
pub(super) fn plain_string_matcher(
    parts: Parts<'_>,
    ignore_case: bool,
    path: &str,
) -> Result<StringMatch> {
    match string_matcher(parts, ignore_case, path)? {
        NameMatch::Plain(p) => Ok(p),
        NameMatch::Regex(_) => Err(ConfigError::unsupported(
            field(path, "safe_regex"),
            "not supported by Switchyard",
        )),
    }
}

fn safe_regex(re: &str, ignore_case: bool, path: &str) -> Result<Pattern> {
    if ignore_case {
        return Err(ConfigError::invalid(
            field(path, "ignore_case"),
            "ignore_case has no effect for safe_regex (Envoy refuses it too)",
        ));
    }
    let at = field(&field(path, "safe_regex"), "regex");
    Ok(Pattern(compile_regex(re, &at, true)?))
}

/// A regex from the config at `path` (anchored at both ends when `whole`), refused with the
/// `regex` crate's reason.
pub(super) fn compile_regex(re: &str, path: &str, whole: bool) -> Result<regex::Regex> {
    if re.is_empty() {
        return Err(ConfigError::invalid(path, "must not be empty, as in Envoy"));
    }
    let compiled = regex::Regex::new(re).map_err(|e| {
        ConfigError::invalid(
            path,
            format!(
                "not a regex Switchyard can run (RE2 syntax, no look-around): {}",
                e.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )
    })?;
    if whole {
        Ok(regex::Regex::new(&format!("^(?:{re})$")).expect("an anchored valid regex"))
    } else {
        Ok(compiled)
    }
}
