//! Latency histograms and the percentile summary that reports carry.
//!
//! Values are recorded in nanoseconds (1 ns to 100 s, 3 significant digits, so any percentile is
//! within 0.1% of the true value) and reported in microseconds. Each worker thread records into
//! its own [`LatencyHistogram`]; the run merges them at the end, so recording takes no lock.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency a histogram records exactly; larger values are clamped to it.
pub const LATENCY_MAX_NS: u64 = 100_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram covering 1 ns to [`LATENCY_MAX_NS`].
    pub fn new() -> LatencyHistogram {
        let hist = Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        LatencyHistogram { hist }
    }

    /// Records one latency; 0 counts as 1 ns and values above the range are clamped.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both histograms have the same bounds, so adding cannot fail; saturate if it ever does.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `quantile` (0.0..=1.0) in nanoseconds; 0 when empty.
    pub fn quantile_ns(&self, quantile: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(quantile)
        }
    }

    /// The percentile summary in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: (self.hist.mean()).round() / 1000.0,
            p50_us: us(self.quantile_ns(0.50)),
            p90_us: us(self.quantile_ns(0.90)),
            p99_us: us(self.quantile_ns(0.99)),
            p999_us: us(self.quantile_ns(0.999)),
            max_us: us(self.hist.max()),
        }
    }
}

/// Latency percentiles in microseconds, as reports and JSON carry them (`latency_us`).
///
/// Each value is the histogram's representative value for its bucket: within 0.1% of the exact
/// value. All fields are 0 when nothing was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    /// One table row: `p50 12.9  p90 ...` in µs.
    pub fn row(&self) -> String {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, n={})",
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us,
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.001 + 1e-9
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(LatencyHistogram::new().summary(), LatencySummary::default());
    }

    #[test]
    fn percentiles_of_uniform_1_to_10000_us() {
        let mut h = LatencyHistogram::new();
        for us in 1..=10_000u64 {
            h.record_ns(us * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert!(close(s.min_us, 1.0), "{s:?}");
        assert!(close(s.p50_us, 5000.0), "{s:?}");
        assert!(close(s.p90_us, 9000.0), "{s:?}");
        assert!(close(s.p99_us, 9900.0), "{s:?}");
        assert!(close(s.p999_us, 9990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
        assert!(close(s.mean_us, 5000.5), "{s:?}");
    }

    #[test]
    fn tail_is_a_single_outlier() {
        let mut h = LatencyHistogram::new();
        for _ in 0..999 {
            h.record_ns(10_000);
        }
        h.record_ns(5_000_000);
        let s = h.summary();
        assert!(close(s.p99_us, 10.0), "{s:?}");
        assert!(close(s.p999_us, 10.0), "{s:?}");
        assert!(close(s.max_us, 5000.0), "{s:?}");
    }

    #[test]
    fn merge_equals_recording_into_one() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        let mut all = LatencyHistogram::new();
        for v in 1..=500u64 {
            a.record_ns(v * 997);
            all.record_ns(v * 997);
        }
        for v in 1..=300u64 {
            b.record_ns(v * 5003);
            all.record_ns(v * 5003);
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut h = LatencyHistogram::new();
        h.record_ns(0);
        h.record_ns(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(h.summary().max_us >= LATENCY_MAX_NS as f64 / 1000.0 * 0.999);
    }
}
