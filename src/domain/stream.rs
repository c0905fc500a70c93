use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ValidationError;

/// Unicode White_Space without the control characters (which titles and
/// URLs refuse anyway): what `str::trim` removes, spelled out for the
/// OpenAPI patterns, so every regex dialect reads them alike.
const SPACES: &str = " \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
/// The control characters (`char::is_control`: Unicode Cc).
const CONTROLS: &str = "\\u0000-\\u001f\\u007f-\\u009f";

/// A stream title: at most 200 characters, not only spaces, no control
/// characters; stored trimmed. The length counts the title as sent, so the
/// OpenAPI `maxLength` says exactly what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTitle(String);

impl StreamTitle {
    pub const MAX_CHARS: usize = 200;

    /// The OpenAPI `pattern` of a title: what [`StreamTitle::parse`] accepts, length aside.
    pub fn pattern() -> String {
        format!("^[^{CONTROLS}]*[^{CONTROLS}{SPACES}][^{CONTROLS}]*$")
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError(format!(
                "title must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError(
                "title must not contain control characters".into(),
            ));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError("title must not be empty".into()));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fixed list of stream categories (mirrored by a CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Gaming,
    Music,
    Talk,
    Sports,
    Creative,
    Other,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Gaming,
        Category::Music,
        Category::Talk,
        Category::Sports,
        Category::Creative,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Gaming => "gaming",
            Category::Music => "music",
            Category::Talk => "talk",
            Category::Sports => "sports",
            Category::Creative => "creative",
            Category::Other => "other",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|c| c.as_str()).collect();
                ValidationError(format!("category must be one of: {}", names.join(", ")))
            })
    }
}

/// An http(s) URL of at most 2048 characters, with a host, without spaces
/// or control characters (as sent: nothing is trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailUrl(String);

impl ThumbnailUrl {
    pub const MAX_CHARS: usize = 2048;

    /// The OpenAPI `pattern` of a thumbnail URL: what [`ThumbnailUrl::parse`] accepts, length aside.
    pub fn pattern() -> String {
        let no_space = format!("{CONTROLS}{SPACES}");
        format!("^[hH][tT][tT][pP][sS]?://[^/?#{no_space}][^{no_space}]*$")
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError(format!(
                "thumbnail_url must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        let lower = raw.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .ok_or_else(|| ValidationError("thumbnail_url must be an http(s) URL".into()))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError(
                "thumbnail_url must be an http(s) URL with a host, without spaces".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a stream is on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum StreamStatus {
    Live,
    Ended,
}

/// A stream as stored, and as the API returns it after a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct LiveStream {
    pub id: Uuid,
    pub creator_id: Uuid,
    pub title: String,
    #[schema(value_type = Category)]
    pub category: String,
    pub thumbnail_url: Option<String>,
    pub status: StreamStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Incremented by every command; equals the last event's `aggregate_version`.
    pub version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_is_trimmed_and_bounded() {
        assert_eq!(StreamTitle::parse("  hi  ").unwrap().as_str(), "hi");
        assert!(StreamTitle::parse("   ").is_err());
        assert!(StreamTitle::parse("\u{3000}\u{a0}").is_err());
        assert!(StreamTitle::parse("").is_err());
        assert!(StreamTitle::parse(&"é".repeat(200)).is_ok());
        assert!(StreamTitle::parse(&"é".repeat(201)).is_err());
        assert!(
            StreamTitle::parse(&format!(" {}", "a".repeat(200))).is_err(),
            "the length counts the title as sent"
        );
        assert!(StreamTitle::parse("a\u{0}b").is_err());
        assert!(StreamTitle::parse("a\u{85}b").is_err());
    }

    /// The patterns the OpenAPI document publishes say what `parse` accepts.
    /// (Rust's regex reads `\u{…}` escapes; ECMA-262 and Python read `\uXXXX`.)
    #[test]
    fn published_patterns_cover_every_whitespace_and_control_character() {
        for c in (0..=0x10ffff_u32).filter_map(char::from_u32) {
            let spaced = c.is_whitespace() && !c.is_control();
            let listed = SPACES.contains(&format!("\\u{:04x}", c as u32))
                || c == ' '
                || (0x2000..=0x200a).contains(&(c as u32));
            assert_eq!(spaced, listed, "U+{:04X}", c as u32);
        }
        assert!(StreamTitle::pattern().starts_with('^') && StreamTitle::pattern().ends_with('$'));
        assert!(ThumbnailUrl::pattern().contains("[hH][tT][tT][pP][sS]?://"));
    }

    #[test]
    fn category_round_trips() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Ok(c));
        }
        assert!(Category::parse("Gaming").is_err());
        assert!(Category::parse("cooking").is_err());
    }

    #[test]
    fn thumbnail_must_be_http() {
        assert!(ThumbnailUrl::parse("https://cdn.example.com/a.png").is_ok());
        assert!(ThumbnailUrl::parse("HTTP://x.y").is_ok());
        assert!(ThumbnailUrl::parse("javascript:alert(1)").is_err());
        assert!(ThumbnailUrl::parse("ftp://x.y/a").is_err());
        assert!(ThumbnailUrl::parse("https:///nohost").is_err());
        assert!(ThumbnailUrl::parse("https://a b").is_err());
        assert!(
            ThumbnailUrl::parse(" https://a.b").is_err(),
            "nothing is trimmed"
        );
        let long = format!("https://x.y/{}", "a".repeat(2048));
        assert!(ThumbnailUrl::parse(&long).is_err());
    }
}
