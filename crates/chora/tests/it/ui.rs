//! The dashboard (DESIGN.md §12): its auth over plain HTTP, and the page itself
//! in headless Chromium (Debian's `chromium` over the DevTools protocol): the
//! services live, a crash seen without a reload, the restart button, a page that
//! survives an orchestrator restart; each row's charts (§16) in `charts.rs`.

mod bench;
pub mod cdp;
pub mod charts;

use crate::bootstrap::{SERVICES, Site};
use cdp::{Browser, Page};
use chora_testkit::chromium_available;
use std::time::{Duration, Instant};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn base(site: &Site) -> String {
    format!("http://127.0.0.1:{}", site.port("orchestrator"))
}

fn login_url(site: &Site) -> String {
    let url = site.ok(&["bootstrap", "ui"]).trim().to_owned();
    assert!(
        url.starts_with(&format!("{}/ui/login?token=", base(site))),
        "{url}"
    );
    url
}

/// The session cookie a login answer sets (`name=value`).
fn session_cookie(r: &reqwest::Response) -> String {
    let c = r
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(c.contains(attr), "{c} lacks {attr}");
    }
    c.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn every_dashboard_route_needs_the_session_and_the_login_link_works_once() {
    let site = Site::new();
    let out = site.ok(&["bootstrap", "--skip-validation"]);
    let (c, b) = (http(), base(&site));
    // The closing block names the dashboard; status shows the uptime.
    assert!(
        out.contains(
            "System Status:\n  8 services running\n  8 services healthy\n  0 services unhealthy"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Access Orchestrator UI: {b}/ui (log in with: chora bootstrap ui)"
        )),
        "{out}"
    );
    let status = site.ok(&["bootstrap", "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uptime: ") && l.ends_with('s')),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&site.ok(&["bootstrap", "status", "--format", "json"])).unwrap();
    assert!(json["uptime_seconds"].is_u64(), "{json}");

    // Without a session: refused, the event stream and the buttons included.
    for path in ["/ui", "/ui/events", "/ui/logs/analyzer", "/ui/app.js"] {
        let r = c.get(format!("{b}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "GET {path}");
    }
    let r = c
        .post(format!("{b}/ui/services/analyzer/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A forged or admin token does not log in; the real link works once.
    let admin = {
        let creds =
            chora_api::auth::Credentials::load(&site.home().join("credentials.json")).unwrap();
        chora_api::auth::mint_admin_token(creds.jwt_secret().unwrap(), "t", Duration::from_secs(60))
    };
    let r = c
        .get(format!("{b}/ui/login?token={admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an admin token is not a login token");
    let url = login_url(&site);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    let cookie = session_cookie(&r);
    let again = c.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 401, "the one-time token worked twice");
    assert!(again.headers().get("set-cookie").is_none());
    // Nor is the login token an admin token for the API.
    let token = url.split("token=").nth(1).unwrap();
    let r = c
        .get(format!("{b}/v1/services"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // With the session: the page, readable without JavaScript, no secret in it.
    let r = c
        .get(format!("{b}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.text().await.unwrap();
    let secrets = std::fs::read_to_string(site.home().join("credentials.json")).unwrap();
    let secrets: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&secrets).unwrap();
    for (k, v) in &secrets {
        assert!(!html.contains(v.as_str()), "the page shows {k}");
    }
    for name in SERVICES {
        assert!(
            html.contains(&format!("<tr data-service=\"{name}\" data-status=\"up\"")),
            "{name} is not listed as up:\n{html}"
        );
    }
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // Buttons: a POST without the CSRF token, or from another origin, is refused.
    let act = format!("{b}/ui/services/storage/restart");
    let r = c.post(&act).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 403, "no CSRF token");
    let r = c
        .post(&act)
        .header("cookie", &cookie)
        .header("x-csrf-token", "0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a wrong CSRF token");
    let r = c
        .post(&act)
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another origin");
    // The form of the page without JavaScript: token in the body, then back to /ui.
    let r = c
        .post(&act)
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = c
        .post(format!("{b}/ui/services/storage/restart"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["state"], "running");

    // The log tail streams the service's log.
    let mut r = c
        .get(format!("{b}/ui/logs/storage"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("a first chunk")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&chunk).contains("storage"),
        "{chunk:?}"
    );
}

/// Logs in through the page, as a person does, and waits for the live table.
pub(crate) fn open_dashboard<'b>(site: &Site, browser: &'b Browser) -> Page<'b> {
    let page = browser.page();
    page.navigate(&login_url(site));
    page.wait_for(
        "location.pathname === '/ui' && document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(10),
    );
    page
}

fn status_of(page: &Page, name: &str) -> String {
    page.eval(&format!(
        "(document.querySelector('tr[data-service=\"{name}\"]') || {{dataset: {{}}}}).dataset.status || ''"
    ))
    .as_str()
    .unwrap_or("")
    .to_owned()
}

fn pid_shown(page: &Page, name: &str) -> String {
    page.eval(&format!(
        "document.querySelector('tr[data-service=\"{name}\"] .pid').textContent"
    ))
    .as_str()
    .unwrap()
    .to_owned()
}

pub(crate) fn all_up(page: &Page) {
    let names = serde_json::to_string(&SERVICES).unwrap();
    page.wait_for(
        &format!(
            "{names}.every(n => {{ const r = document.querySelector(`tr[data-service=\"${{n}}\"]`); return r && r.dataset.status === 'up'; }})"
        ),
        Duration::from_secs(15),
    );
}

fn kill9(pid: u32) {
    // SAFETY: a pid this test found listening on its own port.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn the_dashboard_follows_crashes_and_restarts_live_in_a_browser() {
    if !chromium_available("ui::the_dashboard_follows_crashes_and_restarts_live_in_a_browser") {
        return;
    }
    let site = Site::new();
    site.ok(&["bootstrap"]);
    let browser = Browser::launch();
    let page = open_dashboard(&site, &browser);
    all_up(&page);
    let rows = page.eval("document.querySelectorAll('#services tbody tr').length");
    assert_eq!(rows, 8);
    // The page learns of the bootstrap's last state write when the
    // orchestrator's feed next looks at the files (it may have looked just
    // before the run completed).
    let phases = "document.querySelectorAll('.phases li.completed').length";
    page.wait_for(&format!("{phases} === 5"), Duration::from_secs(10));
    assert_eq!(page.eval(phases), 5, "all five phases completed");

    // Record every status the storage row shows, however briefly.
    page.eval(
        "window.seen = []; new MutationObserver(() => { \
           const r = document.querySelector('tr[data-service=\"storage\"]'); \
           const s = r ? r.dataset.status : 'gone'; \
           if (seen[seen.length - 1] !== s) seen.push(s); \
         }).observe(document.querySelector('#services tbody'), \
           {childList: true, subtree: true, attributes: true}); true",
    );
    let loads = page.eval("performance.getEntriesByType('navigation').length");

    // kill -9 a capability: its row leaves `up` within a second, without a reload.
    let pid = site.pid_of("storage");
    let killed = Instant::now();
    kill9(pid);
    // Read off the transitions the page recorded, not its current state: a
    // restart can be quicker than one poll of this test.
    page.wait_for("seen.some(s => s !== 'up')", Duration::from_secs(5));
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_secs(1),
        "the page saw the crash after {noticed:?}"
    );
    // The orchestrator restarts it (0.2 s backoff): up again, with a new pid.
    page.wait_for(
        &format!(
            "document.querySelector('tr[data-service=\"storage\"]').dataset.status === 'up' && \
             !document.querySelector('tr[data-service=\"storage\"] .pid').textContent.includes('{pid}')"
        ),
        Duration::from_secs(10),
    );
    let seen = page.eval("seen");
    let seen: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let left = seen.iter().position(|s| *s != "up");
    assert!(
        left.is_some() && seen.last() == Some(&"up"),
        "the storage row went {seen:?}"
    );
    assert_ne!(site.pid_of("storage"), pid);

    // The restart button restarts analyzer: another pid.
    let before = pid_shown(&page, "analyzer");
    let os_before = site.pid_of("analyzer");
    page.eval(
        "document.querySelector('tr[data-service=\"analyzer\"] button[data-action=\"restart\"]').click(); true",
    );
    page.wait_for(
        &format!(
            "document.querySelector('tr[data-service=\"analyzer\"]').dataset.status === 'up' && \
             document.querySelector('tr[data-service=\"analyzer\"] .pid').textContent !== '{before}'"
        ),
        Duration::from_secs(10),
    );
    assert_ne!(
        site.pid_of("analyzer"),
        os_before,
        "the process was not restarted"
    );
    assert_eq!(status_of(&page, "analyzer"), "up");

    // The stop button stops it; start brings it back.
    page.eval(
        "document.querySelector('tr[data-service=\"analyzer\"] button[data-action=\"stop\"]').click(); true",
    );
    // Down as soon as it leaves the Manifest; Start is enabled once the
    // orchestrator has it stopped.
    page.wait_for(
        "document.querySelector('tr[data-service=\"analyzer\"]').dataset.status === 'down' && \
         document.querySelector('tr[data-service=\"analyzer\"] button[data-action=\"start\"]:not([disabled])') !== null",
        Duration::from_secs(10),
    );
    page.eval(
        "document.querySelector('tr[data-service=\"analyzer\"] button[data-action=\"start\"]').click(); true",
    );
    page.wait_for(
        "document.querySelector('tr[data-service=\"analyzer\"]').dataset.status === 'up'",
        Duration::from_secs(10),
    );

    // The log tail follows.
    page.eval("document.querySelector('a[data-logs=\"analyzer\"]').click(); true");
    page.wait_for(
        "document.getElementById('log').textContent.includes('analyzer')",
        Duration::from_secs(5),
    );

    // A Manifest restart: the page says so, shows it down, then all up again.
    kill9(site.pid_of("manifest"));
    page.wait_for(
        "!document.getElementById('manifest-banner').hidden && \
         document.querySelector('tr[data-service=\"manifest\"]').dataset.status === 'down'",
        Duration::from_secs(5),
    );
    site.ok(&["bootstrap"]);
    page.wait_for(
        "document.getElementById('manifest-banner').hidden",
        Duration::from_secs(10),
    );
    all_up(&page);

    // An orchestrator restart: the page says it is reconnecting, then is live
    // again on the same session, with everything up.
    kill9(site.pid_of("orchestrator"));
    page.wait_for(
        "document.getElementById('conn').dataset.state === 'reconnecting'",
        Duration::from_secs(5),
    );
    site.ok(&["bootstrap"]);
    page.wait_for(
        "document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(15),
    );
    all_up(&page);
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation').length"),
        loads,
        "the page was reloaded"
    );
}
