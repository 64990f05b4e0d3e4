//! Health waits (DESIGN.md §2): GET the health URL until `required_consecutive`
//! answers of 200 in a row. The delay after a failure starts at `initial_delay`,
//! grows by `backoff_factor` and caps at `max_delay`; between successes it is
//! `initial_delay`.

use crate::config::Retry;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url} was not healthy within {} (last: {last})", chora_text::duration::took(*waited))]
pub struct Unhealthy {
    pub url: String,
    pub waited: Duration,
    pub last: String,
}

/// A client for health checks: short timeouts, no pooling surprises.
pub fn client() -> reqwest::Client {
    chora_api::tls::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a plain HTTP client builds")
}

pub use chora_runtime::check::check;

/// Waits until `url` is healthy, at most `timeout`. `gone` is polled between
/// checks: when it reports the service died, the wait ends at once with its words.
pub async fn wait(
    http: &reqwest::Client,
    url: &str,
    retry: &Retry,
    timeout: Duration,
    gone: impl FnMut() -> Option<String>,
) -> Result<Duration, Unhealthy> {
    wait_with(url, || check(http, url), retry, timeout, gone).await
}

/// [`wait`] with any one check (`probe`): a runtime's own (a Swarm unit's
/// tasks), or an HTTP/TCP check of a URL. `what` names it in the error.
pub async fn wait_with<F, Fut>(
    what: &str,
    mut probe: F,
    retry: &Retry,
    timeout: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<Duration, Unhealthy>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let initial = Duration::from_secs_f64(retry.initial_delay);
    let max = Duration::from_secs_f64(retry.max_delay);
    let mut delay = initial;
    let mut streak = 0;
    let mut last = String::from("no answer yet");
    loop {
        match probe().await {
            Ok(()) => {
                streak += 1;
                delay = initial;
                if streak >= retry.required_consecutive.max(1) {
                    return Ok(start.elapsed());
                }
            }
            Err(e) => {
                streak = 0;
                last = e;
                if let Some(why) = gone() {
                    return Err(Unhealthy {
                        url: what.to_owned(),
                        waited: start.elapsed(),
                        last: why,
                    });
                }
            }
        }
        if start.elapsed() + delay > timeout {
            return Err(Unhealthy {
                url: what.to_owned(),
                waited: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(delay).await;
        if streak == 0 {
            delay = Duration::from_secs_f64(
                (delay.as_secs_f64() * retry.backoff_factor).min(max.as_secs_f64()),
            );
        }
    }
}
