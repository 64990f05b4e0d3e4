//! analyzer: `POST /analyze {text}` → `{words, chars, lines, top_words}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::routing::post;
use chora_service::{ApiError, body};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCount {
    pub word: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    pub words: u64,
    pub chars: u64,
    pub lines: u64,
    /// The ten most frequent words (lower-cased, punctuation trimmed), most
    /// frequent first, ties alphabetical.
    pub top_words: Vec<WordCount>,
}

/// The analysis of `text`.
pub fn analyze(text: &str) -> Analysis {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0;
    for raw in text.split_whitespace() {
        words += 1;
        let w = raw
            .trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase();
        if !w.is_empty() {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut top: Vec<WordCount> = counts
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(10);
    Analysis {
        words,
        chars: text.chars().count() as u64,
        lines: text.lines().count() as u64,
        top_words: top,
    }
}

async fn handle(b: Result<Bytes, BytesRejection>) -> Result<axum::Json<Analysis>, ApiError> {
    let req: Request = body::json(&body::bytes(b)?)?;
    Ok(axum::Json(analyze(&req.text)))
}

pub fn router() -> Router {
    Router::new().route("/analyze", post(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_chars_lines_and_top_words() {
        let a = analyze("The cat, the dog.\nThe END é");
        assert_eq!(a.words, 7);
        assert_eq!(a.chars, 27);
        assert_eq!(a.lines, 2);
        assert_eq!(
            a.top_words[0],
            WordCount {
                word: "the".into(),
                count: 3
            }
        );
        assert_eq!(a.top_words[1].word, "cat");
        assert_eq!(analyze("").words, 0);
    }
}
