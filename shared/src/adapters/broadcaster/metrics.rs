//! What the broadcaster counts, and how the counts leave: CloudWatch Embedded Metric Format.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub gone: u64,
    pub retried: u64,
    /// Of the retries, those @connections asked for with 429: the alarm for throttling.
    pub throttled: u64,
    pub failed: u64,
    /// Attempts made (posts and their retries): what was drawn from the `@connections` budget.
    pub posts: u64,
    /// Time posts waited for the governor's budget, summed over posts.
    pub paced_ms: u64,
    /// How many times a 429 made the governor lower its rate.
    pub backoffs: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.delivered += other.delivered;
        self.gone += other.gone;
        self.retried += other.retried;
        self.throttled += other.throttled;
        self.failed += other.failed;
        self.posts += other.posts;
        self.paced_ms += other.paced_ms;
        self.backoffs += other.backoffs;
    }

    /// One CloudWatch Embedded Metric Format document.
    pub fn emf(&self, function: &str) -> String {
        serde_json::json!({
            "_aws": {
                "Timestamp": crate::clock::now_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": "wsfan",
                    "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": "Delivered", "Unit": "Count"},
                        {"Name": "Gone", "Unit": "Count"},
                        {"Name": "Retried", "Unit": "Count"},
                        {"Name": "Throttled", "Unit": "Count"},
                        {"Name": "Failed", "Unit": "Count"},
                        {"Name": "Posts", "Unit": "Count"},
                        {"Name": "PacedMs", "Unit": "Milliseconds"},
                        {"Name": "Backoffs", "Unit": "Count"},
                    ],
                }],
            },
            "Function": function,
            "Delivered": self.delivered,
            "Gone": self.gone,
            "Retried": self.retried,
            "Throttled": self.throttled,
            "Failed": self.failed,
            "Posts": self.posts,
            "PacedMs": self.paced_ms,
            "Backoffs": self.backoffs,
        })
        .to_string()
    }

    /// EMF must be a log line of its own, so it bypasses the tracing formatter.
    pub fn log_emf(&self, function: &str) {
        println!("{}", self.emf(function));
    }
}
