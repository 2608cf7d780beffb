//! `wsfan invoke`: every fixture in events/ runs through its real binary (emulated Runtime API,
//! a throwaway moto), and the response is what that fixture should produce.

use std::process::Command;

use serde_json::Value;

/// What each fixture must produce: for WebSocket routes the status and, where there is one, the
/// frame's type or error code; for event sources the failed record ids.
fn expectation(function: &str, case: &str) -> &'static str {
    match (function, case) {
        ("ws-authorizer", "valid-token" | "subprotocol-token") => "Allow",
        ("ws-authorizer", _) => "Deny",
        // The token allows workspace:42; the URL names workspace:43.
        ("ws-connect", "connect-without-authorizer" | "connect-forbidden-channel") => "403",
        ("ws-connect", _) | ("ws-disconnect", _) => "200",
        // A throwaway table has no connection item: routes that need one say so.
        // The default channel of a connection that is not there cannot be read either.
        ("ws-message", "join" | "subscribe" | "progress-subscribe" | "legacy-register" | "message-without-action") => {
            "not_connected"
        }
        ("ws-message", "send-message" | "react" | "read" | "typing" | "send-spoofed-connection") => "not_member",
        ("ws-message", "leave") => "left",
        ("ws-message", "history") => "history",
        ("ws-message", "ping") => "pong",
        // The token verifies (dev secret, not revoked); the store then finds no connection.
        ("ws-message", "auth") => "not_connected",
        // Nothing expired in a throwaway table: nothing closed.
        ("expiry-sweep", "scheduled") => "",
        ("ws-message", "bad-json") => "bad_json",
        ("ws-message", "unknown-action") => "unknown_action",
        ("ws-message", "missing-field") => "missing_field",
        ("ws-message", "invalid-channel") => "invalid_channel",
        ("ws-message", "too-large") => "too_large",
        ("ws-message", "forbidden-channel") => "forbidden",
        // The poison record goes to the failure queue at once; nothing is retried.
        ("progress-fanout", "malformed-body") => {
            "9e8d7c6b-0002-4a5b-8c9d-000000000002,9e8d7c6b-0003-4a5b-8c9d-000000000003"
        }
        // A shard that is not one fails alone; the retry beside it is posted (to nobody here).
        ("deliver", "retry-and-malformed") => "7a1b2c3d-0003-4e5f-8a9b-000000000003",
        ("stream-fanout" | "progress-fanout" | "deliver", _) => "",
        _ => panic!("no expectation for {function}/{case}: add one"),
    }
}

fn outcome(function: &str, response: &Value) -> String {
    match function {
        "ws-authorizer" => response["policyDocument"]["Statement"][0]["Effect"]
            .as_str()
            .unwrap_or("?")
            .to_owned(),
        "ws-connect" | "ws-disconnect" => response["statusCode"].to_string(),
        "ws-message" => {
            assert_eq!(response["statusCode"], 200, "errors keep the socket open: {response}");
            let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or("{}")).unwrap();
            match body["type"].as_str() {
                Some("error") => body["code"].as_str().unwrap_or("?").to_owned(),
                Some(t) => t.to_owned(),
                None => "no body".to_owned(),
            }
        }
        "expiry-sweep" => {
            assert_eq!(
                (&response["skipped"], &response["failed"]),
                (&Value::from(0), &Value::from(0)),
                "{response}"
            );
            let closed: Vec<&str> = response["closed"]
                .as_array()
                .expect("a sweep answer")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            closed.join(",")
        }
        _ => {
            let mut ids: Vec<&str> = response["batchItemFailures"]
                .as_array()
                .expect("a batch response")
                .iter()
                .map(|f| f["itemIdentifier"].as_str().unwrap())
                .collect();
            ids.sort();
            ids.join(",")
        }
    }
}

#[test]
fn every_fixture_runs_through_its_binary() {
    let root = harness::repo_root();
    let functions = harness::FUNCTIONS;
    let cases: Vec<(String, String)> = functions
        .iter()
        .flat_map(|f| harness::fixtures_of(f).into_iter().map(|p| (f.to_string(), p)))
        .collect();
    assert!(cases.len() > 30, "fixtures are missing: {cases:?}");
    // A few at a time: each invocation starts its own moto.
    let results: Vec<(String, String, Result<String, String>)> = cases
        .chunks(4)
        .flat_map(|chunk| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(function, path)| {
                        let root = root.clone();
                        scope.spawn(move || {
                            let out = Command::new(env!("CARGO_BIN_EXE_wsfan"))
                                .args(["invoke", function, "--event"])
                                .arg(root.join("events").join(format!("{path}.json")))
                                .arg("--repo")
                                .arg(&root)
                                .output()
                                .expect("running wsfan invoke");
                            let result = if out.status.success() {
                                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                            } else {
                                Err(String::from_utf8_lossy(&out.stderr).into_owned())
                            };
                            (function.clone(), path.clone(), result)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    for (function, path, result) in results {
        let stdout = result.unwrap_or_else(|e| panic!("wsfan invoke {function} --event {path}.json failed: {e}"));
        let response: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {stdout}"));
        let case = path.rsplit('/').next().unwrap();
        assert_eq!(
            outcome(&function, &response),
            expectation(&function, case),
            "{path}: {response}"
        );
    }
}

#[test]
fn an_unknown_function_is_a_clear_error() {
    let root = harness::repo_root();
    let out = Command::new(env!("CARGO_BIN_EXE_wsfan"))
        .args(["invoke", "NoSuchFunction", "--event"])
        .arg(root.join("events/ws-message/ping.json"))
        .arg("--repo")
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WsMessageFunction"),
        "it lists the functions there are: {stderr}"
    );
}
