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

    /// The term as a `LIKE`/`ILIKE` pattern matching it anywhere, with the pattern
    /// metacharacters of the term escaped (Postgres' default escape character is `\`).
    pub fn contains_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.0.len() + 2);
        pattern.push('%');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_metacharacters() {
        let q = SearchQuery::parse(Some(" 100%_\\ ")).unwrap();
        assert_eq!(q.contains_pattern(), "%100\\%\\_\\\\%");
        assert!(SearchQuery::parse(None).is_err());
        assert!(SearchQuery::parse(Some("  ")).is_err());
        assert!(SearchQuery::parse(Some(&"q".repeat(101))).is_err());
    }
}
