//! Envoy's rules for a `google.protobuf.Duration`: the proto3 JSON text form and the range
//! Envoy accepts. A leaf: the walker (`config`) checks every duration of a config by it, and
//! `convert` keeps the conversion total by the same rule and message.

/// Most seconds of any duration in a config, as Envoy checks every `google.protobuf.Duration`
/// of its config (strict duration validation, permanent since Envoy 1.34): seconds plus a
/// whole second of nanoseconds must fit an int64 of nanoseconds. About 292 years.
pub(crate) const MAX_DURATION_SECONDS: i64 = (i64::MAX - 999_999_999) / 1_000_000_000;

/// Envoy's rule for every duration of a config, whether Switchyard reads the field or not:
/// not negative ("Expected positive duration") and at most [`MAX_DURATION_SECONDS`]
/// ("Duration out-of-range"). Field rules (`connect_timeout` greater than 0, ...) are
/// checked where the field is read.
pub(crate) fn check_duration(seconds: i64, nanos: i32) -> Result<(), String> {
    let shown = if nanos == 0 {
        format!("{seconds}s")
    } else {
        format!("{seconds}s {nanos}ns")
    };
    if seconds < 0 || nanos < 0 {
        return Err(format!(
            "Expected positive duration: {shown} (a duration must not be negative)"
        ));
    }
    if seconds > MAX_DURATION_SECONDS || nanos > 999_999_999 {
        return Err(format!(
            "Duration out-of-range: {shown} (at most {MAX_DURATION_SECONDS}s, about 292 \
             years, as Envoy accepts)"
        ));
    }
    Ok(())
}

/// Parses a proto3 JSON duration: optional `-`, seconds, optional fraction of up to nine
/// digits, then `s` (`"1.5s"`, `"0s"`, `"-2s"`). Returns (seconds, nanos) with the same sign.
pub(crate) fn parse_duration(text: &str) -> Option<(i64, i32)> {
    let body = text.strip_suffix('s')?;
    let (negative, body) = match body.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, body),
    };
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (body.contains('.') && frac.is_empty())
    {
        return None;
    }
    // Range is checked by `check_duration`, with Envoy's message.
    let secs: i64 = secs.parse().ok()?;
    let nanos: i32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(if negative {
        (-secs, -nanos)
    } else {
        (secs, nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_envoy_range() {
        assert_eq!(check_duration(0, 0), Ok(()));
        assert_eq!(check_duration(9_223_372_035, 999_999_999), Ok(()));
        for (s, n) in [
            (9_223_372_036, 0),
            (315_576_000_000, 0),
            (i64::MAX, 999_999_999),
            (1, 1_000_000_000),
            (0, i32::MAX),
        ] {
            let e = check_duration(s, n).unwrap_err();
            assert!(e.starts_with("Duration out-of-range"), "{s} {n}: {e}");
        }
        for (s, n) in [(-1, 0), (0, -1), (i64::MIN, 0), (-2, -250_000_000)] {
            let e = check_duration(s, n).unwrap_err();
            assert!(e.starts_with("Expected positive duration"), "{s} {n}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s"), Some((1, 500_000_000)));
        assert_eq!(parse_duration("0s"), Some((0, 0)));
        assert_eq!(parse_duration("3600s"), Some((3600, 0)));
        assert_eq!(parse_duration("0.000000001s"), Some((0, 1)));
        assert_eq!(parse_duration("-2.25s"), Some((-2, -250_000_000)));
        assert_eq!(
            parse_duration("315576000001s"),
            Some((315_576_000_001, 0)),
            "parsed, then refused by check_duration"
        );
        for bad in [
            "1.5",
            "1m",
            "s",
            ".5s",
            "1.s",
            "1.0000000001s",
            "abc",
            "1 s",
            "+1s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
