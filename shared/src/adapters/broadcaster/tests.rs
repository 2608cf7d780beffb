use std::time::Duration;

use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use super::client::USER_AGENT;
use super::post::sleep_bound;
use super::*;

#[test]
fn a_governed_429_waits_briefly_while_5xx_and_ungoverned_429s_back_off_in_full() {
    let long = Duration::from_secs(2);
    assert_eq!(sleep_bound(long, true, true), THROTTLED_MAX_BACKOFF);
    assert_eq!(
        sleep_bound(Duration::from_millis(50), true, true),
        Duration::from_millis(50)
    );
    assert_eq!(sleep_bound(long, false, true), long);
    assert_eq!(sleep_bound(long, true, false), long);
}

#[test]
fn callback_endpoint_survives_custom_domains() {
    assert_eq!(
        callback_endpoint("abc.execute-api.eu-west-1.amazonaws.com", "prod", "abc", "eu-west-1"),
        "https://abc.execute-api.eu-west-1.amazonaws.com/prod"
    );
    assert_eq!(
        callback_endpoint("chat.example.com", "prod", "abc", "eu-west-1"),
        "https://abc.execute-api.eu-west-1.amazonaws.com/prod"
    );
}

/// An HTTP client that keeps each request it is given, and answers the statuses it was
/// given in order, then 200.
#[derive(Debug, Clone, Default)]
struct Capture {
    requests: std::sync::Arc<std::sync::Mutex<Vec<aws_smithy_runtime_api::client::orchestrator::HttpRequest>>>,
    statuses: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
}

impl Capture {
    fn answering(statuses: &[u16]) -> Capture {
        let capture = Capture::default();
        capture.statuses.lock().unwrap().extend(statuses);
        capture
    }
}

impl aws_smithy_runtime_api::client::http::HttpConnector for Capture {
    fn call(
        &self,
        request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        self.requests.lock().unwrap().push(request);
        let status = self.statuses.lock().unwrap().pop_front().unwrap_or(200);
        let answer = aws_smithy_runtime_api::client::orchestrator::HttpResponse::new(
            status.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::empty(),
        );
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Ok(answer))
    }
}

impl aws_smithy_runtime_api::client::http::HttpClient for Capture {
    fn http_connector(
        &self,
        _settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(self.clone())
    }
}

/// A broadcaster for API Gateway in eu-west-1 whose posts go to `http`.
fn broadcaster_over(http: Capture) -> Broadcaster<NoCleanup> {
    let sdk = aws_config::SdkConfig::builder()
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new("AKID", "secret", None, None, "test"),
        ))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    Broadcaster::with_http_client(
        &sdk,
        BroadcastConfig::new("https://abc.execute-api.eu-west-1.amazonaws.com/prod"),
        NoCleanup,
        http,
    )
}

struct NoCleanup;

impl GoneCleanup for NoCleanup {
    async fn connection_gone(&self, _connection_id: &str) -> Gone {
        Gone::Removed
    }
}

#[tokio::test]
async fn a_post_carries_only_what_api_gateway_needs() {
    let capture = Capture::default();
    let broadcaster = broadcaster_over(capture.clone());
    let report = broadcaster
        .deliver(vec!["L0SM9cOFvHcCIhw=".into()], b"hello")
        .await
        .unwrap();
    assert_eq!(report.counters.delivered, 1);
    let requests = capture.requests.lock().unwrap();
    let headers = requests[0].headers();
    assert_eq!(
        requests[0].uri(),
        "https://abc.execute-api.eu-west-1.amazonaws.com/prod/@connections/L0SM9cOFvHcCIhw%3D"
    );
    assert_eq!(headers.get("user-agent"), Some(USER_AGENT));
    let authorization = headers.get("authorization").expect("signed");
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKID/")
            && authorization.contains("/eu-west-1/execute-api/aws4_request"),
        "{authorization}"
    );
    for dropped in ["x-amz-user-agent", "amz-sdk-invocation-id", "amz-sdk-request"] {
        assert_eq!(headers.get(dropped), None, "{dropped}");
    }
    assert_eq!(requests[0].body().bytes(), Some(&b"hello"[..]));
}

/// Log lines, kept for the test to read.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_retried_5xx_logs_no_error() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let broadcaster = broadcaster_over(Capture::answering(&[500]));
    let report = broadcaster
        .deliver(vec!["L0SM9cOFvHcCIhw=".into()], b"hello")
        .await
        .unwrap();
    assert_eq!((report.counters.retried, report.counters.delivered), (1, 1));
    let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        !logged.contains("ERROR"),
        "a 5xx that was retried is not an error: {logged}"
    );
}

#[test]
fn emf_is_one_document_with_every_counter() {
    let c = Counters {
        delivered: 3,
        gone: 1,
        retried: 2,
        throttled: 1,
        failed: 0,
        posts: 6,
        paced_ms: 40,
        backoffs: 1,
    };
    let v: serde_json::Value = serde_json::from_str(&c.emf("stream-fanout")).unwrap();
    assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "wsfan");
    assert_eq!(v["Delivered"], 3);
    assert_eq!(v["Gone"], 1);
    assert_eq!(v["Retried"], 2);
    assert_eq!(v["Throttled"], 1);
    assert_eq!(v["Failed"], 0);
    assert_eq!(v["Posts"], 6);
    assert_eq!(v["PacedMs"], 40);
    assert_eq!(v["Backoffs"], 1);
    assert_eq!(v["Function"], "stream-fanout");
}
