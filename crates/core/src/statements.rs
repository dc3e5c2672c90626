//! Splitting a migration into statements, for backends whose DDL commits one statement at a
//! time (MySQL, MariaDB): run one by one, the tool knows exactly how far a failed migration
//! got, and can say so.

/// The statements of `sql`, split on `;` outside quotes (`'`, `"`, `` ` ``) and comments
/// (`-- `, `#`, `/* */`), each trimmed, empty ones dropped. Comments stay in the statement
/// they belong to. Compound statements whose bodies hold `;` (`CREATE PROCEDURE ... BEGIN ...
/// END`) are not understood: [`has_compound_body`] tells when a migration has one.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                current.push(c);
                while let Some(d) = chars.next() {
                    current.push(d);
                    if d == '\\' && c != '`' {
                        if let Some(e) = chars.next() {
                            current.push(e);
                        }
                    } else if d == c {
                        if chars.peek() == Some(&c) {
                            current.push(chars.next().unwrap());
                        } else {
                            break;
                        }
                    }
                }
            }
            // MySQL starts a comment with `--` only when whitespace (or the end) follows: `5--1`
            // is arithmetic. Splitting differently from the server would send two statements
            // as one.
            '-' if chars.peek() == Some(&'-') && {
                let mut ahead = chars.clone();
                ahead.next();
                ahead
                    .next()
                    .is_none_or(|c| c.is_whitespace() || c.is_control())
            } =>
            {
                current.push(c);
                for d in chars.by_ref() {
                    current.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '#' => {
                current.push(c);
                for d in chars.by_ref() {
                    current.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                current.push(c);
                current.push(chars.next().unwrap());
                let mut last = ' ';
                for d in chars.by_ref() {
                    current.push(d);
                    if last == '*' && d == '/' {
                        break;
                    }
                    last = d;
                }
            }
            ';' => {
                push(&mut statements, &mut current);
            }
            _ => current.push(c),
        }
    }
    push(&mut statements, &mut current);
    statements
}

fn push(statements: &mut Vec<String>, current: &mut String) {
    let text = current.trim();
    if !is_only_comments(text) {
        statements.push(text.to_string());
    }
    current.clear();
}

/// Whether a piece of SQL holds nothing but whitespace and comments.
fn is_only_comments(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after
                .split_once("*/")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            return false;
        }
    }
}

/// Whether the SQL defines a routine, trigger or event with a `BEGIN ... END` body, whose
/// inner `;` [`split_statements`] would cut.
pub fn has_compound_body(sql: &str) -> bool {
    let words = |text: &str| -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_uppercase)
            .collect()
    };
    split_statements(sql).iter().any(|s| {
        // The routine's kind is in the header, before the first parenthesis: a table with
        // columns named `event` and `begin` is not a routine.
        let header = words(s.split('(').next().unwrap_or(""));
        header.first().map(String::as_str) == Some("CREATE")
            && header
                .iter()
                .any(|w| ["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT"].contains(&w.as_str()))
            && words(s).iter().any(|w| w == "BEGIN")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_dash_without_space_is_not_a_comment() {
        assert_eq!(
            split_statements(
                "CREATE TABLE t AS SELECT 5--1 AS x; CREATE TABLE u (a INT);\n-- done"
            ),
            vec![
                "CREATE TABLE t AS SELECT 5--1 AS x".to_string(),
                "CREATE TABLE u (a INT)".to_string()
            ]
        );
        assert_eq!(
            split_statements("SELECT 1 -- one; two\n; SELECT 2"),
            vec!["SELECT 1 -- one; two".to_string(), "SELECT 2".to_string()]
        );
    }

    #[test]
    fn splits_outside_quotes_and_comments() {
        let sql = "CREATE TABLE a (id INT);\n-- a comment; with a semicolon\nINSERT INTO a VALUES (1), (2);\nINSERT INTO notes VALUES ('x;y', \"p;q\", 'it''s; fine', 'back\\'slash;');\nSELECT `odd;name` FROM t /* c; d */ ;\n# last; comment\n";
        let got = split_statements(sql);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(got[0], "CREATE TABLE a (id INT)");
        assert!(got[1].starts_with("-- a comment; with a semicolon\nINSERT"));
        assert!(got[2].contains("'back\\'slash;'"));
        assert!(got[3].ends_with("/* c; d */"));
    }

    #[test]
    fn drops_empty_and_comment_only_pieces() {
        assert!(split_statements("  ;; -- nothing\n /* at all */ ;").is_empty());
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1"]);
    }

    #[test]
    fn finds_compound_bodies() {
        assert!(has_compound_body(
            "CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END"
        ));
        assert!(!has_compound_body("CREATE TABLE t (id INT); BEGIN;"));
    }
}
