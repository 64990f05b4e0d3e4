//! Dashboard sessions: a random id in an HttpOnly, SameSite=Strict cookie, looked
//! up in a server-side table, each with its own CSRF token; and the login
//! tokens already spent (each works once). With a chora home, the table is kept
//! in `<home>/run/ui-sessions.json` (0600), so an open page survives an
//! orchestrator restart and a spent token stays spent.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "chora_ui";
/// How long a session lasts.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub csrf: String,
    pub expires: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Table {
    sessions: HashMap<String, Session>,
    /// Spent login-token ids and when they expire (then forgetting them is safe).
    spent: HashMap<String, u64>,
}

pub struct Sessions {
    table: Mutex<Table>,
    file: Option<PathBuf>,
}

fn now() -> u64 {
    chora_api::auth::unix_seconds()
}

/// Equality that takes the same time wherever the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// The table, loaded from `<home>/run/ui-sessions.json` when there is a home.
    pub fn new(home: Option<&std::path::Path>) -> Sessions {
        let file = home.map(|h| h.join("run").join("ui-sessions.json"));
        let table = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Sessions {
            table: Mutex::new(table),
            file,
        }
    }

    /// Spends a login token's `jti` (valid until `exp`) and opens a session.
    /// `None` when that token was spent already.
    pub fn login(&self, jti: &str, exp: u64) -> Option<(String, Session)> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let n = now();
        t.spent.retain(|_, e| *e >= n);
        t.sessions.retain(|_, s| s.expires > n);
        if t.spent.contains_key(jti) {
            return None;
        }
        t.spent.insert(jti.to_owned(), exp);
        let id = chora_api::random_hex(32);
        let s = Session {
            csrf: chora_api::random_hex(32),
            expires: n + SESSION_TTL_SECS,
        };
        t.sessions.insert(id.clone(), s.clone());
        self.save(&t);
        Some((id, s))
    }

    /// The session of a cookie id, if it is live.
    pub fn get(&self, id: &str) -> Option<Session> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.sessions.get(id).filter(|s| s.expires > now()).cloned()
    }

    /// Ends a session.
    pub fn logout(&self, id: &str) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.sessions.remove(id).is_some() {
            self.save(&t);
        }
    }

    fn save(&self, t: &Table) {
        let Some(f) = &self.file else { return };
        if let Err(e) = write_private(f, &serde_json::to_vec(t).expect("serializes")) {
            tracing::warn!(error = %e, path = %f.display(), "cannot save the dashboard sessions");
        }
    }
}

/// Writes a 0600 file atomically (temp file, rename).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".ui-sessions.{}.tmp", chora_api::random_hex(4)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_SECS}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_id_opens_one_session_only_and_sessions_persist() {
        let dir = std::env::temp_dir().join(format!("chora-sess-{}", chora_api::random_hex(4)));
        let s = Sessions::new(Some(&dir));
        let (id, sess) = s.login("jti-1", now() + 60).unwrap();
        assert!(s.login("jti-1", now() + 60).is_none(), "spent");
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        assert!(s.get("nope").is_none());
        // Another orchestrator on the same home knows the session and the spent id.
        let again = Sessions::new(Some(&dir));
        assert!(again.get(&id).is_some());
        assert!(again.login("jti-1", now() + 60).is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("run/ui-sessions.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        again.logout(&id);
        assert!(again.get(&id).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cookies_are_parsed_and_compared_in_constant_time() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("cookie", "a=1; chora_ui=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
