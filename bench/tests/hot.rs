//! `wsfan-bench hot`'s short form, in CI: 10 members of one channel, 2 of them sending 5
//! messages a second for 3 s, through `wsfan dev` with the template's defaults. It fails when a
//! delivery goes missing, an invocation times out, a second exceeds FanoutMaxRps, or a batch
//! frame reaches a member that did not ask for one; and a run that loses deliveries must fail.

mod run;

use std::process::Output;

use serde_json::Value;

fn bench_hot(options: &[&str]) -> (Output, String, Value) {
    let mut args = vec![
        "hot",
        "--members",
        "10",
        "--senders",
        "2",
        "--rate",
        "5",
        "--seconds",
        "3",
    ];
    args.extend_from_slice(options);
    let run = run::wsfan_bench(&args);
    (run.out, run.text, run.result)
}

#[test]
fn a_busy_channel_delivers_everything_within_the_budget_and_plain_members_get_single_frames() {
    // Three of the ten members connect without batch=1.
    let (out, text, result) = bench_hot(&["--mixed", "0.3", "--drain-secs", "60"]);
    assert!(out.status.success(), "{text}");
    assert_eq!(result["messages"], 15, "{text}");
    assert_eq!(result["sends"]["acked"], 15, "{text}");
    let deliveries = &result["deliveries"];
    assert_eq!(deliveries["expected"], 150, "{text}");
    assert_eq!(deliveries["delivered"], 150, "{text}");
    assert_eq!(deliveries["missing"], 0, "{text}");
    assert_eq!(result["invocations"]["timedOut"], serde_json::json!({}), "{text}");
    assert!(
        result["deliveryMs"]["p99"].as_f64().is_some_and(|ms| ms > 0.0),
        "{text}"
    );

    // The plain members: one frame per post, every one of their 15 messages.
    let plain = &result["postsPerFrame"]["plain"];
    assert_eq!(plain["members"], 3, "{text}");
    assert_eq!(plain["unaskedBatches"], 0, "{text}");
    assert_eq!(plain["posts"], plain["frames"], "{text}");
    assert!(plain["frames"].as_u64().is_some_and(|f| f >= 45), "{text}");
    assert_eq!(result["postsPerFrame"]["batching"]["members"], 7, "{text}");

    // The budget was read per second from @connections, and each second's posts are there.
    let budget = &result["budget"];
    let template = wsfan_local::template::Template::load(&harness::repo_root().join("sam/template.yaml")).unwrap();
    let max_rps: u64 = template.parameter_defaults["FanoutMaxRps"].parse().unwrap();
    assert_eq!(budget["fanoutMaxRps"], max_rps, "{text}");
    assert_eq!(budget["secondsOver"], 0, "{text}");
    let per_second_posts: u64 = budget["perSecond"]
        .as_array()
        .expect("perSecond")
        .iter()
        .map(|s| s[1].as_u64().unwrap())
        .sum();
    assert_eq!(per_second_posts, result["connections"]["posts"], "{text}");
    // Every post a member read was counted in some second (batch posts carry several frames).
    let read_posts = plain["posts"].as_u64().unwrap() + result["postsPerFrame"]["batching"]["posts"].as_u64().unwrap();
    assert!(per_second_posts >= read_posts, "{text}");
    assert!(text.contains("budget: @connections posts per second"), "{text}");

    // The cost line counted each of its parts.
    let counts = &result["cost"]["counts"];
    for part in [
        "apigwMessages",
        "lambdaGbSeconds",
        "lambdaRequests",
        "dynamodbWru",
        "dynamodbRru",
    ] {
        assert!(counts[part].as_f64().is_some_and(|n| n > 0.0), "{part}: {text}");
    }
    // Each sendMessage is one transaction at least; none of the cost is made up.
    assert!(
        counts["dynamodbCalls"]["TransactWriteItems"]
            .as_u64()
            .is_some_and(|n| n >= 15),
        "{text}"
    );
    assert!(
        result["cost"]["perMillionDeliveries"].as_f64().is_some_and(|d| d > 0.0),
        "{text}"
    );
    assert!(text.contains("cost: $"), "{text}");
}

#[test]
fn a_run_that_loses_deliveries_fails() {
    // @connections answers 410 to a fifth of the posts: each such member is gone, and every
    // message after that is missing for it.
    let (out, text, result) = bench_hot(&["--inject", "410=0.2", "--inject-seed", "7", "--drain-secs", "10"]);
    assert!(!out.status.success(), "{text}");
    assert!(
        result["deliveries"]["missing"].as_u64().is_some_and(|n| n > 0),
        "{text}"
    );
    assert!(text.contains("deliveries missing"), "{text}");
}
