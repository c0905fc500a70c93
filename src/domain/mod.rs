//! Domain values. Handlers never see an unchecked string: each input is parsed
//! into one of these types, and the schema's CHECK constraints say the same.

mod event;
mod stream;

pub use event::{EventHeaders, StreamEvent, StreamEventPayload, StreamEventType};
pub use stream::{Category, LiveStream, StreamStatus, StreamTitle, ThumbnailUrl};

/// A domain value that failed to parse; the message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);
