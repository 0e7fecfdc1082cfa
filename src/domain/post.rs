use super::rules::{self, TextRule};
use super::{ValidationError, text_field};

/// What a user submits to create a post, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PostDraft {
    pub title: String,
    pub description: Option<String>,
    pub bpm: Option<i32>,
    pub musical_key: Option<String>,
    pub daw: Option<String>,
    pub genre: Option<String>,
    pub tags: Tags,
}

impl PostDraft {
    pub fn parse(
        title: &str,
        description: Option<&str>,
        bpm: Option<i64>,
        musical_key: Option<&str>,
        daw: Option<&str>,
        genre: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<Self, ValidationError> {
        let title = text_field(title, "title", "invalid_title", rules::TITLE)?;
        let bpm = match bpm {
            None => None,
            Some(b) if rules::BPM.contains(b) => Some(b as i32),
            Some(_) => {
                return Err(ValidationError::new(
                    "invalid_bpm",
                    "bpm must be between 1 and 999",
                ));
            }
        };
        Ok(Self {
            title,
            description: optional(
                description,
                "description",
                "invalid_description",
                rules::DESCRIPTION,
            )?,
            bpm,
            musical_key: optional(
                musical_key,
                "musical_key",
                "invalid_musical_key",
                rules::MUSICAL_KEY,
            )?,
            daw: optional(daw, "daw", "invalid_daw", rules::DAW)?,
            genre: optional(genre, "genre", "invalid_genre", rules::GENRE)?,
            tags: Tags::parse(tags.unwrap_or_default())?,
        })
    }
}

/// An optional text field; blank means absent.
fn optional(
    value: Option<&str>,
    field: &'static str,
    code: &'static str,
    rule: TextRule,
) -> Result<Option<String>, ValidationError> {
    match value {
        None => Ok(None),
        Some(v) => {
            let v = text_field(v, field, code, rule)?;
            Ok((!v.is_empty()).then_some(v))
        }
    }
}

/// Up to 10 tags of 1–32 characters, lower-cased (so search by tag ignores case), without
/// duplicates, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(Vec<String>);

impl Tags {
    pub const MAX: usize = rules::MAX_TAGS;

    pub fn parse(raw: &[String]) -> Result<Self, ValidationError> {
        if raw.len() > Self::MAX {
            return Err(ValidationError::new("invalid_tags", "at most 10 tags"));
        }
        let mut tags: Vec<String> = Vec::with_capacity(raw.len());
        for tag in raw {
            let tag = text_field(tag, "a tag", "invalid_tags", rules::TAG)?.to_lowercase();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(Self(tags))
    }

    pub fn into_inner(self) -> Vec<String> {
        self.0
    }
}

/// A comment: 1–2000 characters, newlines allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentBody(String);

impl CommentBody {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        text_field(raw, "body", "invalid_body_text", rules::COMMENT_BODY).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(title: &str, bpm: Option<i64>) -> Result<PostDraft, ValidationError> {
        PostDraft::parse(title, None, bpm, None, None, None, None)
    }

    #[test]
    fn title_and_bpm_bounds() {
        assert!(draft("x", Some(1)).is_ok());
        assert!(draft(&"é".repeat(200), Some(999)).is_ok());
        assert_eq!(draft("", None).unwrap_err().code, "invalid_title");
        assert_eq!(draft("   ", None).unwrap_err().code, "invalid_title");
        assert_eq!(
            draft(&"x".repeat(201), None).unwrap_err().code,
            "invalid_title"
        );
        assert_eq!(draft("x", Some(0)).unwrap_err().code, "invalid_bpm");
        assert_eq!(draft("x", Some(1000)).unwrap_err().code, "invalid_bpm");
        assert_eq!(draft("a\0b", None).unwrap_err().code, "invalid_title");
    }

    #[test]
    fn tags_are_normalised() {
        let tags = Tags::parse(&["Trap".into(), "trap".into(), " Lo-Fi ".into()]).unwrap();
        assert_eq!(tags.into_inner(), vec!["trap", "lo-fi"]);
        assert!(Tags::parse(&vec!["x".to_string(); 11]).is_err());
        assert!(Tags::parse(&["".into()]).is_err());
    }

    #[test]
    fn comment_bounds() {
        assert!(CommentBody::parse("nice\nbeat").is_ok());
        assert!(CommentBody::parse(" ").is_err());
        assert!(CommentBody::parse(&"x".repeat(2001)).is_err());
    }
}
