//! The attribute value length limit (`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, default 4096
//! characters here; the specification leaves it unlimited, which a public service cannot).
//!
//! Values a client controls (`user_agent.original`, `url.path`) are cut where the root span
//! records them, so a huge header is never copied whole into a span that waits in the export
//! queue; every other value is cut by the encoder. Each cut is counted in
//! `otel_span_attributes_truncated_total`.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::telemetry::metrics;

/// The limit in force; `usize::MAX` when unlimited. Set once by `telemetry::init`.
static VALUE_LENGTH: AtomicUsize = AtomicUsize::new(DEFAULT_VALUE_LENGTH);

/// The default limit, in characters.
pub const DEFAULT_VALUE_LENGTH: usize = 4096;

/// Sets the limit (`None`: unlimited).
pub fn set_value_length(limit: Option<usize>) {
    VALUE_LENGTH.store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
}

/// `value` cut to the limit in force, the cut counted.
pub fn bounded(value: &str) -> &str {
    let limit = VALUE_LENGTH.load(Ordering::Relaxed);
    counted_cut(value, (limit != usize::MAX).then_some(limit))
}

/// `value` cut to `limit` characters, the cut counted.
pub fn counted_cut(value: &str, limit: Option<usize>) -> &str {
    let cut = cut(value, limit);
    if cut.len() < value.len() {
        metrics::attribute_truncated();
    }
    cut
}

/// `value` cut to at most `limit` characters, on a character boundary.
pub fn cut(value: &str, limit: Option<usize>) -> &str {
    if let Some(limit) = limit
        // Fewer bytes than the limit means fewer characters too: the common case costs a compare.
        && value.len() > limit
        && let Some((byte, _)) = value.char_indices().nth(limit)
    {
        return &value[..byte];
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_byte_text_is_cut_on_a_character_boundary() {
        // Two bytes each, then three, then four: a cut by bytes would split a character.
        let text = "ééé€€𝄞𝄞";
        assert_eq!(cut(text, Some(4)), "ééé€");
        assert_eq!(cut(text, Some(6)), "ééé€€𝄞");
        assert_eq!(cut(text, Some(7)), text);
        assert_eq!(cut(text, Some(100)), text);
        assert_eq!(cut(text, Some(0)), "");
        assert_eq!(cut(text, None), text);
        assert_eq!(cut("", Some(3)), "");
    }
}
