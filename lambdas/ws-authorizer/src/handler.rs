//! The `$connect` REQUEST authorizer: the token from `Sec-WebSocket-Protocol: wsfan.v1,
//! bearer.<token>` (or, for older clients, `?token=`), Allow with the caller's identity in the
//! context, or Deny. It never fails: an error here would reach the client as a 500. It never logs
//! the token.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = (wsfan_shared::config::StoreConfig, wsfan_shared::config::AuthConfig);

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use serde_json::Value;
use wsfan_shared::access::{Identity, MAX_CONTEXT_BYTES};
use wsfan_shared::subprotocol;

pub type Response = ApiGatewayCustomAuthorizerResponse<Value>;

// The verifier, and the one that also asks the revocation list, are shared with ws-message's
// `auth` action, which must refuse a token exactly as `$connect` does.
pub use wsfan_shared::revocation::{RevocationChecked, TokenVerifier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Identity),
    Deny(String),
}

pub async fn decide<V: TokenVerifier>(verifier: &V, token: Option<&str>) -> Decision {
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let identity = match token {
        Some(token) => match verifier.verify(token).await {
            Ok(identity) => identity,
            Err(e) => return Decision::Deny(e.to_string()),
        },
        None => match verifier.anonymous_channels() {
            Some(channels) => Identity::anonymous(channels.to_vec()),
            None => return Decision::Deny("no token, and anonymous listeners are not allowed".into()),
        },
    };
    let context_bytes = serde_json::to_vec(&identity.to_context())
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if context_bytes > MAX_CONTEXT_BYTES {
        return Decision::Deny(format!(
            "the token's channels make a {context_bytes}-byte authorizer context; API Gateway allows {MAX_CONTEXT_BYTES}"
        ));
    }
    Decision::Allow(identity)
}

pub fn respond(decision: &Decision, method_arn: &str) -> Response {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_owned()];
    statement.resource = vec![method_arn.to_owned()];
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".to_owned());
    let mut response = Response::default();
    match decision {
        Decision::Allow(identity) => {
            statement.effect = IamPolicyEffect::Allow;
            response.principal_id = Some(identity.sender_id().to_owned());
            response.context = Value::Object(identity.to_context().into_iter().collect());
        }
        Decision::Deny(_) => {
            statement.effect = IamPolicyEffect::Deny;
            response.principal_id = Some("denied".to_owned());
            response.context = Value::Object(Default::default());
        }
    }
    policy.statement = vec![statement];
    response.policy_document = policy;
    response
}

/// Where the token comes from: the subprotocol offer, else `?token=`. A malformed offer is a
/// Deny (and `$connect` would refuse it too), never a fall back to the URL.
pub fn token_of(event: &ApiGatewayCustomAuthorizerRequestTypeRequest) -> Result<Option<String>, String> {
    let offered: Vec<&str> = event
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !offered.is_empty() {
        let header = offered.join(",");
        let offer = subprotocol::parse(&header).map_err(|e| e.to_string())?;
        if let Some(token) = offer.token {
            return Ok(Some(token.to_owned()));
        }
    }
    Ok(event.query_string_parameters.first("token").map(str::to_owned))
}

pub async fn handle<V: TokenVerifier>(verifier: &V, event: ApiGatewayCustomAuthorizerRequestTypeRequest) -> Response {
    let method_arn = event.method_arn.as_deref().unwrap_or("*");
    let decision = match token_of(&event) {
        Ok(token) => decide(verifier, token.as_deref()).await,
        Err(reason) => Decision::Deny(reason),
    };
    let batch = wsfan_shared::connect::batch_requested(event.query_string_parameters.first("batch"));
    match &decision {
        Decision::Allow(identity) => tracing::info!(
            user = identity.sender_id(),
            role = %identity.role,
            channels = identity.channels.len(),
            "allow"
        ),
        Decision::Deny(reason) => tracing::warn!(%reason, "deny"),
    }
    let mut response = respond(&decision, method_arn);
    if let (Decision::Allow(_), Value::Object(context), true) = (&decision, &mut response.context, batch) {
        context.insert(wsfan_shared::connect::BATCH_CONTEXT.to_owned(), Value::Bool(true));
    }
    response
}
