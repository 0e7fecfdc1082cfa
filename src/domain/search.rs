//! A search request's term. `q` is handed to Postgres' `websearch_to_tsquery` as typed (so
//! `"exact phrase"`, `-exclude` and `or` work); what is checked and derived here is what the
//! database cannot say: that there is something to look for, the plain words for the trigram
//! fallback and the user search, and a fingerprint that ties a cursor to its query.

use super::{ValidationError, rules, text_field};

/// A search term: 1–100 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery(String);

impl SearchQuery {
    pub fn parse(raw: Option<&str>) -> Result<Self, ValidationError> {
        let raw = raw.unwrap_or_default();
        text_field(raw, "q", "invalid_query", rules::SEARCH_QUERY).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The words a post or user should match: the query without its operators (quotes, `or`)
    /// and without excluded (`-word`) words, lower-cased. A query with no such word holding a
    /// letter or digit (`-`, `""`, `or`, `-loop`, `%`) has nothing to look for: 400. (A query of
    /// exclusions only would also be answered by reading every post that lacks them.)
    pub fn words(&self) -> Result<SearchWords, ValidationError> {
        let mut words = Vec::new();
        let mut in_phrase = false;
        for token in self.0.split_whitespace() {
            let operator =
                !in_phrase && (token.starts_with('-') || token.eq_ignore_ascii_case("or"));
            if token.matches('"').count() % 2 == 1 {
                in_phrase = !in_phrase;
            }
            if operator {
                continue;
            }
            let word: String = token.chars().filter(|c| *c != '"').collect();
            if word.chars().any(char::is_alphanumeric) {
                words.push(word.to_lowercase());
            }
        }
        if words.is_empty() {
            return Err(ValidationError::new(
                "invalid_query",
                "q must hold a word to look for, not only operators or exclusions",
            ));
        }
        Ok(SearchWords(words.join(" ")))
    }

    /// A 32-bit FNV-1a hash of the query: a cursor carries it, so that the cursor of one search
    /// given to another is refused rather than silently paging the wrong results. Stable across
    /// processes and versions (unlike `std`'s hasher), since cursors outlive both.
    pub fn fingerprint(&self) -> u32 {
        self.0.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
    }
}

/// The plain, lower-cased words of a query (see [`SearchQuery::words`]), separated by spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchWords(String);

impl SearchWords {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A `LIKE` pattern matching names that start with the words, with the pattern
    /// metacharacters escaped (Postgres' default escape character is `\`).
    pub fn prefix_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.0.len() + 1);
        for c in self.0.chars() {
            if matches!(c, '\\' | '%' | '_') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        pattern
    }
}

/// How the posts of a search were found. Full text first; when it finds nothing (a typo, a
/// partial word), trigram similarity of the title. A cursor says which one its listing used, so
/// that every page of one search is ranked the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchStrategy {
    FullText,
    Trigram,
}

impl SearchStrategy {
    /// The span attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullText => "full_text",
            Self::Trigram => "trigram",
        }
    }

    pub(crate) fn letter(self) -> char {
        match self {
            Self::FullText => 'f',
            Self::Trigram => 't',
        }
    }

    pub(crate) fn from_letter(s: &str) -> Option<Self> {
        match s {
            "f" => Some(Self::FullText),
            "t" => Some(Self::Trigram),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(q: &str) -> Result<String, ValidationError> {
        SearchQuery::parse(Some(q)).and_then(|q| q.words().map(|w| w.0))
    }

    #[test]
    fn words_drop_operators_and_exclusions() {
        assert_eq!(words("Dark  Loops").unwrap(), "dark loops");
        assert_eq!(
            words("\"warm groove\" -demo or keys").unwrap(),
            "warm groove keys"
        );
        assert_eq!(words("\"lo-fi -beat\"").unwrap(), "lo-fi -beat");
        assert_eq!(words("100%").unwrap(), "100%");
        assert_eq!(words("ñandú").unwrap(), "ñandú");
        for nothing in ["-", "\"\"", "or", "OR", "-loop", "- -x", "%", "_", "\\"] {
            assert!(words(nothing).is_err(), "{nothing}");
        }
        assert!(SearchQuery::parse(None).is_err());
        assert!(SearchQuery::parse(Some("  ")).is_err());
        assert!(SearchQuery::parse(Some(&"q".repeat(101))).is_err());
    }

    #[test]
    fn prefix_patterns_escape_metacharacters() {
        let w = SearchQuery::parse(Some(" 100%_\\x "))
            .unwrap()
            .words()
            .unwrap();
        assert_eq!(w.prefix_pattern(), "100\\%\\_\\\\x%");
    }

    #[test]
    fn fingerprints_are_fnv1a() {
        // The published FNV-1a test vectors.
        assert_eq!(SearchQuery("a".into()).fingerprint(), 0xe40c_292c);
        assert_eq!(SearchQuery("foobar".into()).fingerprint(), 0xbf9c_f968);
    }
}
