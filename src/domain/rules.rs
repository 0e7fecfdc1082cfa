//! The rules the service enforces on input, as data. The parsers of this module's siblings
//! check them, and the OpenAPI document states them (`routes::docs` writes them into the
//! schemas), so the document and the validation cannot drift: both read these constants.

/// A free-text field: its length in characters (Unicode scalar values, as JSON Schema counts
/// them) and which characters it may hold.
///
/// The value is trimmed of surrounding whitespace before it is stored. `max_chars` bounds the
/// value as sent, `min_chars` the trimmed value; control characters are refused inside the
/// trimmed value (Postgres refuses NUL in text, which would otherwise be a 500), except tab
/// and line breaks in a multi-line field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    pub min_chars: usize,
    pub max_chars: usize,
    pub multiline: bool,
}

impl TextRule {
    const fn new(min_chars: usize, max_chars: usize, multiline: bool) -> Self {
        Self {
            min_chars,
            max_chars,
            multiline,
        }
    }

    /// Whether `c` may appear inside the trimmed value.
    pub fn allows(&self, c: char) -> bool {
        !c.is_control() || (self.multiline && matches!(c, '\n' | '\r' | '\t'))
    }

    /// The rule as an ECMA-262 regular expression (the dialect of OpenAPI's `pattern`): optional
    /// surrounding whitespace, then (if `min_chars` > 0, required) a value that starts and ends
    /// with a character that is neither whitespace nor control, holding no refused character.
    /// Only `min_chars` of 0 and 1 are expressible this way; longer minimums are `minLength`.
    pub fn pattern(&self) -> String {
        // Rust's `char::is_whitespace` (what `trim` removes), spelled out: `\s` differs between
        // regex dialects (ECMA counts U+FEFF, Python counts U+001C–U+001F).
        const WS: &str =
            r"\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
        // `char::is_control`: the Cc category.
        const CC: &str = r"\x00-\x1F\x7F-\x9F";
        const CC_MULTILINE: &str = r"\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F";
        let inner = if self.multiline { CC_MULTILINE } else { CC };
        let value = format!("[^{WS}{CC}](?:[^{inner}]*[^{WS}{CC}])?");
        let value = if self.min_chars == 0 {
            format!("(?:{value})?")
        } else {
            value
        };
        format!("^[{WS}]*{value}[{WS}]*$")
    }
}

/// An integer within `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRule {
    pub min: i64,
    pub max: i64,
}

impl IntRule {
    pub fn contains(&self, n: i64) -> bool {
        (self.min..=self.max).contains(&n)
    }
}

/// Post `title`.
pub const TITLE: TextRule = TextRule::new(1, 200, false);
/// Post `description` (blank means none).
pub const DESCRIPTION: TextRule = TextRule::new(0, 5000, true);
/// Post `musical_key` (blank means none).
pub const MUSICAL_KEY: TextRule = TextRule::new(0, 32, false);
/// Post `daw` (blank means none).
pub const DAW: TextRule = TextRule::new(0, 64, false);
/// Post `genre` (blank means none).
pub const GENRE: TextRule = TextRule::new(0, 64, false);
/// One tag of a post.
pub const TAG: TextRule = TextRule::new(1, 32, false);
/// Tags of one post.
pub const MAX_TAGS: usize = 10;
/// Post `bpm`.
pub const BPM: IntRule = IntRule { min: 1, max: 999 };
/// Comment `body`.
pub const COMMENT_BODY: TextRule = TextRule::new(1, 2000, true);
/// Search `q`.
pub const SEARCH_QUERY: TextRule = TextRule::new(1, 100, false);

/// Page size `limit`.
pub const LIMIT: IntRule = IntRule { min: 1, max: 100 };
/// `limit` when absent.
pub const DEFAULT_LIMIT: u32 = 20;
/// Longest `cursor` (base64url of at most 96 bytes); anything longer is no cursor of ours.
pub const CURSOR_MAX_CHARS: usize = 128;

/// Cursors (see `Cursor`): plain text, so that a pattern can state its every valid spelling.
/// A time-ordered cursor, as a pattern. Times are microseconds since the epoch, at most 16 digits
/// (about 317 years either side of 1970).
pub const CURSOR_TIME_PATTERN: &str = r"^t\.-?[0-9]{1,16}\.[0-9a-f]{32}$";
/// A search's cursor, as a pattern.
pub const CURSOR_SEARCH_PATTERN: &str = r"^s\.[ft]\.[0-9a-f]{8}\.[0-9a-f]{16}\.[0-9a-f]{32}$";
/// Any cursor, as a pattern.
pub const CURSOR_ANY_PATTERN: &str = r"^(?:t\.-?[0-9]{1,16}\.[0-9a-f]{32}|l\.[0-9]{1,18}\.-?[0-9]{1,16}\.[0-9a-f]{32}|o\.[0-9]{1,9}|s\.[ft]\.[0-9a-f]{8}\.[0-9a-f]{16}\.[0-9a-f]{32})$";

/// Usernames: length in characters (ASCII only, so also bytes).
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 30;
/// Usernames: ASCII letters, digits, `_`, `.` and `-`, starting with a letter or digit; the
/// length is `minLength`/`maxLength`.
pub const USERNAME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$";

/// Passwords at registration, in characters.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;

/// Emails: at most this many characters as sent.
pub const EMAIL_MAX: usize = 254;

/// Login `login` (a username or an email) in bytes; longer cannot match any account.
pub const LOGIN_MAX: usize = 254;
/// Login `password` in bytes: longer cannot match (registration caps passwords at 128
/// characters of at most 4 bytes), and bounding it bounds the work of a verification.
pub const LOGIN_PASSWORD_MAX: usize = 4 * PASSWORD_MAX;
