//! Streamed answers: the gateway writes one JSON object a line (`{"result": …}`,
//! or `{"error": …}` when the stream ends badly) and flushes each. A watch is
//! such an answer that stays open.

use crate::wire::{StreamLine, WatchResponse, b64, prefix_end};
use crate::{ATTEMPT_TIMEOUT, Error, Failure};
use serde::de::DeserializeOwned;
use std::sync::atomic::Ordering;

/// Reads a streamed answer line by line. Cancel-safe: a [`Lines::next`]
/// dropped while it waits loses nothing (bytes are kept only once read).
pub(crate) struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Where to look for the next newline (bytes before it have none).
    scanned: usize,
    /// Who answers, as error messages name it.
    pub(crate) url: String,
}

impl Lines {
    pub(crate) fn new(resp: reqwest::Response, url: String) -> Lines {
        Lines {
            resp,
            buf: Vec::new(),
            scanned: 0,
            url,
        }
    }

    /// The next message; `Ok(None)` when the answer ended cleanly.
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Failure> {
        loop {
            if let Some(nl) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + nl;
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return self.parse(line).map(Some);
            }
            self.scanned = self.buf.len();
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) if self.buf.trim_ascii().is_empty() => return Ok(None),
                Ok(None) => {
                    let rest = std::mem::take(&mut self.buf);
                    self.scanned = 0;
                    return self.parse(rest.trim_ascii()).map(Some);
                }
                Err(e) => return Err(Failure::from_reqwest(&e, true)),
            }
        }
    }

    fn parse<T: DeserializeOwned>(&self, line: &[u8]) -> Result<T, Failure> {
        let msg: StreamLine<T> = serde_json::from_slice(line)
            .map_err(|e| Failure::Unknown(format!("{}: unexpected answer ({e})", self.url)))?;
        match (msg.result, msg.error) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(Failure::from_etcd(e.grpc_code, e.message)),
            (None, None) => Err(Failure::Unknown(format!(
                "{}: an empty message in a stream",
                self.url
            ))),
        }
    }
}

/// A watch on one endpoint: [`Watch::next`] gives each batch of changes in
/// revision order. It ends (`Ok(None)` or an error) when that endpoint goes
/// away or cancels it; a member cut off from the network may instead fall
/// silent, which only asking it tells ([`crate::Client::serves`]).
pub struct Watch {
    pub(crate) lines: Lines,
    pub(crate) endpoint: usize,
}

impl Watch {
    /// The next batch of changes (or a cancellation: `canceled`,
    /// `compact_revision`); `Ok(None)` when the stream ended. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, Error> {
        self.lines.next().await.map_err(Failure::into_error)
    }

    /// The endpoint this watch runs on (for [`crate::Client::serves`] and
    /// [`crate::Client::avoid`]).
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }
}

impl crate::Client {
    /// Watches every key that starts with `prefix`, from `start_revision`
    /// on: on the first endpoint (in the usual order) that sets it up within
    /// an attempt's time.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, Error> {
        let body = serde_json::json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last = Failure::NotSent("no endpoint".into());
        for k in 0..n {
            let i = (start + k) % n;
            let url = format!("{}/v3/watch", self.inner.endpoints[i]);
            let open = async {
                let resp = self
                    .post(&url, body.clone())
                    .send()
                    .await
                    .map_err(|e| Failure::from_reqwest(&e, true))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(Failure::Unknown(format!("{url}: HTTP {status}: {text}")));
                }
                let mut lines = Lines::new(resp, url.clone());
                match lines.next::<WatchResponse>().await? {
                    Some(first) if first.created && !first.canceled => {
                        Ok(Watch { lines, endpoint: i })
                    }
                    Some(first) => Err(Failure::Refused {
                        code: 0,
                        message: format!("watch not created: {}", first.cancel_reason),
                    }),
                    None => Err(Failure::Unknown(format!("{url}: the watch ended at once"))),
                }
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, open).await {
                Ok(Ok(w)) => {
                    self.answered(i);
                    return Ok(w);
                }
                Ok(Err(f)) => last = f,
                Err(_) => last = Failure::Unknown(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
            }
        }
        Err(last.into_error())
    }
}
