//! A recipient's frames, and how they are packed into as few posts as fit.

use super::{Counters, MAX_PAYLOAD_BYTES};

/// The frames one recipient is due, in the order it must get them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parcel {
    pub connection_id: String,
    /// Each a server frame's JSON text.
    pub frames: Vec<std::sync::Arc<str>>,
    /// The connection asked for several frames in one post (`{"type":"batch"}`).
    pub batch: bool,
}

/// What [`Broadcast::deliver_parcels`](super::Broadcast::deliver_parcels) came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParcelReport {
    pub counters: Counters,
    /// The frames not delivered, per recipient and in order: failed at the recipient's deadline,
    /// or not started before `stop_at`. A recipient that is gone (410) is not here.
    pub undelivered: Vec<Parcel>,
    /// Of the undelivered recipients, those stopped by `stop_at` rather than by failing.
    pub handed_on: u64,
    /// Recipients that answered 410 while still connecting ([`RecipientOutcome::Connecting`](super::RecipientOutcome::Connecting)), with
    /// their frames from the one refused on: a caller that knows the connection is about to open
    /// (it asked for these frames at connect) may post them again.
    pub connecting: Vec<Parcel>,
}

/// The start of a batch frame; its frames follow, comma-separated, then `BATCH_CLOSE`.
pub const BATCH_OPEN: &str = r#"{"type":"batch","frames":["#;
const BATCH_CLOSE: &str = "]}";

/// Packs `frames` into the posts that carry them, in order, each with how many frames it holds.
/// Without `batch`, a post a frame. With it, as many frames as fit in one post of at most
/// [`MAX_PAYLOAD_BYTES`] go in a `{"type":"batch","frames":[...]}`, and a post of one frame is that
/// frame alone. API Gateway bills a post per 32 KB, so the posts cost no more than the frames
/// would, and far fewer posts draw on the rate.
pub fn pack(frames: &[std::sync::Arc<str>], batch: bool) -> Vec<(Vec<u8>, usize)> {
    if !batch {
        return frames.iter().map(|f| (f.as_bytes().to_vec(), 1)).collect();
    }
    let mut posts = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let mut end = i + 1;
        let mut size = BATCH_OPEN.len() + frames[i].len() + BATCH_CLOSE.len();
        while end < frames.len() && size + 1 + frames[end].len() <= MAX_PAYLOAD_BYTES {
            size += 1 + frames[end].len();
            end += 1;
        }
        let body = if end - i == 1 {
            frames[i].as_bytes().to_vec()
        } else {
            let mut body = Vec::with_capacity(size);
            body.extend_from_slice(BATCH_OPEN.as_bytes());
            for (k, frame) in frames[i..end].iter().enumerate() {
                if k > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(frame.as_bytes());
            }
            body.extend_from_slice(BATCH_CLOSE.as_bytes());
            body
        };
        posts.push((body, end - i));
        i = end;
    }
    posts
}

impl Parcel {
    /// The same recipient's frames after the first `sent`.
    pub(super) fn rest(&self, sent: usize) -> Parcel {
        Parcel {
            connection_id: self.connection_id.clone(),
            frames: self.frames[sent..].to_vec(),
            batch: self.batch,
        }
    }
}
