//! What `wsfan dev --inject` asks of the local `@connections`: which statuses to answer at which
//! rate, and how much latency to add. Pure: parsing, printing and the draw; the server applies it.
//!
//! The spec is `STATUS=FRACTION` pairs and an optional `latency=DURATION`, comma-separated:
//! `429=0.2,500=0.05,410=0.01,latency=20ms`. Each request draws one number in [0, 1); the
//! statuses share that interval in the order written, so the fractions are exact rates and must
//! add up to at most 1.
//!
//! The same list may ask the functions' DynamoDB calls for what DynamoDB does under load and
//! moto never does (see [`DynamoFaults`]): `ddb-conflict=0.05,ddb-throttle=0.02,ddb-latency=10ms`,
//! and `ddb-stall=0.1` for calls that get no answer at all, as on a saturated table.
//!
//! `upgrade-delay=DURATION` holds every WebSocket upgrade that long after `$connect` returns,
//! and `@connections` answers 410 to that connection meanwhile, as API Gateway does while a
//! handshake is unfinished: the window in which a fanout reads a membership `$connect` wrote and
//! posts too early. It is not drawn: every upgrade is held.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The statuses API Gateway's Management API answers that a fanout must ride out.
pub const INJECTABLE: &[u16] = &[410, 429, 500, 502, 503, 504];

/// The longest latency a spec may ask for: more would only make every post time out.
pub const MAX_LATENCY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// (status, fraction of requests), in the order given; each status at most once.
    rates: Vec<(u16, f64)>,
    latency: Duration,
    /// `upgrade-delay`: how long each upgrade is held after `$connect` returns.
    upgrade_delay: Duration,
    dynamo: DynamoFaults,
}

/// What the functions' DynamoDB calls get instead of moto's answer (`ddb-…` in the spec).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DynamoFaults {
    /// `ddb-conflict`: the fraction of transactions cancelled with `TransactionConflict`.
    pub conflict: f64,
    /// `ddb-throttle`: the fraction of writes throttled.
    pub throttle: f64,
    /// `ddb-lost`: the fraction of writes applied whose answer is lost (a 500 in its place).
    pub lost: f64,
    /// `ddb-stall`: the fraction of calls, reads too, that get no answer until the caller has
    /// given up on them (held [`STALL`], then refused unapplied): what a saturated DynamoDB (or
    /// moto) does, and what only a caller's own timeout and retries ride out.
    pub stall: f64,
    /// `ddb-latency`: added to every call.
    pub latency: Duration,
}

/// How long a stalled call is held: longer than any operation budget (`DYNAMODB_TIMEOUT_MS`).
pub const STALL: Duration = Duration::from_secs(60);

/// What one DynamoDB call drew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DynamoFault {
    /// Cancelled with `TransactionConflict`: nothing written.
    Conflict,
    /// Throttled: nothing written.
    Throttle,
    /// Written, and answered 500 as if the answer were lost.
    Lost,
    /// No answer within any caller's timeout; nothing written.
    Stall,
}

impl DynamoFault {
    pub fn as_str(self) -> &'static str {
        match self {
            DynamoFault::Conflict => "conflict",
            DynamoFault::Throttle => "throttle",
            DynamoFault::Lost => "lost",
            DynamoFault::Stall => "stall",
        }
    }
}

impl DynamoFaults {
    pub fn is_empty(&self) -> bool {
        *self == DynamoFaults::default()
    }

    /// The fault for a call that drew `u` (uniform in [0, 1)); `None`: serve it. Throttles and
    /// lost answers fall on writes; conflicts on transactions only. The shares are taken in the
    /// order throttle, lost, conflict, each an exact rate of the calls it applies to. Stalls
    /// fall on every call, after the writes' shares (so adding them leaves the others' draws).
    pub fn draw(&self, u: f64, write: bool, transaction: bool) -> Option<DynamoFault> {
        let share = |s: f64| if write { s } else { 0.0 };
        let shares = [
            (DynamoFault::Throttle, share(self.throttle)),
            (DynamoFault::Lost, share(self.lost)),
            (
                DynamoFault::Conflict,
                share(if transaction { self.conflict } else { 0.0 }),
            ),
            (DynamoFault::Stall, self.stall),
        ];
        let mut upper = 0.0;
        for (fault, share) in shares {
            upper += share;
            if u < upper {
                return Some(fault);
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    #[error("{0:?} is not STATUS=FRACTION, latency=DURATION or upgrade-delay=DURATION")]
    Shape(String),
    #[error("{0} is not a status that can be injected; use one of 410, 429, 500, 502, 503, 504")]
    Status(String),
    #[error("{status}'s fraction {fraction:?} is not a number from 0 to 1")]
    Fraction { status: u16, fraction: String },
    #[error("{0} is given twice")]
    Twice(String),
    #[error("the fractions add up to {0}, more than 1")]
    Sum(f64),
    #[error("{0:?} is not a duration from 0ms to 10s (like 20ms or 1s)")]
    Latency(String),
    #[error("{0} is not a DynamoDB fault; use ddb-conflict, ddb-throttle, ddb-lost, ddb-stall or ddb-latency")]
    Dynamo(String),
    #[error("{fault}'s fraction {fraction:?} is not a number from 0 to 1")]
    DynamoFraction { fault: String, fraction: String },
}

impl Faults {
    /// Faults at these rates and no latency.
    pub fn new(rates: &[(u16, f64)]) -> Result<Faults, FaultsError> {
        let spec = rates
            .iter()
            .map(|(s, f)| format!("{s}={f}"))
            .collect::<Vec<_>>()
            .join(",");
        spec.parse()
    }

    pub fn rates(&self) -> &[(u16, f64)] {
        &self.rates
    }

    pub fn latency(&self) -> Duration {
        self.latency
    }

    pub fn upgrade_delay(&self) -> Duration {
        self.upgrade_delay
    }

    pub fn dynamo(&self) -> &DynamoFaults {
        &self.dynamo
    }

    /// The status to answer for a request that drew `u` (uniform in [0, 1)); `None`: serve it.
    pub fn draw(&self, u: f64) -> Option<u16> {
        let mut upper = 0.0;
        for &(status, fraction) in &self.rates {
            upper += fraction;
            if u < upper {
                return Some(status);
            }
        }
        None
    }
}

fn parse_latency(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let latency = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return None,
    };
    (latency <= MAX_LATENCY).then_some(latency)
}

impl FromStr for Faults {
    type Err = FaultsError;

    fn from_str(spec: &str) -> Result<Faults, FaultsError> {
        let mut faults = Faults::default();
        let (mut latency, mut upgrade_delay) = (None, None);
        let mut seen = std::collections::HashSet::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| FaultsError::Shape(part.to_owned()))?;
            if name == "latency" || name == "upgrade-delay" {
                let slot = if name == "latency" {
                    &mut latency
                } else {
                    &mut upgrade_delay
                };
                if slot.is_some() {
                    return Err(FaultsError::Twice(name.to_owned()));
                }
                *slot = Some(parse_latency(value).ok_or_else(|| FaultsError::Latency(value.to_owned()))?);
                continue;
            }
            if let Some(fault) = name.strip_prefix("ddb-") {
                if !seen.insert(name.to_owned()) {
                    return Err(FaultsError::Twice(name.to_owned()));
                }
                let d = &mut faults.dynamo;
                let slot = match fault {
                    "latency" => {
                        d.latency = parse_latency(value).ok_or_else(|| FaultsError::Latency(value.to_owned()))?;
                        continue;
                    }
                    "conflict" => &mut d.conflict,
                    "throttle" => &mut d.throttle,
                    "lost" => &mut d.lost,
                    "stall" => &mut d.stall,
                    _ => return Err(FaultsError::Dynamo(name.to_owned())),
                };
                *slot = value
                    .parse::<f64>()
                    .ok()
                    .filter(|f| (0.0..=1.0).contains(f))
                    .ok_or_else(|| FaultsError::DynamoFraction {
                        fault: name.to_owned(),
                        fraction: value.to_owned(),
                    })?;
                continue;
            }
            let status = name
                .parse::<u16>()
                .ok()
                .filter(|s| INJECTABLE.contains(s))
                .ok_or_else(|| FaultsError::Status(name.to_owned()))?;
            let fraction = value
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| FaultsError::Fraction {
                    status,
                    fraction: value.to_owned(),
                })?;
            if faults.rates.iter().any(|(s, _)| *s == status) {
                return Err(FaultsError::Twice(status.to_string()));
            }
            faults.rates.push((status, fraction));
        }
        let sum: f64 = faults.rates.iter().map(|(_, f)| f).sum();
        // Decimal fractions do not add up exactly in binary: 0.7 + 0.2 + 0.1 is 1.0000000000000002.
        if sum > 1.0 + 1e-9 {
            return Err(FaultsError::Sum(sum));
        }
        let d = &faults.dynamo;
        let sum = d.conflict + d.throttle + d.lost + d.stall;
        if sum > 1.0 + 1e-9 {
            return Err(FaultsError::Sum(sum));
        }
        faults.latency = latency.unwrap_or_default();
        faults.upgrade_delay = upgrade_delay.unwrap_or_default();
        Ok(faults)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.rates.iter().map(|(s, r)| format!("{s}={r}")).collect();
        if !self.latency.is_zero() {
            parts.push(format!("latency={}ms", self.latency.as_millis()));
        }
        if !self.upgrade_delay.is_zero() {
            parts.push(format!("upgrade-delay={}ms", self.upgrade_delay.as_millis()));
        }
        let d = &self.dynamo;
        for (name, share) in [
            ("conflict", d.conflict),
            ("throttle", d.throttle),
            ("lost", d.lost),
            ("stall", d.stall),
        ] {
            if share > 0.0 {
                parts.push(format!("ddb-{name}={share}"));
            }
        }
        if !d.latency.is_zero() {
            parts.push(format!("ddb-latency={}ms", d.latency.as_millis()));
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_mix() {
        let f: Faults = "429=0.2,500=0.05,410=0.01,latency=20ms".parse().unwrap();
        assert_eq!(f.rates(), &[(429, 0.2), (500, 0.05), (410, 0.01)]);
        assert_eq!(f.latency(), Duration::from_millis(20));
        assert_eq!(f.to_string(), "429=0.2,500=0.05,410=0.01,latency=20ms");
        let f: Faults = " 503 = 1 , latency=1s".parse().unwrap();
        assert_eq!((f.rates(), f.latency()), (&[(503, 1.0)][..], Duration::from_secs(1)));
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
    }

    #[test]
    fn parses_dynamodb_faults_beside_the_connections_ones() {
        let f: Faults = "429=0.1,ddb-conflict=0.05,ddb-throttle=0.02,ddb-latency=10ms"
            .parse()
            .unwrap();
        assert_eq!(f.rates(), &[(429, 0.1)]);
        assert_eq!(
            *f.dynamo(),
            DynamoFaults {
                conflict: 0.05,
                throttle: 0.02,
                lost: 0.0,
                stall: 0.0,
                latency: Duration::from_millis(10)
            }
        );
        assert_eq!(
            f.to_string(),
            "429=0.1,ddb-conflict=0.05,ddb-throttle=0.02,ddb-latency=10ms"
        );
        assert_eq!(f.to_string().parse::<Faults>().unwrap(), f);
        assert!(Faults::default().dynamo().is_empty());
        for (spec, error) in [
            ("ddb-oops=0.1", FaultsError::Dynamo("ddb-oops".into())),
            (
                "ddb-conflict=0.1,ddb-conflict=0.2",
                FaultsError::Twice("ddb-conflict".into()),
            ),
            (
                "ddb-throttle=2",
                FaultsError::DynamoFraction {
                    fault: "ddb-throttle".into(),
                    fraction: "2".into(),
                },
            ),
            ("ddb-latency=11s", FaultsError::Latency("11s".into())),
        ] {
            assert_eq!(spec.parse::<Faults>(), Err(error), "{spec}");
        }
        // The DynamoDB shares add up on their own, apart from @connections'.
        assert!("500=0.9,ddb-conflict=0.9".parse::<Faults>().is_ok());
        assert!(matches!(
            "ddb-conflict=0.6,ddb-lost=0.5".parse::<Faults>(),
            Err(FaultsError::Sum(_))
        ));
    }

    #[test]
    fn parses_an_upgrade_delay_beside_the_other_faults() {
        let f: Faults = "upgrade-delay=300ms".parse().unwrap();
        assert_eq!(f.upgrade_delay(), Duration::from_millis(300));
        assert_eq!((f.rates(), f.latency()), (&[][..], Duration::ZERO));
        assert_eq!(f.to_string(), "upgrade-delay=300ms");
        let f: Faults = "429=0.1,latency=5ms,upgrade-delay=1s".parse().unwrap();
        assert_eq!(f.upgrade_delay(), Duration::from_secs(1));
        assert_eq!(f.to_string(), "429=0.1,latency=5ms,upgrade-delay=1000ms");
        assert_eq!(f.to_string().parse::<Faults>().unwrap(), f);
        assert_eq!(Faults::default().upgrade_delay(), Duration::ZERO);
        for (spec, error) in [
            ("upgrade-delay=300", FaultsError::Latency("300".into())),
            ("upgrade-delay=11s", FaultsError::Latency("11s".into())),
            (
                "upgrade-delay=1ms,upgrade-delay=2ms",
                FaultsError::Twice("upgrade-delay".into()),
            ),
        ] {
            assert_eq!(spec.parse::<Faults>(), Err(error), "{spec}");
        }
    }

    #[test]
    fn dynamodb_faults_fall_on_writes_and_conflicts_on_transactions_only() {
        let d = DynamoFaults {
            conflict: 0.05,
            throttle: 0.02,
            lost: 0.01,
            stall: 0.0,
            latency: Duration::ZERO,
        };
        assert_eq!(d.draw(0.0, false, false), None);
        assert_eq!(d.draw(0.0, true, false), Some(DynamoFault::Throttle));
        assert_eq!(d.draw(0.025, true, true), Some(DynamoFault::Lost));
        assert_eq!(d.draw(0.025, true, false), Some(DynamoFault::Lost));
        assert_eq!(d.draw(0.03, true, true), Some(DynamoFault::Conflict));
        assert_eq!(d.draw(0.079, true, true), Some(DynamoFault::Conflict));
        assert_eq!(d.draw(0.03, true, false), None);
        assert_eq!(d.draw(0.08, true, true), None);
    }

    #[test]
    fn stalls_fall_on_reads_and_writes_after_the_writes_own_shares() {
        let d: DynamoFaults = *"ddb-throttle=0.1,ddb-stall=0.2".parse::<Faults>().unwrap().dynamo();
        assert_eq!(d.stall, 0.2);
        // A write: throttles first, then stalls; a read: stalls only, from 0.
        assert_eq!(d.draw(0.05, true, false), Some(DynamoFault::Throttle));
        assert_eq!(d.draw(0.15, true, false), Some(DynamoFault::Stall));
        assert_eq!(d.draw(0.31, true, false), None);
        assert_eq!(d.draw(0.05, false, false), Some(DynamoFault::Stall));
        assert_eq!(d.draw(0.21, false, false), None);
        assert_eq!(
            "ddb-throttle=0.1,ddb-stall=0.2".parse::<Faults>().unwrap().to_string(),
            "ddb-throttle=0.1,ddb-stall=0.2"
        );
        assert!(matches!(
            "ddb-lost=0.5,ddb-stall=0.6".parse::<Faults>(),
            Err(FaultsError::Sum(_))
        ));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (spec, error) in [
            ("429", FaultsError::Shape("429".into())),
            ("404=0.1", FaultsError::Status("404".into())),
            ("teapot=0.1", FaultsError::Status("teapot".into())),
            (
                "429=1.5",
                FaultsError::Fraction {
                    status: 429,
                    fraction: "1.5".into(),
                },
            ),
            (
                "429=-0.1",
                FaultsError::Fraction {
                    status: 429,
                    fraction: "-0.1".into(),
                },
            ),
            (
                "500=NaN",
                FaultsError::Fraction {
                    status: 500,
                    fraction: "NaN".into(),
                },
            ),
            ("429=0.1,429=0.2", FaultsError::Twice("429".into())),
            ("latency=5ms,latency=6ms", FaultsError::Twice("latency".into())),
            ("latency=20", FaultsError::Latency("20".into())),
            ("latency=11s", FaultsError::Latency("11s".into())),
            ("latency=-1ms", FaultsError::Latency("-1ms".into())),
        ] {
            assert_eq!(spec.parse::<Faults>(), Err(error), "{spec}");
        }
        assert!(matches!("429=0.6,500=0.5".parse::<Faults>(), Err(FaultsError::Sum(_))));
        // Decimal fractions that add up to 1 are accepted despite binary rounding.
        assert!("429=0.7,500=0.2,410=0.1".parse::<Faults>().is_ok());
    }

    #[test]
    fn draws_each_status_over_its_share_in_order() {
        let f: Faults = "429=0.2,500=0.05,410=0.01".parse().unwrap();
        assert_eq!(f.draw(0.0), Some(429));
        assert_eq!(f.draw(0.199), Some(429));
        assert_eq!(f.draw(0.2), Some(500));
        assert_eq!(f.draw(0.249), Some(500));
        assert_eq!(f.draw(0.255), Some(410));
        assert_eq!(f.draw(0.26), None);
        assert_eq!(f.draw(0.999), None);
        assert_eq!(Faults::default().draw(0.0), None);
    }

    fn spec() -> impl Strategy<Value = (Vec<(u16, f64)>, u64)> {
        let rates = proptest::sample::subsequence(INJECTABLE.to_vec(), 0..=INJECTABLE.len())
            .prop_flat_map(|statuses| {
                let n = statuses.len();
                (Just(statuses), proptest::collection::vec(0.0..=1.0f64, n))
            })
            .prop_map(|(statuses, weights)| {
                // Scale so the fractions add up to at most 1.
                let total: f64 = weights.iter().sum::<f64>().max(1.0);
                statuses
                    .into_iter()
                    .zip(weights)
                    .map(|(s, w)| (s, (w / total * 1000.0).floor() / 1000.0))
                    .collect::<Vec<_>>()
            });
        (rates, 0..=10_000u64)
    }

    proptest! {
        #[test]
        fn a_valid_spec_prints_as_it_parses((rates, ms) in spec()) {
            let mut text: Vec<String> = rates.iter().map(|(s, f)| format!("{s}={f}")).collect();
            text.push(format!("latency={ms}ms"));
            let faults: Faults = text.join(",").parse().unwrap();
            prop_assert_eq!(faults.rates(), &rates[..]);
            prop_assert_eq!(faults.latency(), Duration::from_millis(ms));
            prop_assert_eq!(faults.to_string().parse::<Faults>().unwrap(), faults);
        }

        #[test]
        fn a_draw_lands_in_a_status_exactly_as_often_as_its_fraction((rates, _) in spec(), u in 0.0..1.0f64) {
            let faults = Faults::new(&rates).unwrap();
            let mut lower = 0.0;
            let mut expected = None;
            for &(status, fraction) in &rates {
                if u >= lower && u < lower + fraction {
                    expected = Some(status);
                    break;
                }
                lower += fraction;
            }
            prop_assert_eq!(faults.draw(u), expected);
        }

        #[test]
        fn fractions_outside_0_to_1_or_adding_past_1_are_refused(status in proptest::sample::select(INJECTABLE), f in 1.0001..100.0f64, g in 0.0..1.0f64) {
            let (over, under) = (format!("{status}={f}"), format!("{status}=-{f}"));
            prop_assert!(over.parse::<Faults>().is_err(), "{}", over);
            prop_assert!(under.parse::<Faults>().is_err(), "{}", under);
            let other = INJECTABLE.iter().find(|s| **s != status).unwrap();
            let past_one = format!("{status}={g},{other}={}", 1.0 - g + 0.001);
            prop_assert!(past_one.parse::<Faults>().is_err(), "{}", past_one);
        }
    }
}
