//! Confidence intervals of success rates: what a campaign's few repetitions allow one to say.

/// A 95 % confidence interval of a proportion.
#[derive(
    Debug, Clone, Copy, PartialEq, poem_openapi::Object, serde::Serialize, serde::Deserialize,
)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The Wilson score interval at 95 % of `successes` out of `n`; `None` when `n` is 0. Unlike the normal
/// approximation it stays within [0, 1] and says something at 0 or `n` successes of a few runs.
pub fn wilson(successes: i64, n: i64) -> Option<Interval> {
    if n <= 0 {
        return None;
    }
    const Z: f64 = 1.959_963_984_540_054;
    let (s, n) = (successes as f64, n as f64);
    let p = s / n;
    let z2 = Z * Z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some(Interval {
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against published values (Wilson 1927; e.g. Newcombe 1998, table I: 81/263 → 0.2553–0.3662).
    #[test]
    fn wilson_intervals() {
        let close = |i: Interval, low: f64, high: f64| {
            assert!(
                (i.low - low).abs() < 5e-4 && (i.high - high).abs() < 5e-4,
                "{i:?}"
            );
        };
        close(wilson(81, 263).unwrap(), 0.2553, 0.3662);
        close(wilson(3, 4).unwrap(), 0.3006, 0.9544);
        close(wilson(0, 5).unwrap(), 0.0, 0.4345);
        close(wilson(5, 5).unwrap(), 0.5655, 1.0);
        assert_eq!(wilson(0, 0), None);
    }
}
