use std::fmt;

use super::{ValidationError, rules, text_field};

/// 3–30 characters of ASCII letters, digits, `_`, `.` and `-`, starting with a letter or digit.
/// Unique without regard to case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid_len = (rules::USERNAME_MIN..=rules::USERNAME_MAX).contains(&raw.len());
        let valid_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        let starts_well = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if valid_len && valid_chars && starts_well {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "invalid_username",
                "username must be 3 to 30 characters: letters, digits, '_', '.', '-', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, trimmed and lower-cased. Deliberately loose: one `@`, a dotted domain,
/// no spaces; the real check is a confirmation mail, which is not this service's job.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let invalid = || ValidationError::new("invalid_email", "email is not a valid address");
        let rule = rules::TextRule {
            min_chars: 3,
            max_chars: rules::EMAIL_MAX,
            multiline: false,
        };
        let email = text_field(raw, "email", "invalid_email", rule)?.to_lowercase();
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let ok = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !email.chars().any(char::is_whitespace);
        if ok { Ok(Self(email)) } else { Err(invalid()) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Emails are personal data: keep them out of Debug output (and so out of logs).
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(<redacted>)")
    }
}

/// A password: 8–128 characters. Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if (rules::PASSWORD_MIN..=rules::PASSWORD_MAX).contains(&chars) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "invalid_password",
                "password must be 8 to 128 characters",
            ))
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "Beat_Maker", "dj.x-1", "a23"] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "_bob",
            "bob smith",
            "bøb",
            "x'; DROP TABLE users;--",
            &"a".repeat(31),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            Email::parse(" Bob@Example.COM ").unwrap().as_str(),
            "bob@example.com"
        );
        for bad in [
            "bob",
            "@x.io",
            "bob@",
            "bob@x",
            "b ob@x.io",
            "a@b@c.io",
            "bob@.x.io",
            "b\0b@x.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let p = Password::parse("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let e = Email::parse("bob@example.com").unwrap();
        assert!(!format!("{e:?}").contains("bob"));
        assert!(Password::parse("short").is_err());
    }
}
