//! Configuration: the one place wsfan reads its environment, once, at start-up, into typed
//! structs.
//!
//! Each piece of configuration implements [`FromEnv`]: the variables it reads ([`Var`]) and how.
//! Each Lambda names the pieces it loads as one type (its crate's `Config`, a tuple of them), so
//! the variables a function reads follow from that type: tests/template.rs checks the template
//! against them, and [`recorded_reads`] holds every reader to the variables it declares. Readers
//! take a lookup function, so tests feed them a map instead of the process environment.
//!
//! Not here: what the platform reads (the SDK's `AWS_*`, `RUST_LOG` and Lambda's log level in
//! `telemetry`), which no template sets for a function.

use std::collections::BTreeSet;

mod access;
mod fanout;
mod table;

pub use access::{AuthConfig, KeySource};
pub use fanout::{
    BroadcastConfig, CoalesceWindow, ConnectionsEndpoint, DeliveryDeadLetterUrl, DeliveryQueueUrl, FailureQueueUrl,
    DEFAULT_COALESCE_MS,
};
pub use table::{Retention, StoreConfig, DEFAULT_DYNAMODB_TIMEOUT_MS};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {why}")]
    Invalid { name: &'static str, why: String },
}

/// One environment variable, as a piece of configuration reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Var {
    pub name: &'static str,
    /// The function does not start without it (the template must set it).
    pub required: bool,
    /// A value its reader accepts; [`recorded_reads`] loads every variable with it.
    pub example: &'static str,
}

impl Var {
    pub const fn required(name: &'static str, example: &'static str) -> Var {
        Var {
            name,
            required: true,
            example,
        }
    }

    pub const fn optional(name: &'static str, example: &'static str) -> Var {
        Var {
            name,
            required: false,
            example,
        }
    }
}

/// A piece of configuration read from the environment.
pub trait FromEnv: Sized {
    /// Every variable [`FromEnv::from_lookup`] reads; [`recorded_reads`] tests that it is.
    fn vars() -> Vec<Var>;

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError>;

    fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name: &str| std::env::var(name).ok())
    }
}

/// A Lambda's configuration is the pieces it loads, read in order; its variables are theirs.
macro_rules! from_env_for_tuples {
    ($(($($piece:ident),+)),+) => {$(
        impl<$($piece: FromEnv),+> FromEnv for ($($piece,)+) {
            fn vars() -> Vec<Var> {
                let mut vars = Vec::new();
                $(vars.extend($piece::vars());)+
                vars
            }

            fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
                Ok(($($piece::from_lookup(&lookup)?,)+))
            }
        }
    )+};
}

from_env_for_tuples!((A, B), (A, B, C), (A, B, C, D), (A, B, C, D, E));

/// What a reader asked for, against what it declares.
#[derive(Debug)]
pub struct RecordedReads {
    /// Names of [`FromEnv::vars`].
    pub declared: BTreeSet<String>,
    /// Names `from_lookup` asked for, with every variable set to its example and with none set.
    pub asked: BTreeSet<String>,
    /// The load with every variable at its example.
    pub loaded: Result<(), ConfigError>,
}

/// Runs `T`'s reader twice, once with every declared variable at its example and once with none,
/// and records each name it asks for. A read added without its [`Var`] shows up in `asked` and
/// not in `declared`.
pub fn recorded_reads<T: FromEnv>() -> RecordedReads {
    let vars = T::vars();
    let asked = std::sync::Mutex::new(BTreeSet::new());
    let record = |name: &str, answer: Option<&Var>| {
        asked.lock().unwrap().insert(name.to_owned());
        answer.map(|v| v.example.to_owned())
    };
    let loaded = T::from_lookup(|name: &str| record(name, vars.iter().find(|v| v.name == name))).map(drop);
    let _ = T::from_lookup(|name: &str| record(name, None));
    RecordedReads {
        declared: vars.iter().map(|v| v.name.to_owned()).collect(),
        asked: asked.into_inner().unwrap(),
        loaded,
    }
}

fn required(lookup: &impl Fn(&str) -> Option<String>, var: Var) -> Result<String, ConfigError> {
    lookup(var.name)
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(var.name))
}

fn optional(lookup: &impl Fn(&str) -> Option<String>, var: Var) -> Option<String> {
    lookup(var.name).filter(|v| !v.trim().is_empty())
}

fn seconds(lookup: &impl Fn(&str) -> Option<String>, var: Var, default: i64) -> Result<i64, ConfigError> {
    match optional(lookup, var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::Invalid {
                name: var.name,
                why: format!("{v:?} is not a positive number of seconds"),
            }),
    }
}

/// Milliseconds within `range` (inclusive), or `default` when unset.
fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    var: Var,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<std::time::Duration, ConfigError> {
    let ms = match optional(lookup, var) {
        None => default,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| ConfigError::Invalid {
                name: var.name,
                why: match *range.end() {
                    u64::MAX => format!("{v:?} is not a number of milliseconds of at least {}", range.start()),
                    end => format!("{v:?} is not a number of milliseconds from {} to {end}", range.start()),
                },
            })?,
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// A whole number within `range`, or `None` when unset.
fn whole_number(
    lookup: &impl Fn(&str) -> Option<String>,
    var: Var,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    optional(lookup, var)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    name: var.name,
                    why: match (*range.start(), *range.end()) {
                        (1, u64::MAX) => format!("{v:?} is not a positive whole number"),
                        (start, end) => format!("{v:?} is not a whole number from {start} to {end}"),
                    },
                })
        })
        .transpose()
}

fn list(value: Option<String>) -> Option<Vec<String>> {
    value.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Loads the AWS SDK configuration; each main does it once and builds its clients from it.
/// `AWS_ENDPOINT_URL` points it at a local emulator.
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

#[cfg(test)]
mod tests;
