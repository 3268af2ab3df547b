//! Parsers and ranges of the numeric command-line flags. Each flag's value is checked when the
//! command line is parsed, so a value the process cannot represent (inf, NaN, negative, past
//! the flag's range or past u64) is refused with clap's error, which names the flag, and
//! nothing starts; no conversion later can panic.

use std::time::Duration;

/// Most seconds `--drain-time-s` takes: Envoy's flag is a uint32 of seconds.
pub const MAX_DRAIN_TIME_S: u32 = u32::MAX;
/// Most workers `--concurrency` starts.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Most connection slots per worker (`--max-connections-per-worker`).
pub const MAX_CONNECTIONS_PER_WORKER: u32 = 1 << 20;
/// Most seconds a `demo` measurement lasts (`--duration-s`).
pub const MAX_DEMO_DURATION_S: u64 = 86_400;

/// `--drain-time-s`: a finite, non-negative number of seconds (fractions allowed), at most
/// [`MAX_DRAIN_TIME_S`].
pub fn drain_time(text: &str) -> Result<Duration, String> {
    let s: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if s.is_nan() {
        return Err("NaN is not a number of seconds".into());
    }
    if s < 0.0 {
        return Err(format!("{text} is negative; use 0 to close at once"));
    }
    if s > f64::from(MAX_DRAIN_TIME_S) {
        return Err(format!(
            "{text} is more than {MAX_DRAIN_TIME_S} seconds (Envoy's limit, about 136 years)"
        ));
    }
    // Finite and in range, so this cannot fail; say so if it ever does.
    Duration::try_from_secs_f64(s).map_err(|e| format!("{text}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_time_takes_finite_non_negative_seconds_in_range() {
        assert_eq!(drain_time("0"), Ok(Duration::ZERO));
        assert_eq!(drain_time("-0"), Ok(Duration::ZERO));
        assert_eq!(drain_time("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(drain_time("600"), Ok(Duration::from_secs(600)));
        assert_eq!(drain_time("1e3"), Ok(Duration::from_secs(1000)));
        assert_eq!(
            drain_time("4294967295"),
            Ok(Duration::from_secs(u64::from(u32::MAX)))
        );
        for bad in [
            "inf",
            "-inf",
            "infinity",
            "NaN",
            "nan",
            "-1",
            "-0.001",
            "4294967296",
            "1e19",
            "1e300",
            "18446744073709551616",
            "",
            "5s",
            "0x10",
        ] {
            let e = drain_time(bad).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
    }
}
