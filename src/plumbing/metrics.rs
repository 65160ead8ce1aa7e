//! The metrics registry: each part of nodeguard registers its own families in one
//! [`Registry`], which `/metrics` encodes as OpenMetrics text.

use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// Latency buckets, in seconds: the request path aims for well under a millisecond, and
/// anything near a second is already a problem for the kubelet's 10 s budget.
const DURATION_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A latency histogram over [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A count as a gauge's value, saturating.
pub fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The OpenMetrics text exposition of every family in `registry`.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}
