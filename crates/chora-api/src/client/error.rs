//! What can go wrong talking to the Manifest, and what an error answer
//! becomes.

use crate::ErrorBody;
use reqwest::StatusCode;

/// What can go wrong talking to the Manifest.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No configured URL answered at all.
    #[error("cannot reach the Manifest at {urls}: {reason}")]
    Unreachable { urls: String, reason: String },
    /// The instance or service does not exist (404).
    #[error("{message}")]
    NotFound { message: String },
    /// Any other error answer.
    #[error("the Manifest answered {status}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer was not what the protocol says.
    #[error("the Manifest at {url} sent an unexpected answer: {message}")]
    Protocol { url: String, message: String },
    #[error("invalid Manifest URL `{0}` (expected http://host:port)")]
    BadUrl(String),
}

impl ClientError {
    /// True when the write may have happened although it answered an error:
    /// the Manifest could not learn its outcome (`write_outcome_unknown`), or
    /// no node answered in time. Repeating it (the same id) is safe.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::Api { code, .. } => code == "write_outcome_unknown",
            // Unless every node refused the connection outright.
            ClientError::Unreachable { reason, .. } => {
                !reason.split("; ").all(|r| r.contains("refused"))
            }
            _ => false,
        }
    }

    /// True when nothing answered (the registry is down or unreachable).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }
}

impl ClientError {
    /// The error an answer that is not a success stands for: 404 is
    /// [`ClientError::NotFound`], a JSON error body an [`ClientError::Api`],
    /// anything else a [`ClientError::Protocol`].
    pub(super) async fn from_answer(resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let url = resp.url().to_string();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error, b.message),
            Err(_) => (String::new(), text.chars().take(200).collect()),
        };
        if status == StatusCode::NOT_FOUND {
            return ClientError::NotFound { message };
        }
        if code.is_empty() && message.is_empty() {
            return ClientError::Protocol {
                url,
                message: format!("status {status} with no body"),
            };
        }
        ClientError::Api {
            status: status.as_u16(),
            code,
            message,
        }
    }
}
