//! Where a YAML document went wrong, for a `file:line:column: message` report.
//!
//! serde-saphyr renders an error as `error: line L column C: what` followed by
//! a snippet of the offending lines, or (when it has no snippet) as `what at
//! line L, column C`. [`YamlError::new`] takes that apart once for every caller:
//! the position, the parser's sentence without the position it repeats, and
//! the snippet. [`field_path`] names the key on a line
//! (`bootstrap_requirements.directories[1].mode`) from the indentation of the
//! text, for messages whose parser sentence names only the last key.

/// A serde-saphyr error taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based; 0 when the parser knows no position.
    pub line: u64,
    /// 1-based; 0 when the parser knows no position.
    pub column: u64,
    /// What is wrong, without `error: ` and without the position.
    pub message: String,
    /// The offending lines as the parser shows them; empty when it shows none.
    pub snippet: String,
}

impl YamlError {
    pub fn new(e: &serde_saphyr::Error) -> YamlError {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let full = e.to_string();
        let (first, snippet) = full.split_once('\n').unwrap_or((&full, ""));
        let first = first.trim_start_matches("error: ");
        // `line L column C: what`
        let message = first
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("line "))
            .map_or(first, |(_, m)| m);
        // `what at line L, column C`
        let message = message
            .strip_suffix(&format!(" at line {line}, column {column}"))
            .unwrap_or(message);
        YamlError {
            line,
            column,
            message: message.to_owned(),
            snippet: snippet.to_owned(),
        }
    }

    /// Prefixes the message with the dotted path of the key on the error's
    /// line in `text` (the document that was parsed), when there is one:
    /// `bootstrap_requirements.directories[1].mod: unknown field `mod`, …`.
    pub fn with_field_path(mut self, text: &str) -> YamlError {
        if let Some(path) = field_path(text, self.line) {
            self.message = format!("{path}: {}", self.message);
        }
        self
    }
}

impl From<serde_saphyr::Error> for YamlError {
    fn from(e: serde_saphyr::Error) -> YamlError {
        YamlError::new(&e)
    }
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for YamlError {}

/// The dotted path of the YAML key on `line` (1-based), from the indentation of
/// the lines before it: `bootstrap_requirements.directories[1].mode`. A best
/// effort for messages, not a parser: flow collections (`{…}`, `[…]`) are not
/// looked into. `None` when no key leads to that line.
pub fn field_path(text: &str, line: u64) -> Option<String> {
    enum Seg {
        Key(String),
        Index(usize),
    }
    let mut stack: Vec<(usize, Seg)> = Vec::new();
    let line = usize::try_from(line).unwrap_or(usize::MAX);
    for raw in text.lines().take(line) {
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let mut pos = raw.len() - trimmed.len();
        let mut rest = trimmed;
        // Each `- ` opens the next item of the sequence at its indentation.
        while rest == "-" || rest.starts_with("- ") {
            while stack.last().is_some_and(|(i, _)| *i > pos) {
                stack.pop();
            }
            match stack.last_mut() {
                Some((i, Seg::Index(n))) if *i == pos => *n += 1,
                _ => stack.push((pos, Seg::Index(0))),
            }
            let after = rest[1..].trim_start_matches(' ');
            pos += rest.len() - after.len();
            rest = after;
        }
        if let Some(key) = key(rest) {
            while stack.last().is_some_and(|(i, _)| *i >= pos) {
                stack.pop();
            }
            stack.push((pos, Seg::Key(key)));
        }
    }
    let mut out = String::new();
    for (_, seg) in &stack {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The key a line's content starts with (`key:`, `"key":`, `'key':`).
fn key(s: &str) -> Option<String> {
    let (key, after) = if let Some(q) = s.strip_prefix('"') {
        let end = q.find('"')?;
        (&q[..end], &q[end + 1..])
    } else if let Some(q) = s.strip_prefix('\'') {
        let end = q.find('\'')?;
        (&q[..end], &q[end + 1..])
    } else {
        let end = s.find(':')?;
        let key = &s[..end];
        if key.is_empty() || key.contains([' ', '{', '[', '"', '\'']) {
            return None;
        }
        (key, &s[end..])
    };
    let after = after.strip_prefix(':')?;
    (after.is_empty() || after.starts_with(' ')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        path: String,
        #[serde(default)]
        port: Option<u16>,
    }

    fn error(text: &str) -> YamlError {
        serde_saphyr::from_str::<Doc>(text).unwrap_err().into()
    }

    #[test]
    fn an_unknown_key_gives_its_line_column_and_the_bare_sentence() {
        let e = error("name: a\nitems:\n  - path: x\n    mode: 1\n");
        assert_eq!((e.line, e.column), (4, 5));
        assert!(
            e.message.starts_with("unknown field `mode`"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("line"), "{}", e.message);
        assert!(!e.message.contains("error:"), "{}", e.message);
    }

    #[test]
    fn the_snippet_is_kept_apart() {
        let e = error("name: a\nitems:\n  - path: x\n    port: 70000\n");
        assert_eq!((e.line, e.column), (4, 11));
        assert_eq!(e.message, "invalid u16");
        assert!(e.snippet.contains("4 |     port: 70000"), "{}", e.snippet);
        assert!(!e.snippet.contains("invalid u16\n"), "{}", e.snippet);
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let e = error("name: [a\n");
        assert_eq!(e.line, 1);
        assert!(e.column > 0);
        assert!(!e.message.is_empty() && !e.message.contains("line 1"));
    }

    #[test]
    fn a_message_with_the_position_at_its_end_loses_it() {
        let e = error("");
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(e.message, "unexpected end of input");
        assert_eq!(e.snippet, "");
    }

    #[test]
    fn a_custom_message_passes_through() {
        let e = error("items: []\n");
        assert_eq!(e.message, "missing field `name`");
        assert_eq!(e.to_string(), "1:1: missing field `name`");
    }

    #[test]
    fn the_field_path_prefixes_the_message() {
        let text = "name: a\nitems:\n  - path: x\n  - path: y\n    mode: 1\n";
        let e = error(text).with_field_path(text);
        assert!(
            e.message.starts_with("items[1].mode: unknown field `mode`"),
            "{}",
            e.message
        );
        // No key on the line: the message stays as it was.
        let e = error("").with_field_path("");
        assert_eq!(e.message, "unexpected end of input");
    }

    #[test]
    fn field_paths_follow_indentation() {
        let text = "a:\n  b:\n  - x: 1\n    y: 2\n  - x: 3\n    z: 4\nc: 5\n";
        assert_eq!(field_path(text, 4).as_deref(), Some("a.b[0].y"));
        assert_eq!(field_path(text, 6).as_deref(), Some("a.b[1].z"));
        assert_eq!(field_path(text, 7).as_deref(), Some("c"));
        assert_eq!(field_path(text, 0), None);
    }

    #[test]
    fn field_paths_read_quoted_keys_nested_items_and_skip_comments() {
        let text = "# head\n---\n\"a b\":\n  - - 'k': 1\n    - q: 2\n";
        assert_eq!(field_path(text, 4).as_deref(), Some("a b[0][0].k"));
        assert_eq!(field_path(text, 5).as_deref(), Some("a b[0][1].q"));
        assert_eq!(field_path(text, 1), None);
    }
}
