//! What a function's labels ask of the autoscaler, and the capacity rule itself.
//!
//! The labels are OpenFaaS' own, so a function deployed for OpenFaaS keeps its meaning here, and
//! a remote provider's functions are read the same way as the embedded provider's.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::duration::parse_duration;
use crate::function::FunctionRef;

/// `true`: the function's replicas are stopped after `zero-duration` without a request.
pub const LABEL_SCALE_ZERO: &str = "com.openfaas.scale.zero";
/// How long without a request before a scale to zero, as a Go duration (`15m`).
pub const LABEL_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
/// `capacity`: replicas follow the requests in flight.
pub const LABEL_SCALE_TYPE: &str = "com.openfaas.scale.type";
/// Requests in flight one replica is meant to carry.
pub const LABEL_TARGET: &str = "com.openfaas.scale.target";
/// Share of the target aimed at, leaving headroom for bursts.
pub const LABEL_TARGET_PROPORTION: &str = "com.openfaas.scale.target-proportion";
/// How long without a request before the function's replicas are parked (frozen, kept warm),
/// as a Go duration (`30s`); defrost's own, read only by providers that can park.
pub const LABEL_PARK_AFTER: &str = "com.defrost.park-after";

pub const DEFAULT_ZERO_DURATION: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_TARGET: f64 = 50.0;
pub const DEFAULT_TARGET_PROPORTION: f64 = 0.9;

/// The autoscaling a function asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Idle time after which its replicas are stopped; `None`: never.
    pub zero_after: Option<Duration>,
    /// Idle time after which its replicas are parked; `None`: never.
    pub park_after: Option<Duration>,
    pub capacity: Option<Capacity>,
}

/// Capacity mode: enough replicas that each carries `target × proportion` requests in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub target: f64,
    pub proportion: f64,
}

impl Capacity {
    /// No more per replica than the `limit` of calls one replica takes at once (0: none): the
    /// target stays a soft aim, but a replica cannot be counted on for calls it will not take,
    /// so a line waiting for slots scales the function up.
    pub fn within(self, limit: usize) -> Capacity {
        if limit == 0 || (limit as f64) >= self.target * self.proportion {
            return self;
        }
        Capacity {
            target: limit as f64,
            proportion: 1.0,
        }
    }

    /// `ceil(in_flight / (target × proportion))`, clamped to `[max(min, 1), max]`.
    pub fn desired(&self, in_flight: usize, min: u64, max: u64) -> u64 {
        let per_replica = (self.target * self.proportion).max(f64::MIN_POSITIVE);
        let wanted = (in_flight as f64 / per_replica).ceil();
        let wanted = if wanted >= u64::MAX as f64 {
            u64::MAX
        } else {
            wanted as u64
        };
        let floor = min.max(1);
        wanted.clamp(floor, max.max(floor))
    }
}

impl Policy {
    /// Reads the labels; a value that does not parse is warned about and its default used, as
    /// the OpenFaaS gateway does, so that one typo does not take a function down.
    pub fn from_labels(function: &FunctionRef, labels: &BTreeMap<String, String>) -> Policy {
        let zero = labels
            .get(LABEL_SCALE_ZERO)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let zero_after = zero.then(|| {
            read(
                function,
                labels,
                LABEL_ZERO_DURATION,
                DEFAULT_ZERO_DURATION,
                |v| parse_duration(v).ok(),
            )
        });
        let park_after = labels.get(LABEL_PARK_AFTER).and_then(|v| {
            let parsed = parse_duration(v).ok().filter(|d| !d.is_zero());
            if parsed.is_none() {
                log::warn!("{function}: label {LABEL_PARK_AFTER}={v:?} is not usable; not parking");
            }
            parsed
        });
        let capacity = labels
            .get(LABEL_SCALE_TYPE)
            .is_some_and(|v| v.trim() == "capacity")
            .then(|| Capacity {
                target: read(function, labels, LABEL_TARGET, DEFAULT_TARGET, positive),
                proportion: read(
                    function,
                    labels,
                    LABEL_TARGET_PROPORTION,
                    DEFAULT_TARGET_PROPORTION,
                    |v| positive(v).filter(|p| *p <= 1.0),
                ),
            });
        Policy {
            zero_after,
            park_after,
            capacity,
        }
    }
}

/// The labels a `[[function]]` entry's `scale_to_zero` and `zero_duration` stand for.
pub fn zero_labels(scale_to_zero: bool, zero_duration: Option<Duration>) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    if scale_to_zero {
        labels.push((LABEL_SCALE_ZERO.to_owned(), "true".to_owned()));
    }
    if let Some(d) = zero_duration {
        labels.push((
            LABEL_ZERO_DURATION.to_owned(),
            format!("{}ms", d.as_millis()),
        ));
    }
    labels
}

/// The label a `[[function]]` entry's `park_after` stands for.
pub fn park_labels(park_after: Option<Duration>) -> Vec<(String, String)> {
    park_after
        .map(|d| (LABEL_PARK_AFTER.to_owned(), format!("{}ms", d.as_millis())))
        .into_iter()
        .collect()
}

fn positive(v: &str) -> Option<f64> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
}

fn read<T: std::fmt::Debug>(
    function: &FunctionRef,
    labels: &BTreeMap<String, String>,
    label: &str,
    default: T,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    match labels.get(label) {
        None => default,
        Some(v) => parse(v).unwrap_or_else(|| {
            log::warn!("{function}: label {label}={v:?} is not usable; using {default:?}");
            default
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> Policy {
        let labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policy::from_labels(&FunctionRef::new("f", "default").unwrap(), &labels)
    }

    #[test]
    fn nothing_is_asked_without_labels() {
        assert_eq!(
            policy(&[]),
            Policy {
                zero_after: None,
                park_after: None,
                capacity: None
            }
        );
    }

    #[test]
    fn park_after_is_read_and_a_bad_one_parks_nothing() {
        let p = policy(&[(LABEL_PARK_AFTER, "30s")]);
        assert_eq!(p.park_after, Some(Duration::from_secs(30)));
        assert_eq!(policy(&[(LABEL_PARK_AFTER, "soon")]).park_after, None);
        assert_eq!(policy(&[(LABEL_PARK_AFTER, "0s")]).park_after, None);
        let labels = park_labels(Some(Duration::from_millis(1500)));
        assert_eq!(
            policy(&[(LABEL_PARK_AFTER, &labels[0].1)]).park_after,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn scale_to_zero_defaults_to_fifteen_minutes() {
        assert_eq!(
            policy(&[(LABEL_SCALE_ZERO, "true")]).zero_after,
            Some(DEFAULT_ZERO_DURATION)
        );
        assert_eq!(
            policy(&[(LABEL_SCALE_ZERO, "true"), (LABEL_ZERO_DURATION, "2m")]).zero_after,
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            policy(&[(LABEL_SCALE_ZERO, "true"), (LABEL_ZERO_DURATION, "soon")]).zero_after,
            Some(DEFAULT_ZERO_DURATION)
        );
        assert_eq!(policy(&[(LABEL_ZERO_DURATION, "2m")]).zero_after, None);
    }

    #[test]
    fn config_keys_become_the_labels() {
        let labels: BTreeMap<String, String> = zero_labels(true, Some(Duration::from_millis(1500)))
            .into_iter()
            .collect();
        let f = FunctionRef::new("f", "default").unwrap();
        assert_eq!(
            Policy::from_labels(&f, &labels).zero_after,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn capacity_reads_target_and_proportion_with_defaults() {
        let c = policy(&[(LABEL_SCALE_TYPE, "capacity")]).capacity.unwrap();
        assert_eq!((c.target, c.proportion), (50.0, 0.9));
        let c = policy(&[
            (LABEL_SCALE_TYPE, "capacity"),
            (LABEL_TARGET, "4"),
            (LABEL_TARGET_PROPORTION, "1.5"),
        ])
        .capacity
        .unwrap();
        assert_eq!((c.target, c.proportion), (4.0, 0.9));
        assert_eq!(policy(&[(LABEL_SCALE_TYPE, "rps")]).capacity, None);
    }

    #[test]
    fn desired_is_ceil_of_in_flight_over_target_share_clamped() {
        let c = Capacity {
            target: 50.0,
            proportion: 0.9,
        };
        assert_eq!(c.desired(0, 1, 20), 1);
        assert_eq!(c.desired(45, 1, 20), 1);
        assert_eq!(c.desired(46, 1, 20), 2);
        assert_eq!(c.desired(100, 1, 20), 3);
        assert_eq!(c.desired(10_000, 1, 20), 20);
        assert_eq!(c.desired(0, 3, 20), 3);
        assert_eq!(c.desired(0, 0, 20), 1);
    }

    #[test]
    fn a_concurrency_limit_caps_what_a_replica_is_counted_to_carry() {
        let c = Capacity {
            target: 50.0,
            proportion: 0.9,
        };
        assert_eq!(c.within(0), c);
        assert_eq!(c.within(100), c);
        assert_eq!(c.within(1).desired(10, 1, 20), 10);
        assert_eq!(c.within(4).desired(10, 1, 20), 3);
    }
}
