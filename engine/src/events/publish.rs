//! What an app publishes, and the rules it must follow (API.md): every front end validates
//! through here, so all reject the same inputs with the same reasons.

use serde_json::value::RawValue;
use shoal_store::SourceId;

use super::{invalid, EventsError, Stamp};

/// Longest `semantics` or `name`, in bytes (API.md).
pub const MAX_NAME_BYTES: usize = 1024;
/// Most tags per event (API.md).
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes. Tags are kept exactly in the tree's keys and summaries (up to 64
/// per subtree), which peers fetch as blocks of at most `exchange::MAX_BLOCK_SIZE` (4 MiB):
/// unbounded tags could make a tree block no peer accepts, so its source never replicates.
pub const MAX_TAG_BYTES: usize = 1024;
/// Largest payload of one event, in bytes of compact JSON: one event must fit into one tree
/// leaf (`TreeConfig::max_uncompressed_leaf_size`, 1 MiB, less the CBOR string header).
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;

/// One event to publish, as an app gives it.
#[derive(Debug, Clone)]
pub struct PublishEvent {
    pub semantics: String,
    pub name: String,
    /// Any order, duplicates allowed: the service sorts and dedups.
    pub tags: Vec<String>,
    /// Any JSON; whitespace is stripped before storing.
    pub payload: Box<RawValue>,
    /// `None` = now (the v1 API); Pond's `persistEvents` keeps the client's timestamp.
    pub timestamp: Option<u64>,
}

impl PublishEvent {
    /// Checks the API.md rules and normalises tags and payload. `index` names the event in
    /// error messages.
    pub(super) fn validate(&mut self, index: usize) -> Result<(), EventsError> {
        let i = Some(index);
        check_name(i, "semantics", &self.semantics)?;
        check_name(i, "name", &self.name)?;
        if self.tags.iter().any(|t| t.is_empty()) {
            return Err(invalid(i, "tags", "a tag must not be empty"));
        }
        if let Some(t) = self.tags.iter().find(|t| t.len() > MAX_TAG_BYTES) {
            return Err(invalid(
                i,
                "tags",
                format!("a tag has at most {MAX_TAG_BYTES} bytes, got {}", t.len()),
            ));
        }
        self.tags.sort_unstable();
        self.tags.dedup();
        if self.tags.len() > MAX_TAGS {
            return Err(invalid(
                i,
                "tags",
                format!("at most {MAX_TAGS} tags per event, got {}", self.tags.len()),
            ));
        }
        if let Some(compact) = compact_json(self.payload.get()) {
            self.payload =
                RawValue::from_string(compact).map_err(|e| invalid(i, "payload", e.to_string()))?;
        }
        let size = self.payload.get().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(invalid(
                i,
                "payload",
                format!("at most {MAX_PAYLOAD_BYTES} bytes of JSON per event, got {size}"),
            ));
        }
        Ok(())
    }
}

fn check_name(index: Option<usize>, field: &'static str, value: &str) -> Result<(), EventsError> {
    if value.trim().is_empty() {
        return Err(invalid(
            index,
            field,
            "must contain at least one non-whitespace character",
        ));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(invalid(
            index,
            field,
            format!("at most {MAX_NAME_BYTES} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

/// `json` without whitespace outside strings, or `None` if it has none (the common case: no
/// copy). The input is valid JSON (it parsed as a `RawValue`), so this only drops bytes.
pub(super) fn compact_json(json: &str) -> Option<String> {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let needs = bytes.iter().any(|&b| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            false
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    false
                }
                b' ' | b'\n' | b'\r' | b'\t' => true,
                _ => false,
            }
        }
    });
    if !needs {
        return None;
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    Some(out)
}

/// The answer to a publish: where each event went, in request order.
#[derive(Debug, Clone)]
pub struct Published {
    pub source: SourceId,
    pub stamps: Vec<Stamp>,
}
