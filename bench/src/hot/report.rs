//! `bench hot`'s report of what the members counted: the sends' answers, every delivery and its
//! time, and the posts per frame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::drive::Window;
use super::member::Member;
use super::TAG;
use crate::figures::{ms, percentile};

/// Every send acked, or refused (an error frame), or unanswered.
pub(crate) fn report_sends(all: &[(usize, Member)], messages: usize, failures: &mut Vec<String>) -> Value {
    let acked: usize = all.iter().map(|(_, m)| m.acks.len()).sum();
    let refused: Vec<&(String, String)> = all
        .iter()
        .flat_map(|(_, m)| m.refused.iter())
        .filter(|(c, _)| c.starts_with(TAG))
        .collect();
    let unanswered = messages.saturating_sub(acked + refused.len());
    println!(
        "sends: {acked} acked, {} refused, {unanswered} unanswered",
        refused.len()
    );
    for (c, e) in refused.iter().take(5) {
        println!("  refused {c}: {e}");
    }
    if !refused.is_empty() || unanswered > 0 {
        failures.push(format!("{} sends refused, {unanswered} unanswered", refused.len()));
    }
    json!({"acked": acked, "refused": refused.len(), "unanswered": unanswered})
}

/// Deliveries per member by `messageId`, the time from send to read, and the backlog.
pub(crate) fn report_deliveries(
    all: &[(usize, Member)],
    window: &Window,
    sent_at: &HashMap<String, Instant>,
    drain_secs: u64,
    failures: &mut Vec<String>,
) -> Value {
    let messages = window.messages;
    // A frame without its clientMsgId is matched to its send through the sender's ack.
    let client_msg_of: HashMap<&str, &str> = all
        .iter()
        .flat_map(|(_, m)| m.acks.iter().map(|(c, id)| (id.as_str(), c.as_str())))
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    let (mut delivered, mut missing, mut duplicated, mut short) = (0usize, 0usize, 0usize, 0usize);
    let mut worst_p99 = Duration::ZERO;
    let mut per_member = Vec::new();
    for (index, m) in all {
        let got = Received::by(m, messages, &client_msg_of, sent_at);
        let p99 = percentile(&got.latencies, 99.0);
        worst_p99 = worst_p99.max(p99);
        short += usize::from(got.lacking > 0);
        delivered += got.delivered;
        missing += got.lacking;
        duplicated += got.duplicated;
        per_member.push(json!({
            "member": index, "batch": m.asked_for_batches, "delivered": got.delivered, "missing": got.lacking,
            "duplicated": got.duplicated, "p50Ms": ms(percentile(&got.latencies, 50.0)), "p99Ms": ms(p99),
            "posts": m.posts, "frames": m.frames, "batchPosts": m.batch_posts, "unaskedBatches": m.unasked_batches,
        }));
        latencies.extend(got.latencies);
    }
    latencies.sort();
    let expected = messages * all.len();
    println!(
        "deliveries: {delivered} of {expected} ({messages} messages x {} members), {missing} missing ({short} members short), {duplicated} duplicated",
        all.len()
    );
    let max = latencies.last().copied().unwrap_or_default();
    println!(
        "send to delivery ({} deliveries): p50 {} ms, p99 {} ms, max {} ms; the worst member's p99 {} ms",
        latencies.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(max),
        ms(worst_p99)
    );
    print_worst_members(&per_member);
    let peak = print_backlog(window, drain_secs);
    if missing > 0 {
        failures.push(format!("{missing} deliveries missing"));
    }
    json!({
        "deliveries": {"expected": expected, "delivered": delivered, "missing": missing, "duplicated": duplicated, "membersShort": short},
        "deliveryMs": {
            "p50": ms(percentile(&latencies, 50.0)),
            "p99": ms(percentile(&latencies, 99.0)),
            "max": ms(max),
            "worstMemberP99": ms(worst_p99),
        },
        "backlog": {"peak": peak.1, "peakAtSeconds": peak.0, "drainedSecondsAfterLastSend": window.drained.map(|d| d.as_secs_f64())},
        "perMember": per_member,
    })
}

/// What one member got of the bench's `messages`.
struct Received {
    /// Distinct messages (at most `messages`).
    delivered: usize,
    lacking: usize,
    duplicated: usize,
    /// From each send to the member's first read of it, sorted.
    latencies: Vec<Duration>,
}

impl Received {
    /// Counts a member's messages by id (by `clientMsgId` when a frame has no id): the first read
    /// is the delivery, later ones duplicates.
    fn by(
        m: &Member,
        messages: usize,
        client_msg_of: &HashMap<&str, &str>,
        sent_at: &HashMap<String, Instant>,
    ) -> Received {
        let mut first: HashMap<&str, Instant> = HashMap::new();
        let mut mine = Vec::new();
        let mut dup = 0usize;
        for (id, client_msg_id, at) in &m.messages {
            let key = if id.is_empty() {
                client_msg_id.as_str()
            } else {
                id.as_str()
            };
            if first.insert(key, *at).is_some() {
                dup += 1;
                continue;
            }
            let client_msg_id = Some(client_msg_id.as_str())
                .filter(|c| !c.is_empty())
                .or_else(|| client_msg_of.get(id.as_str()).copied());
            if let Some(sent) = client_msg_id.and_then(|c| sent_at.get(c)) {
                mine.push(at.saturating_duration_since(*sent));
            }
        }
        mine.sort();
        let got = first.len().min(messages);
        Received {
            delivered: got,
            lacking: messages - got,
            duplicated: dup,
            latencies: mine,
        }
    }
}

/// The five members that missed or duplicated the most.
fn print_worst_members(per_member: &[Value]) {
    let mut worst: Vec<&Value> = per_member
        .iter()
        .filter(|m| m["missing"] != 0 || m["duplicated"] != 0)
        .collect();
    worst
        .sort_by_key(|m| std::cmp::Reverse(m["missing"].as_u64().unwrap_or(0) + m["duplicated"].as_u64().unwrap_or(0)));
    for m in worst.iter().take(5) {
        println!(
            "  member {}: {} delivered, {} missing, {} duplicated, p99 {} ms",
            m["member"], m["delivered"], m["missing"], m["duplicated"], m["p99Ms"]
        );
    }
}

/// The backlog's peak, (seconds into the window, deliveries due and not yet read), and how long
/// the last ones took.
fn print_backlog(window: &Window, drain_secs: u64) -> (f64, u64) {
    let peak = window
        .backlog
        .iter()
        .copied()
        .max_by_key(|(_, b)| *b)
        .unwrap_or_default();
    match window.drained {
        Some(d) => println!(
            "backlog: at most {} deliveries due and not yet read ({:.0} s in); all read {:.1} s after the last send",
            peak.1,
            peak.0,
            d.as_secs_f64()
        ),
        None => println!(
            "backlog: at most {} deliveries due and not yet read ({:.0} s in); NOT all read {drain_secs} s after the last send",
            peak.1, peak.0
        ),
    }
    peak
}

/// Posts per delivered frame as the members counted them, for those that asked for batches and
/// those that did not; each of the latter must have got exactly one frame per post.
pub(crate) fn report_posts(all: &[(usize, Member)], failures: &mut Vec<String>) -> Value {
    let mut kinds = serde_json::Map::new();
    for (name, asked) in [("batching", true), ("plain", false)] {
        let mine: Vec<&Member> = all
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.asked_for_batches == asked)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let sum = |f: fn(&Member) -> u64| mine.iter().map(|m| f(m)).sum::<u64>();
        let (posts, frames) = (sum(|m| m.posts), sum(|m| m.frames));
        let (batches, unasked) = (sum(|m| m.batch_posts), sum(|m| m.unasked_batches));
        let (route_responses, malformed) = (sum(|m| m.route_responses), sum(|m| m.malformed));
        let ratio = posts as f64 / frames.max(1) as f64;
        println!(
            "posts per delivered frame, {} {name} members: {ratio:.3} ({posts} posts carried {frames} frames; {batches} of the posts were batch frames)",
            mine.len()
        );
        if malformed > 0 {
            println!("  FAILED: {malformed} messages were not frames (not JSON, or a batch without frames)");
            failures.push(format!("{malformed} malformed messages reached {name} members"));
        }
        if !asked {
            if unasked > 0 || posts != frames {
                println!("  FAILED: {unasked} batch frames reached members that did not ask for them");
                failures.push(format!(
                    "{unasked} batch frames reached members without batch=1 ({posts} posts, {frames} frames)"
                ));
            } else {
                println!("  every post to them carried exactly one frame");
            }
        }
        kinds.insert(
            name.to_owned(),
            json!({
                "members": mine.len(), "posts": posts, "frames": frames, "batchPosts": batches,
                "unaskedBatches": unasked, "postsPerFrame": ratio, "routeResponses": route_responses,
                "malformed": malformed,
            }),
        );
    }
    Value::Object(kinds)
}
