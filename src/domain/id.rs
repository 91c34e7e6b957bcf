//! Job ids: 1–128 characters from `A-Z a-z 0-9 . _ : -`.

use std::fmt;

/// Longest id accepted, in characters (all ASCII, so also bytes).
pub const MAX_ID_LEN: usize = 128;

/// A validated job id. The only way to get one is [`ProgressId::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProgressId(String);

/// Why a string is not a job id; the text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId(pub String);

impl ProgressId {
    /// Checks the id rules and wraps the string.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if raw.is_empty() {
            return Err(InvalidId("the id is empty".into()));
        }
        if raw.len() > MAX_ID_LEN {
            return Err(InvalidId(format!(
                "the id is {} characters long; the limit is {MAX_ID_LEN}",
                raw.chars().count()
            )));
        }
        // Bytes first (an id is ASCII); the characters only to name a bad one.
        if !raw.bytes().all(|b| is_id_char(char::from(b)))
            && let Some(bad) = raw.chars().find(|c| !is_id_char(*c))
        {
            return Err(InvalidId(format!("the id contains {bad:?}; ids use only A-Z a-z 0-9 . _ : -")));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl fmt::Display for ProgressId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(ProgressId::parse("job-1.part_2:a").is_ok());
        assert!(ProgressId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert!(ProgressId::parse("").is_err());
        assert!(ProgressId::parse(&"a".repeat(129)).is_err());
        for bad in ["a/b", "a b", "é", "a%2Fb", "a\u{0}"] {
            let err = ProgressId::parse(bad).unwrap_err();
            assert!(err.0.contains("contains"), "{bad}: {}", err.0);
        }
    }
}
