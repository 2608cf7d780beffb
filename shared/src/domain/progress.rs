//! Document progress events, in the documented shape:
//! `{"type":"processing_started"|"progress"|"processing_complete"|"error", "docId", "pagesProcessed",
//! "totalPages", "errorCode", "message", "recoverable"}`. Processors send them to the progress
//! queue; subscribers receive them unchanged.

use serde::{Deserialize, Serialize};

use crate::channel::validate_id;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    ProcessingStarted,
    Progress,
    ProcessingComplete,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressEvent {
    #[serde(rename = "type")]
    pub kind: ProgressKind,
    pub doc_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_processed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_pages: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid progress event: {0}")]
pub struct InvalidProgress(pub String);

const MAX_MESSAGE_BYTES: usize = 4096;

impl ProgressEvent {
    pub fn started(doc_id: &str, total_pages: Option<u32>) -> Self {
        Self::new(ProgressKind::ProcessingStarted, doc_id, None, total_pages)
    }

    pub fn progress(doc_id: &str, pages_processed: u32, total_pages: u32) -> Self {
        Self::new(ProgressKind::Progress, doc_id, Some(pages_processed), Some(total_pages))
    }

    pub fn complete(doc_id: &str, total_pages: Option<u32>) -> Self {
        Self::new(ProgressKind::ProcessingComplete, doc_id, total_pages, total_pages)
    }

    pub fn error(doc_id: &str, error_code: &str, message: &str, recoverable: bool) -> Self {
        let mut e = Self::new(ProgressKind::Error, doc_id, None, None);
        e.error_code = Some(error_code.to_owned());
        e.message = Some(message.to_owned());
        e.recoverable = Some(recoverable);
        e
    }

    fn new(kind: ProgressKind, doc_id: &str, pages_processed: Option<u32>, total_pages: Option<u32>) -> Self {
        ProgressEvent {
            kind,
            doc_id: doc_id.to_owned(),
            pages_processed,
            total_pages,
            error_code: None,
            message: None,
            recoverable: None,
        }
    }

    /// Parses and validates one queue message body.
    pub fn parse(body: &str) -> Result<Self, InvalidProgress> {
        let event: ProgressEvent = serde_json::from_str(body).map_err(|e| InvalidProgress(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    pub fn validate(&self) -> Result<(), InvalidProgress> {
        validate_id(&self.doc_id).map_err(|e| InvalidProgress(format!("docId: {e}")))?;
        if self.total_pages == Some(0) {
            return Err(InvalidProgress("totalPages must be at least 1".into()));
        }
        if let (Some(done), Some(total)) = (self.pages_processed, self.total_pages) {
            if done > total {
                return Err(InvalidProgress(format!(
                    "pagesProcessed {done} is more than totalPages {total}"
                )));
            }
        }
        if self.message.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE_BYTES) {
            return Err(InvalidProgress(format!(
                "message is longer than {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        match self.kind {
            ProgressKind::Progress if self.pages_processed.is_none() || self.total_pages.is_none() => Err(
                InvalidProgress("a progress event needs pagesProcessed and totalPages".into()),
            ),
            ProgressKind::Error if self.error_code.as_deref().is_none_or(str::is_empty) => {
                Err(InvalidProgress("an error event needs an errorCode".into()))
            }
            ProgressKind::Error if self.message.as_deref().is_none_or(str::is_empty) => {
                Err(InvalidProgress("an error event needs a message".into()))
            }
            _ => Ok(()),
        }
    }

    /// Complete and unrecoverable errors end a document's processing.
    pub fn is_terminal(&self) -> bool {
        match self.kind {
            ProgressKind::ProcessingComplete => true,
            ProgressKind::Error => self.recoverable != Some(true),
            _ => false,
        }
    }

    /// `processing_complete` without page counts means done, all pages: it takes the total
    /// from the snapshot it follows (`known_total`), so the snapshot keeps its counts.
    pub fn with_counts_filled(mut self, known_total: Option<u32>) -> Self {
        if self.kind == ProgressKind::ProcessingComplete {
            let total = self.total_pages.or(self.pages_processed).or(known_total);
            self.total_pages = total;
            self.pages_processed = self.pages_processed.or(total);
        }
        self
    }

    /// Where this event stands in a document's life. The stored snapshot only moves to a higher
    /// position, so a late or duplicate event never rolls it back: started < progress by pages <
    /// a recoverable error at the same page < done. Every terminal event (complete, or an
    /// unrecoverable error) has the same position whatever its counts, so the first one stays:
    /// a late event never replaces a terminal state.
    pub fn position(&self) -> i64 {
        if self.is_terminal() {
            return 2 << 40;
        }
        let pages = i64::from(self.pages_processed.unwrap_or(0));
        let (phase, tie) = match self.kind {
            ProgressKind::ProcessingStarted => (0, 0),
            ProgressKind::Error => (1, 1),
            _ => (1, 0),
        };
        (phase << 40) | (pages << 1) | tie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shapes() {
        let e = ProgressEvent::parse(r#"{"type":"progress","docId":"d1","pagesProcessed":5,"totalPages":10}"#).unwrap();
        assert_eq!(e, ProgressEvent::progress("d1", 5, 10));
        let e = ProgressEvent::parse(
            r#"{"type":"error","docId":"d1","errorCode":"OCR_FAILED","message":"page 3 is unreadable","recoverable":true}"#,
        )
        .unwrap();
        assert_eq!(e.recoverable, Some(true));
        assert_eq!(
            serde_json::to_string(&ProgressEvent::started("d1", Some(3))).unwrap(),
            r#"{"type":"processing_started","docId":"d1","totalPages":3}"#
        );
    }

    #[test]
    fn rejects_malformed_events() {
        for bad in [
            "not json",
            r#"{"type":"progress","docId":"d1"}"#,
            r#"{"type":"progress","docId":"d 1","pagesProcessed":1,"totalPages":2}"#,
            r#"{"type":"progress","docId":"d1","pagesProcessed":3,"totalPages":2}"#,
            r#"{"type":"exploded","docId":"d1"}"#,
            r#"{"type":"error","docId":"d1","message":"m"}"#,
            r#"{"type":"processing_started","docId":"d1","totalPages":0}"#,
        ] {
            assert!(ProgressEvent::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_only_move_forward_through_a_documents_life() {
        let order = [
            ProgressEvent::started("d", Some(10)),
            ProgressEvent::progress("d", 1, 10),
            ProgressEvent::progress("d", 5, 10),
            {
                let mut e = ProgressEvent::error("d", "SLOW", "retrying", true);
                e.pages_processed = Some(5);
                e
            },
            ProgressEvent::progress("d", 6, 10),
            ProgressEvent::complete("d", Some(10)),
        ];
        for pair in order.windows(2) {
            assert!(pair[0].position() < pair[1].position(), "{pair:?}");
        }
        assert!(
            ProgressEvent::error("d", "X", "fatal", false).position() > ProgressEvent::progress("d", 9, 10).position()
        );
    }

    #[test]
    fn a_terminal_state_is_never_replaced() {
        let done_without_counts = ProgressEvent::complete("d", None);
        let done = ProgressEvent::complete("d", Some(10));
        let failed = ProgressEvent::error("d", "X", "fatal", false);
        let mut failed_late = failed.clone();
        failed_late.pages_processed = Some(9);
        for terminal in [&done_without_counts, &done, &failed] {
            for late in [
                &done_without_counts,
                &done,
                &failed,
                &failed_late,
                &ProgressEvent::progress("d", 10, 10),
                &ProgressEvent::error("d", "SLOW", "retrying", true),
            ] {
                // The store moves the snapshot only to a strictly higher position.
                assert!(
                    late.position() <= terminal.position(),
                    "{late:?} would replace {terminal:?}"
                );
            }
        }
    }

    #[test]
    fn complete_without_counts_means_all_pages() {
        let filled = ProgressEvent::complete("d", None).with_counts_filled(Some(12));
        assert_eq!((filled.pages_processed, filled.total_pages), (Some(12), Some(12)));
        let own = ProgressEvent::complete("d", Some(5)).with_counts_filled(Some(12));
        assert_eq!((own.pages_processed, own.total_pages), (Some(5), Some(5)));
        let unknown = ProgressEvent::complete("d", None).with_counts_filled(None);
        assert_eq!((unknown.pages_processed, unknown.total_pages), (None, None));
        let progress = ProgressEvent::progress("d", 1, 12).with_counts_filled(Some(3));
        assert_eq!(progress, ProgressEvent::progress("d", 1, 12));
    }
}
