//! The one SDK client every post goes through, made lean: our signer with the day's key, our
//! HTTP/1.1 client, no SDK retries, and none of the per-request work a post does not need.

use aws_sdk_apigatewaymanagement::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::Client;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::{disable_interceptor, Intercept};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use super::BroadcastConfig;

/// The client for `config`'s endpoint over `http`. The SDK's own retries are off: the
/// broadcaster retries, so it can count retries and honour one deadline per recipient.
pub(super) fn sdk_client(
    sdk: &aws_config::SdkConfig,
    config: &BroadcastConfig,
    http: impl aws_smithy_runtime_api::client::http::HttpClient + 'static,
) -> Client {
    let mut builder = aws_sdk_apigatewaymanagement::config::Builder::from(sdk);
    // Sign with the day's key instead of deriving it for every post (crate::sigv4). Without a
    // region the SDK's own signer stays, and reports the missing region itself.
    if let Some(region) = sdk.region() {
        builder = builder
            .push_auth_scheme(crate::sigv4::CachedKeySigV4::new(region.as_ref()))
            .auth_scheme_resolver(crate::sigv4::PostAuthResolver);
    }
    let client_config = builder
        .interceptor(LeanPosts)
        .http_client(http)
        .endpoint_url(&config.endpoint)
        // The broadcaster retries by itself, and the HTTP client keeps a connection only
        // when the server keeps it alive. Left on, the SDK's connection poisoning logs an
        // ERROR on every 5xx, because our client has no connection for it to poison.
        .retry_config(
            aws_sdk_apigatewaymanagement::config::retry::RetryConfig::disabled()
                .with_reconnect_mode(aws_sdk_apigatewaymanagement::config::retry::ReconnectMode::ReuseAllConnections),
        )
        // Bodies are at most 128 KB and every attempt has a timeout, so the per-request
        // throughput timer of stalled-stream protection only costs CPU here.
        .stalled_stream_protection(aws_sdk_apigatewaymanagement::config::StalledStreamProtectionConfig::disabled())
        .timeout_config(
            aws_sdk_apigatewaymanagement::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(config.attempt_timeout)
                .build(),
        )
        .build();
    Client::from_conf(client_config)
}

/// Turns off SDK work that a post does not need and that costs CPU on every one of them: the
/// user-agent strings the SDK formats per request (a fixed one is sent instead), the invocation
/// id and attempt headers (this broadcaster retries by itself, with the SDK's retries off), and
/// clock-skew tracking (the signer reads the clock itself).
#[derive(Debug)]
struct LeanPosts;

pub(super) const USER_AGENT: &str = concat!("wsfan/", env!("CARGO_PKG_VERSION"));

impl Intercept for LeanPosts {
    fn name(&self) -> &'static str {
        "wsfan::LeanPosts"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let why = "not needed for @connections posts";
        let state = cfg.interceptor_state();
        state.store_put(disable_interceptor::<aws_runtime::user_agent::UserAgentInterceptor>(
            why,
        ));
        state.store_put(disable_interceptor::<aws_runtime::invocation_id::InvocationIdInterceptor>(why));
        state.store_put(disable_interceptor::<aws_runtime::request_info::RequestInfoInterceptor>(why));
        state.store_put(disable_interceptor::<
            aws_runtime::service_clock_skew::ServiceClockSkewInterceptor,
        >(why));
        Ok(())
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context.request_mut().headers_mut().insert("user-agent", USER_AGENT);
        Ok(())
    }
}

pub(super) type PostError = SdkError<PostToConnectionError, aws_sdk_apigatewaymanagement::config::http::HttpResponse>;

pub(super) fn describe(err: &PostError) -> String {
    let status = err
        .raw_response()
        .map(|r| format!("HTTP {} ", r.status().as_u16()))
        .unwrap_or_default();
    match err.code() {
        Some(code) => format!("{status}{code}: {}", err.message().unwrap_or("")),
        None => format!(
            "{status}{}",
            aws_sdk_apigatewaymanagement::error::DisplayErrorContext(err)
        ),
    }
}
