//! The dashboard of a fleet, from the operator's machine.

use crate::prod::Prod;
use std::time::{Duration, Instant};

/// `chora bootstrap ui` on a fleet: its login link answers here, through
/// the door over SSH, for as long as the command runs (until Ctrl-C), and
/// the page lists the units `up`; once it ends, nothing answers there.
pub(super) fn dashboard(p: &Prod) {
    use std::io::{BufRead, Read};
    use std::process::Stdio;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        p.command(&["bootstrap", "ui"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_owned();
    let base = format!("http://127.0.0.1:{}", p.port("orchestrator"));
    assert!(url.starts_with(&format!("{base}/ui/login?token=")), "{url}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let html = rt.block_on(async {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 303);
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let r = http
            .get(format!("{base}/ui"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    });
    for name in ["manifest", "gateway", "analyzer"] {
        assert!(
            html.contains(&format!("<tr data-service=\"{name}\" data-status=\"up\"")),
            "{name} is not listed as up:\n{html}"
        );
    }
    // It holds the door until Ctrl-C, then ends well, and the door with it.
    assert!(child.0.try_wait().unwrap().is_none(), "ui ended by itself");
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "ui ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("press Ctrl-C to close it"), "{err}");
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{}", p.port("orchestrator"))).is_err(),
        "the door outlived the command"
    );
}
