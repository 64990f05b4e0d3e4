//! One health check, as every starter of a service runs it: `http(s)://…` must
//! answer 2xx, `tcp://HOST:PORT` must accept a connection.

use std::time::Duration;

/// How long a `tcp://` check may take to connect.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);

/// True when `url` is a health endpoint chora can check.
pub fn is_checkable(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://") || tcp_addr(url).is_some()
}

fn tcp_addr(url: &str) -> Option<&str> {
    url.strip_prefix("tcp://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| {
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
}

/// One check: `Ok` on a 2xx answer (or an accepted connection), else why not.
pub async fn check(http: &reqwest::Client, url: &str) -> Result<(), String> {
    if let Some(addr) = tcp_addr(url) {
        return match tokio::time::timeout(TCP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {TCP_TIMEOUT:?}")),
        };
    }
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(chora_api::root_cause(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_checks_connect_and_http_checks_want_2xx() {
        let http = reqwest::Client::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(is_checkable(&format!("tcp://{addr}")));
        assert!(!is_checkable("tcp://nohost"));
        assert!(!is_checkable("ftp://x:1"));
        check(&http, &format!("tcp://{addr}")).await.unwrap();
        drop(l);
        assert!(check(&http, &format!("tcp://{addr}")).await.is_err());
        assert!(
            check(&http, &format!("http://{addr}/health"))
                .await
                .is_err()
        );
    }
}
