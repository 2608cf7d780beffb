use super::*;
use std::collections::HashMap;

fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

#[test]
fn store_config_defaults_and_overrides() {
    let c = StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("EVENT_TTL_SECONDS", "60")])).unwrap();
    assert_eq!(c.table_name, "t");
    assert_eq!(c.retention.event_secs, 60);
    assert_eq!(c.retention.connection_secs, 10_800);
    assert_eq!(
        StoreConfig::from_lookup(lookup(&[])),
        Err(ConfigError::Missing("TABLE_NAME"))
    );
    assert!(StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("MESSAGE_TTL_SECONDS", "-1")])).is_err());
    assert_eq!(c.operation_timeout.as_millis(), 5000);
    let c = StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("DYNAMODB_TIMEOUT_MS", "2500")])).unwrap();
    assert_eq!(c.operation_timeout.as_millis(), 2500);
    assert!(StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("DYNAMODB_TIMEOUT_MS", "0")])).is_err());
}

#[test]
fn the_coalescing_window_defaults_to_a_second_and_a_quarter_and_zero_turns_it_off() {
    let window = |pairs: &[(&str, &str)]| CoalesceWindow::from_lookup(lookup(pairs)).map(|w| w.0);
    assert_eq!(window(&[]).unwrap().as_millis(), 1250);
    assert_eq!(window(&[("FANOUT_COALESCE_MS", "250")]).unwrap().as_millis(), 250);
    assert!(window(&[("FANOUT_COALESCE_MS", "0")]).unwrap().is_zero());
    assert!(window(&[("FANOUT_COALESCE_MS", "-1")]).is_err());
    assert!(window(&[("FANOUT_COALESCE_MS", "60000")]).is_err());
}

#[test]
fn auth_config_needs_exactly_one_key_source() {
    let c = AuthConfig::from_lookup(lookup(&[("JWT_SECRET", "s"), ("ANONYMOUS_CHANNELS", "doc:*")])).unwrap();
    assert_eq!(c.keys, KeySource::Secret("s".into()));
    assert_eq!(c.anonymous_channels.unwrap().len(), 1);
    assert!(AuthConfig::from_lookup(lookup(&[])).is_err());
    assert!(AuthConfig::from_lookup(lookup(&[("JWT_SECRET", "s"), ("JWKS_URL", "http://x")])).is_err());
    let c = AuthConfig::from_lookup(lookup(&[("JWKS_URL", "http://x"), ("JWT_AUDIENCE", "a, b")])).unwrap();
    assert_eq!(c.audience, Some(vec!["a".to_owned(), "b".to_owned()]));
    assert!(c.anonymous_channels.is_none());
    assert!(AuthConfig::from_lookup(lookup(&[("JWT_SECRET", "s"), ("ANONYMOUS_CHANNELS", "bad")])).is_err());
}

#[test]
fn broadcast_config_reads_endpoint_and_limits() {
    let vars = |k: &str| match k {
        "CONNECTIONS_ENDPOINT" => Some("http://127.0.0.1:3001/prod/".to_owned()),
        "FANOUT_CONCURRENCY" => Some("8".to_owned()),
        "FANOUT_DEADLINE_MS" => Some("1500".to_owned()),
        "FANOUT_MAX_RPS" => Some("5000".to_owned()),
        _ => None,
    };
    let c = BroadcastConfig::from_lookup(vars).unwrap();
    assert_eq!(c.endpoint, "http://127.0.0.1:3001/prod");
    assert_eq!(c.concurrency, 8);
    assert_eq!(c.deadline, std::time::Duration::from_millis(1500));
    assert_eq!(c.max_rps, Some(5000));
    assert!(BroadcastConfig::from_lookup(|_| None).is_err());
    assert!(BroadcastConfig::from_lookup(|k| (k == "CONNECTIONS_ENDPOINT")
        .then(|| "x".to_owned())
        .or_else(|| (k == "FANOUT_CONCURRENCY").then(|| "0".to_owned())))
    .is_err());
}

#[test]
fn the_rate_limit_reads_its_two_variables_and_zero_turns_it_off() {
    let limit = |pairs: &[(&str, &str)]| crate::rate::RateLimit::from_lookup(lookup(pairs));
    assert_eq!(limit(&[]).unwrap(), crate::rate::RateLimit::default());
    let l = limit(&[("RATE_LIMIT_PER_SECOND", "0"), ("RATE_LIMIT_BURST", "7")]).unwrap();
    assert_eq!((l.per_second, l.burst), (0, 7));
    assert!(limit(&[("RATE_LIMIT_BURST", "0")]).is_err());
    assert!(limit(&[("RATE_LIMIT_PER_SECOND", "1000001")]).is_err());
}

/// Every reader asks for exactly the variables it declares, and loads from their examples.
fn assert_reads_exactly<T: FromEnv>() {
    let reads = recorded_reads::<T>();
    assert_eq!(reads.asked, reads.declared, "{}", std::any::type_name::<T>());
    assert_eq!(
        reads.loaded,
        Ok(()),
        "{}: the examples load",
        std::any::type_name::<T>()
    );
}

#[test]
fn every_reader_reads_exactly_the_variables_it_declares() {
    assert_reads_exactly::<StoreConfig>();
    assert_reads_exactly::<AuthConfig>();
    assert_reads_exactly::<crate::rate::RateLimit>();
    assert_reads_exactly::<BroadcastConfig>();
    assert_reads_exactly::<ConnectionsEndpoint>();
    assert_reads_exactly::<CoalesceWindow>();
    assert_reads_exactly::<FailureQueueUrl>();
    assert_reads_exactly::<DeliveryQueueUrl>();
    assert_reads_exactly::<DeliveryDeadLetterUrl>();
    assert_reads_exactly::<(StoreConfig, AuthConfig, crate::rate::RateLimit)>();
}

/// A reader that reads one variable more than it declares.
struct ReadsAnUndeclaredVariable;

impl FromEnv for ReadsAnUndeclaredVariable {
    fn vars() -> Vec<Var> {
        StoreConfig::vars()
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        StoreConfig::from_lookup(&lookup)?;
        let _ = lookup("TABLE_REGION");
        Ok(ReadsAnUndeclaredVariable)
    }
}

#[test]
fn a_read_that_is_not_declared_is_recorded() {
    let reads = recorded_reads::<(ReadsAnUndeclaredVariable, CoalesceWindow)>();
    assert!(reads.asked.contains("TABLE_REGION"));
    assert!(!reads.declared.contains("TABLE_REGION"));
    assert!(reads.declared.contains("FANOUT_COALESCE_MS"));
}

#[test]
fn a_bad_number_says_what_its_variable_takes() {
    let invalid = |err: ConfigError| match err {
        ConfigError::Invalid { name, why } => format!("{name}: {why}"),
        other => panic!("{other}"),
    };
    let broadcast = BroadcastConfig::from_lookup(lookup(&[("CONNECTIONS_ENDPOINT", "x"), ("FANOUT_MAX_RPS", "0")]));
    assert_eq!(
        invalid(broadcast.unwrap_err()),
        "FANOUT_MAX_RPS: \"0\" is not a positive whole number"
    );
    let limit = crate::rate::RateLimit::from_lookup(lookup(&[("RATE_LIMIT_BURST", "0")]));
    assert_eq!(
        invalid(limit.unwrap_err()),
        "RATE_LIMIT_BURST: \"0\" is not a whole number from 1 to 1000000"
    );
}
