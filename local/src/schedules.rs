//! The template's scheduled functions (the expiry sweep), run as EventBridge runs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::dev::{DevConfig, DevError};
use crate::environment::Environment;
use crate::logs::{Logs, Outcome};
use crate::moto::LOCAL_REGION;
use crate::runtime::LambdaFunction;

/// Runs the template's scheduled functions (the expiry sweep), as EventBridge does.
pub(crate) fn spawn_schedules(
    environment: &Environment,
    functions: &HashMap<String, Arc<LambdaFunction>>,
    config: &DevConfig,
    logs: &Logs,
) -> Result<(), DevError> {
    for schedule in &environment.template.schedules {
        let function = functions.get(&schedule.binary).cloned().ok_or_else(|| {
            DevError::Setup(format!(
                "the template schedules {}, which is not a function",
                schedule.binary
            ))
        })?;
        let every = config.schedule_every.unwrap_or(schedule.every);
        tokio::spawn(scheduler(function, every, logs.clone()));
    }
    Ok(())
}

/// Invokes a scheduled function every `every`, as EventBridge does, with a scheduled event. One
/// run at a time: a slow run delays the next rather than overlapping it.
async fn scheduler(function: Arc<LambdaFunction>, every: Duration, logs: Logs) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let event = json!({
            "version": "0",
            "id": ulid::Ulid::generate().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "region": LOCAL_REGION,
            "resources": [],
            "detail": {},
        });
        let started = Instant::now();
        match function.invoke(&event).await {
            // Quiet when a sweep closed nothing (every minute, or every second in tests), as the
            // pollers are when idle.
            Ok(answer) if answer["closed"].as_array().is_some_and(Vec::is_empty) && answer["failed"] == 0 => {}
            Ok(answer) => logs.invocation(
                function.name(),
                "schedule",
                started.elapsed(),
                Outcome::Ok(&answer.to_string()),
            ),
            Err(e) => logs.invocation(
                function.name(),
                "schedule",
                started.elapsed(),
                Outcome::Failed(&e.to_string()),
            ),
        }
    }
}
