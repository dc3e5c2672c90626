use std::cmp::Ordering;
use std::fmt;

/// A migration version: the digits before the first `_` of a migration folder's name, with
/// dashes removed (`2024-01-01-000000_add_users` has version `20240101000000`), as diesel reads
/// it. Versions compare numerically, so `10` comes after `9` (diesel compares them as strings).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

/// Why a text is not a version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Nothing is left once dashes are removed.
    #[error("the version is empty")]
    Empty,
    /// Something other than digits and dashes; holds the text as given.
    #[error("the version `{0}` is not made of digits (dashes are allowed and removed)")]
    NotDigits(String),
    /// More than 50 digits once dashes are removed; holds the text as given.
    #[error(
        "the version `{0}` is longer than 50 digits, which diesel's version table cannot store"
    )]
    TooLong(String),
}

impl Version {
    /// Parses a version as written in a folder name: digits, with dashes allowed and removed.
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        if digits.is_empty() {
            return Err(VersionError::Empty);
        }
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(VersionError::NotDigits(text.to_string()));
        }
        if digits.len() > 50 {
            return Err(VersionError::TooLong(text.to_string()));
        }
        Ok(Version(digits))
    }

    /// Wraps a version as stored in a database. Stored versions are kept verbatim, even when
    /// another tool wrote something that is not digits, so that nothing recorded is lost.
    pub fn from_stored(text: &str) -> Version {
        Version(text.to_string())
    }

    /// The version's text: digits without dashes for a parsed version, verbatim for a stored
    /// one.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn significant(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        trimmed
    }
}

impl Ord for Version {
    /// Numeric order for digit strings (leading zeros ignored), then the text itself so that
    /// the order is total and `01` and `1` are distinct but adjacent.
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        let a_digits = a.chars().all(|c| c.is_ascii_digit());
        let b_digits = b.chars().all(|c| c.is_ascii_digit());
        match (a_digits, b_digits) {
            (true, true) => a
                .len()
                .cmp(&b.len())
                .then_with(|| a.cmp(b))
                .then_with(|| self.0.cmp(&other.0)),
            // Stored versions that are not digits sort after every numeric one.
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Version {
    /// Whether two versions name the same number (`01` and `1`).
    pub fn numerically_equal(&self, other: &Version) -> bool {
        self.significant() == other.significant()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_diesel_style_versions() {
        assert_eq!(v("2024-01-01-000000").as_str(), "20240101000000");
        assert_eq!(v("00000000000000").as_str(), "00000000000000");
        assert_eq!(v("7").as_str(), "7");
    }

    #[test]
    fn rejects_bad_versions() {
        assert_eq!(Version::parse(""), Err(VersionError::Empty));
        assert_eq!(Version::parse("--"), Err(VersionError::Empty));
        assert!(matches!(
            Version::parse("v1"),
            Err(VersionError::NotDigits(_))
        ));
        assert!(matches!(
            Version::parse(&"1".repeat(51)),
            Err(VersionError::TooLong(_))
        ));
        assert!(Version::parse(&"1".repeat(50)).is_ok());
    }

    #[test]
    fn orders_numerically_not_as_text() {
        assert!(v("9") < v("10"));
        assert!(v("2") < v("10"));
        assert!(v("099") < v("100"));
        assert!(v("20240101000000") < v("20240101000001"));
        let mut all = [v("10"), v("9"), v("100"), v("1")];
        all.sort();
        let texts: Vec<_> = all.iter().map(|v| v.as_str()).collect();
        assert_eq!(texts, ["1", "9", "10", "100"]);
    }

    #[test]
    fn leading_zeros_are_numerically_equal_but_ordered() {
        assert!(v("01").numerically_equal(&v("1")));
        assert_ne!(v("01"), v("1"));
        assert!(v("01") < v("1"));
        assert!(v("0").numerically_equal(&v("000")));
    }

    #[test]
    fn stored_non_numeric_versions_sort_last() {
        assert!(v("99999") < Version::from_stored("abc"));
    }
}
