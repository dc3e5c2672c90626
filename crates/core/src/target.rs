use std::fmt;
use std::str::FromStr;

/// Where a user wants a bind to be, as written on the command line.
///
/// - `head`: the newest migration of the chain (upgrade);
/// - `base`: nothing applied (downgrade);
/// - `+N`: N more migrations (upgrade); `-N`: revert the N newest applied (downgrade);
/// - anything else names a revision: a version, a full folder name, or a unique prefix of
///   either. An upgrade applies up to and including it; a downgrade keeps it and reverts
///   everything after it (as `flask db downgrade REV`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `head`: every pending migration, up to the newest of the chain (an upgrade).
    Head,
    /// `base`: revert every applied migration (a downgrade).
    Base,
    /// `+N`: apply the next N pending migrations (an upgrade); N is above 0.
    Forward(usize),
    /// `-N`: revert the N newest applied migrations (a downgrade); N is above 0.
    Back(usize),
    /// A version, a full folder name, or a unique prefix of either, as written.
    Revision(String),
}

/// Why a command-line text is not a [`Target`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The text is empty or only whitespace.
    #[error("the target is empty; use `head`, `base`, `+N`, `-N` or a revision")]
    Empty,
    /// The text starts with `+` or `-` but the rest is not a whole number above 0; holds the
    /// text as given.
    #[error(
        "`{0}` is not a valid relative target; write `+N` or `-N` with N a whole number above 0"
    )]
    BadRelative(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Target, TargetError> {
        let text = text.trim();
        match text {
            "" => Err(TargetError::Empty),
            "head" | "heads" => Ok(Target::Head),
            "base" => Ok(Target::Base),
            _ => {
                let relative = |digits: &str| -> Result<usize, TargetError> {
                    match digits.parse::<usize>() {
                        Ok(n) if n > 0 && digits.chars().all(|c| c.is_ascii_digit()) => Ok(n),
                        _ => Err(TargetError::BadRelative(text.to_string())),
                    }
                };
                if let Some(n) = text.strip_prefix('+') {
                    Ok(Target::Forward(relative(n)?))
                } else if let Some(n) = text.strip_prefix('-') {
                    Ok(Target::Back(relative(n)?))
                } else {
                    Ok(Target::Revision(text.to_string()))
                }
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Head => f.write_str("head"),
            Target::Base => f.write_str("base"),
            Target::Forward(n) => write!(f, "+{n}"),
            Target::Back(n) => write!(f, "-{n}"),
            Target::Revision(r) => f.write_str(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("head".parse(), Ok(Target::Head));
        assert_eq!("base".parse(), Ok(Target::Base));
        assert_eq!("+2".parse(), Ok(Target::Forward(2)));
        assert_eq!("-1".parse(), Ok(Target::Back(1)));
        assert_eq!(
            "2024-01-01-000000_x".parse(),
            Ok(Target::Revision("2024-01-01-000000_x".into()))
        );
        assert_eq!("".parse::<Target>(), Err(TargetError::Empty));
        assert!(matches!(
            "+0".parse::<Target>(),
            Err(TargetError::BadRelative(_))
        ));
        assert!(matches!(
            "-x".parse::<Target>(),
            Err(TargetError::BadRelative(_))
        ));
        assert!(matches!(
            "+-1".parse::<Target>(),
            Err(TargetError::BadRelative(_))
        ));
    }
}
