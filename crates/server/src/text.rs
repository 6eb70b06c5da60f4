//! The rule for free text that a request hands to the registry to record or
//! to look up: names that identity providers vouch for (external accounts,
//! OIDC subjects and groups), grant subjects, and the query values of Berth's
//! own APIs.
//!
//! Such text is printable and bounded. A control character has no place in a
//! name or a log line, and a NUL cannot even be held by PostgreSQL text (the
//! statement fails, where SQLite would keep it), so it is refused here, before
//! any store sees it, the same way on every backend. Values with a grammar of
//! their own (repository names, tags, digests, patterns, local user names)
//! are checked by their parsers, which admit no control character either.

/// The longest name (of an account, a group, a grant subject) the registry
/// records or looks up: an email address is at most 254 bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Why text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("is empty")]
    Empty,
    #[error("holds a control character")]
    Control,
    #[error("is longer than {0} bytes")]
    TooLong(usize),
}

/// `text` when it is printable (no control character) and at most `max_bytes` long.
pub fn printable(text: &str, max_bytes: usize) -> Result<&str, TextError> {
    if text.len() > max_bytes {
        Err(TextError::TooLong(max_bytes))
    } else if text.chars().any(char::is_control) {
        Err(TextError::Control)
    } else {
        Ok(text)
    }
}

/// `name` when it can be a name: non-empty, printable and at most [`MAX_NAME_BYTES`].
pub fn name(name: &str) -> Result<&str, TextError> {
    if name.is_empty() {
        return Err(TextError::Empty);
    }
    printable(name, MAX_NAME_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_and_bounded() {
        for ok in ["alice", "Jürgen Groß", "a+b@example.com", "' OR 1=1 --", "dev team"] {
            assert_eq!(name(ok), Ok(ok));
        }
        assert_eq!(name(""), Err(TextError::Empty));
        for control in ["a\0b", "\0", "tab\there", "line\nbreak", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(name(control), Err(TextError::Control), "{control:?}");
        }
        assert_eq!(name(&"a".repeat(MAX_NAME_BYTES)).map(str::len), Ok(MAX_NAME_BYTES));
        assert_eq!(
            name(&"a".repeat(MAX_NAME_BYTES + 1)),
            Err(TextError::TooLong(MAX_NAME_BYTES))
        );
        assert_eq!(printable("", 0), Ok(""));
    }
}
