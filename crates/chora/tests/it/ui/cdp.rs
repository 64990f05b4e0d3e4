//! A small Chrome DevTools Protocol client for the browser tests: Debian's
//! `chromium`, headless, driven over `--remote-debugging-pipe` (fd 3 carries
//! commands to the browser, fd 4 its answers and events, each message a JSON
//! text ended by a NUL byte). No WebSocket and no port to race for; the browser
//! is killed on drop.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Value>>>>;

pub struct Browser {
    child: Child,
    to: Mutex<File>,
    pending: Pending,
    next: AtomicU64,
    _profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    /// Starts headless Chromium with a fresh profile.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = pipe(); // we write, the browser reads (its fd 3)
        let (out_r, out_w) = pipe(); // the browser writes (its fd 4), we read
        let mut c = Command::new(chora_testkit::chromium());
        c.args([
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            "--window-size=1360,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                // Move both ends out of the way first, then onto 3 and 4
                // (dup2 clears close-on-exec on the copies).
                let a = libc::fcntl(cmd_r, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(out_w, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = c.spawn().expect("start chromium");
        // SAFETY: these fds are ours; the child has its own copies.
        unsafe {
            libc::close(cmd_r);
            libc::close(out_w);
        }
        let to = unsafe { File::from_raw_fd(cmd_w) };
        let from = unsafe { File::from_raw_fd(out_r) };
        let pending: Pending = Arc::default();
        let p2 = pending.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(v) = serde_json::from_slice::<Value>(&buf) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64)
                    && let Some(tx) = p2.lock().unwrap().remove(&id)
                {
                    let _ = tx.send(v);
                }
            }
        });
        Browser {
            child,
            to: Mutex::new(to),
            pending,
            next: AtomicU64::new(1),
            _profile: profile,
        }
    }

    /// Sends one command (to a page's session, or to the browser) and waits for
    /// its answer.
    pub fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap().insert(id, tx);
        {
            let mut to = self.to.lock().unwrap();
            let mut bytes = serde_json::to_vec(&msg).unwrap();
            bytes.push(0);
            to.write_all(&bytes).map_err(|e| e.to_string())?;
        }
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| format!("no answer to {method} within 30 s"))?;
        match v.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(v["result"].clone()),
        }
    }

    /// A new tab, attached (flat session).
    pub fn page(&self) -> Page<'_> {
        let t = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .unwrap();
        let s = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": t["targetId"], "flatten": true }),
            )
            .unwrap();
        let p = Page {
            browser: self,
            session: s["sessionId"].as_str().unwrap().to_owned(),
            target: t["targetId"].as_str().unwrap().to_owned(),
        };
        p.call("Page.enable", json!({}));
        p.call("Runtime.enable", json!({}));
        p
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
    target: String,
}

/// A tab is closed with its page (its connections with it: Chromium keeps at most
/// six per host, and an open dashboard holds one).
impl Drop for Page<'_> {
    fn drop(&mut self) {
        let _ = self.browser.call(
            None,
            "Target.closeTarget",
            json!({ "targetId": self.target }),
        );
    }
}

impl Page<'_> {
    pub fn call(&self, method: &str, params: Value) -> Value {
        self.browser
            .call(Some(&self.session), method, params)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Goes to `url` and waits for the document to have loaded.
    pub fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(15),
        );
    }

    /// The value of a JavaScript expression (promises awaited).
    pub fn eval(&self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` every 20 ms until it is truthy; returns its value and how
    /// long that took. Panics after `within`.
    #[track_caller]
    pub fn wait_for(&self, expr: &str, within: Duration) -> (Value, Duration) {
        let t = Instant::now();
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return (v, t.elapsed());
            }
            if t.elapsed() > within {
                panic!("`{expr}` did not become true within {within:?} (last: {v})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `light` or `dark` for `prefers-color-scheme`.
    pub fn color_scheme(&self, scheme: &str) {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        );
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }

    /// Performance metrics of the page (`Performance.getMetrics`) by name.
    pub fn metrics(&self) -> HashMap<String, f64> {
        self.call("Performance.enable", json!({}));
        let r = self.call("Performance.getMetrics", json!({}));
        r["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m["value"].as_f64().unwrap_or(0.0),
                )
            })
            .collect()
    }
}
