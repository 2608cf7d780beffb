//! wsfan's local stack (`wsfan dev`, `wsfan invoke`): the whole pipeline on one machine through
//! the real Lambda binaries. SAM cannot emulate WebSocket APIs or DynamoDB Streams locally, and
//! `sam local` needs Docker; this needs neither.
//!
//! - [`moto`]: DynamoDB, Streams and SQS from a moto server in the project's venv.
//! - [`template`]: what `sam/template.yaml` deploys: functions, routes, event sources, queues;
//!   [`template::document`] is the one reader of its YAML, which tests/template.rs checks with too.
//! - [`runtime`]: an emulated Lambda Runtime API per function, running the real binaries.
//! - [`gateway`]: the API Gateway WebSocket endpoint (authorizer, routes, limits).
//! - [`connections`]: the `@connections` Management API, delivering to the real sockets;
//!   [`per_second`]: what it answered in each second.
//! - [`faults`]: what `wsfan dev --inject` makes `@connections` and DynamoDB answer.
//! - [`dynamo_proxy`]: the functions' DynamoDB calls, through the injected DynamoDB faults.
//! - [`sources`]: stream and SQS records as Lambda delivers them; the stack's event source
//!   mappings (batches, lanes, retries, destinations, visibility, redrive) poll them.
//! - [`dev`]: `wsfan dev` and `wsfan invoke`, assembled from the modules above and private ones:
//!   the AWS side, the event source mappings, the schedules and the demo page.
//! - [`options`]: the stack's command-line options, for `wsfan` and `wsfan-bench`.

pub mod children;
pub mod connections;
mod demo;
pub mod dev;
pub mod dynamo_proxy;
mod environment;
mod event_sources;
pub mod faults;
pub mod gateway;
pub mod logs;
pub mod moto;
pub mod options;
pub mod per_second;
pub mod runtime;
mod schedules;
pub mod sources;
pub mod template;
