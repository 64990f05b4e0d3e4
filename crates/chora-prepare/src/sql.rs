//! Schema files: split into statements (SQLite's own `sqlite3_complete` decides
//! where one ends, so semicolons in strings, comments and trigger bodies are
//! handled as SQLite handles them) and told apart by what they create.
//!
//! Invariants: the statements are the schema's text, in order, each with the
//! line of its first token (for messages); nothing is rewritten. A statement
//! this classifier cannot read is `Kind::Other`, never an error: it runs
//! (and SQLite judges it) when the database is made, and is not repeated on
//! one that exists. `TEMP` objects are not part of a file's schema (`Other`).

use std::ffi::CString;

/// One statement of a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    /// 1-based line of its first token in the schema file.
    pub line: usize,
    /// Its position among the schema's statements, 1-based.
    pub number: usize,
    pub kind: Kind,
}

impl Statement {
    /// The first line of the statement, for messages.
    pub fn head(&self) -> String {
        let first = self
            .sql
            .trim_start()
            .lines()
            .next()
            .unwrap_or_default()
            .trim();
        let mut s: String = first.chars().take(100).collect();
        if s.len() < first.len() {
            s.push('…');
        }
        s
    }
}

/// What a statement makes. Names are lower-case (SQLite compares them without
/// regard to ASCII case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Table(String),
    Index { name: String, table: String },
    View(String),
    Trigger { name: String, table: String },
    Insert(String),
    Pragma,
    Other,
}

impl Kind {
    /// The schema object this statement creates, as (sqlite_master type, name).
    pub fn object(&self) -> Option<(&'static str, &str)> {
        match self {
            Kind::Table(n) => Some(("table", n)),
            Kind::Index { name, .. } => Some(("index", name)),
            Kind::View(n) => Some(("view", n)),
            Kind::Trigger { name, .. } => Some(("trigger", name)),
            _ => None,
        }
    }
}

/// Splits `sql` into statements, dropping empty ones and comments.
pub fn split(sql: &str) -> Result<Vec<Statement>, String> {
    if sql.contains('\0') {
        return Err("the schema contains a NUL byte".into());
    }
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = sql.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b != b';' {
            continue;
        }
        let candidate = &sql[start..=i];
        if complete(candidate) {
            push(&mut out, sql, start, candidate);
            start = i + 1;
        }
    }
    let rest = &sql[start..];
    if first_token_offset(rest).is_some() {
        push(&mut out, sql, start, rest);
    }
    Ok(out)
}

fn push(out: &mut Vec<Statement>, whole: &str, start: usize, text: &str) {
    let Some(off) = first_token_offset(text) else {
        return;
    };
    let line = whole[..start + off].matches('\n').count() + 1;
    out.push(Statement {
        sql: text[off..].to_owned(),
        line,
        number: out.len() + 1,
        kind: classify(&text[off..]),
    });
}

fn complete(sql: &str) -> bool {
    let Ok(c) = CString::new(sql) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // sqlite3_complete only reads it.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Punct(char),
}

impl Tok {
    fn is_word(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x.eq_ignore_ascii_case(w))
    }

    fn name(&self) -> Option<String> {
        match self {
            Tok::Word(w) | Tok::Quoted(w) => Some(w.to_ascii_lowercase()),
            Tok::Punct(_) => None,
        }
    }
}

/// Tokens of an SQL statement, skipping whitespace and comments.
struct Tokens<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(s: &'a str) -> Tokens<'a> {
        Tokens { s, pos: 0 }
    }

    fn skip_space(&mut self) {
        let b = self.s.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.s[self.pos..].starts_with("--") {
                self.pos = self.s[self.pos..]
                    .find('\n')
                    .map_or(b.len(), |n| self.pos + n + 1);
            } else if self.s[self.pos..].starts_with("/*") {
                self.pos = self.s[self.pos + 2..]
                    .find("*/")
                    .map_or(b.len(), |n| self.pos + 2 + n + 2);
            } else {
                return;
            }
        }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        self.skip_space();
        let rest = &self.s[self.pos..];
        let c = rest.chars().next()?;
        let close = match c {
            '"' => Some('"'),
            '`' => Some('`'),
            '\'' => Some('\''),
            '[' => Some(']'),
            _ => None,
        };
        if let Some(close) = close {
            let mut value = String::new();
            let mut chars = rest.char_indices().skip(1).peekable();
            let mut end = rest.len();
            while let Some((i, ch)) = chars.next() {
                if ch == close {
                    // A doubled quote is an escaped quote (not for brackets).
                    if close != ']' && chars.peek().map(|(_, n)| *n) == Some(close) {
                        value.push(close);
                        chars.next();
                        continue;
                    }
                    end = i + ch.len_utf8();
                    break;
                }
                value.push(ch);
            }
            self.pos += end;
            return Some(Tok::Quoted(value));
        }
        if c.is_alphanumeric() || c == '_' || c == '$' {
            let len = rest
                .char_indices()
                .find(|(_, ch)| !(ch.is_alphanumeric() || *ch == '_' || *ch == '$'))
                .map_or(rest.len(), |(i, _)| i);
            self.pos += len;
            return Some(Tok::Word(rest[..len].to_owned()));
        }
        self.pos += c.len_utf8();
        Some(Tok::Punct(c))
    }
}

fn first_token_offset(s: &str) -> Option<usize> {
    let mut t = Tokens::new(s);
    t.skip_space();
    (t.pos < s.len()).then_some(t.pos)
}

/// Reads `[schema.]name`.
fn qualified_name(t: &mut std::iter::Peekable<Tokens<'_>>) -> Option<String> {
    let mut name = t.next()?.name()?;
    while t.peek() == Some(&Tok::Punct('.')) {
        t.next();
        name = t.next()?.name()?;
    }
    Some(name)
}

fn skip_if_not_exists(t: &mut std::iter::Peekable<Tokens<'_>>) {
    if t.peek().is_some_and(|x| x.is_word("IF")) {
        t.next();
        t.next(); // NOT
        t.next(); // EXISTS
    }
}

fn classify(sql: &str) -> Kind {
    classify_opt(sql).unwrap_or(Kind::Other)
}

fn classify_opt(sql: &str) -> Option<Kind> {
    let mut t = Tokens::new(sql).peekable();
    let first = t.next()?;
    if first.is_word("PRAGMA") {
        return Some(Kind::Pragma);
    }
    if first.is_word("INSERT") || first.is_word("REPLACE") {
        if t.peek().is_some_and(|x| x.is_word("OR")) {
            t.next();
            t.next();
        }
        if !t.next()?.is_word("INTO") {
            return None;
        }
        return Some(Kind::Insert(qualified_name(&mut t)?));
    }
    if !first.is_word("CREATE") {
        return None;
    }
    let mut what = t.next()?;
    if what.is_word("TEMP") || what.is_word("TEMPORARY") {
        return None; // not part of the file
    }
    if what.is_word("UNIQUE") {
        what = t.next()?;
    }
    if what.is_word("VIRTUAL") {
        what = t.next()?;
    }
    if what.is_word("TABLE") {
        skip_if_not_exists(&mut t);
        Some(Kind::Table(qualified_name(&mut t)?))
    } else if what.is_word("INDEX") {
        skip_if_not_exists(&mut t);
        let name = qualified_name(&mut t)?;
        if !t.next()?.is_word("ON") {
            return None;
        }
        Some(Kind::Index {
            name,
            table: qualified_name(&mut t)?,
        })
    } else if what.is_word("VIEW") {
        skip_if_not_exists(&mut t);
        Some(Kind::View(qualified_name(&mut t)?))
    } else if what.is_word("TRIGGER") {
        skip_if_not_exists(&mut t);
        let name = qualified_name(&mut t)?;
        while !t.next()?.is_word("ON") {}
        Some(Kind::Trigger {
            name,
            table: qualified_name(&mut t)?,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_sqlite() {
        let sql = "-- a schema\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n/* two; */ CREATE TABLE IF NOT EXISTS \"B\" (y);\nCREATE UNIQUE INDEX a_x ON a (x);\nCREATE TRIGGER t AFTER INSERT ON main.[b] BEGIN\n  INSERT INTO a VALUES ('x;y');\nEND;\nINSERT OR IGNORE INTO a VALUES ('z');\nPRAGMA user_version = 3;\nCREATE VIEW v AS SELECT * FROM a\n-- trailing comment\n";
        let s = split(sql).unwrap();
        let kinds: Vec<_> = s.iter().map(|s| (s.kind.clone(), s.line)).collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Table("a".into()), 2),
                (Kind::Table("b".into()), 4),
                (
                    Kind::Index {
                        name: "a_x".into(),
                        table: "a".into()
                    },
                    5
                ),
                (
                    Kind::Trigger {
                        name: "t".into(),
                        table: "b".into()
                    },
                    6
                ),
                (Kind::Insert("a".into()), 9),
                (Kind::Pragma, 10),
                (Kind::View("v".into()), 11),
            ]
        );
        assert_eq!(s[0].head(), "CREATE TABLE a (x TEXT DEFAULT ';');");
        assert_eq!(s[6].number, 7);
    }

    #[test]
    fn comments_only_is_empty() {
        assert!(split("-- nothing\n/* here */\n").unwrap().is_empty());
    }
}
