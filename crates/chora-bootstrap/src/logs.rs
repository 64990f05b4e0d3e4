//! `chora logs NAME [-f] [--tail N]`: a unit's output through its runtime
//! (a process's log file, a container's engine log), whatever runs it. A
//! replicated service shows every unit, each line prefixed with its unit as
//! Compose does.

use crate::failure::{Failure, StepError};
use crate::{exit, session, units};
use chora_runtime::{BoxStream, Runtime};
use futures_util::StreamExt;
use std::io::Write;
use std::sync::Arc;

pub async fn logs(name: &str, follow: bool, tail: usize) -> Result<(), Failure> {
    let ctx = session::open(None)?;
    crate::session::reach(&ctx).await?;
    let units = units::resolve(&ctx, name)?;
    let mut runtimes: Vec<(String, Arc<dyn Runtime>)> = Vec::new();
    for u in units {
        let rt = ctx
            .runtime_for(ctx.spec(&u))
            .await
            .map_err(|e: StepError| Failure::new(exit::FAILURE, "RUNTIME", e.message))?;
        runtimes.push((u, rt));
    }
    let several = runtimes.len() > 1;
    let streams: Vec<BoxStream<'_, Vec<u8>>> = runtimes
        .iter()
        .map(|(u, rt)| {
            let s = rt.log_stream(u, tail, follow);
            if several {
                prefixed(s, format!("{u} | "))
            } else {
                s
            }
        })
        .collect();
    let mut all = futures_util::stream::select_all(streams);
    let mut out = std::io::stdout();
    while let Some(chunk) = all.next().await {
        if out.write_all(&chunk).is_err() || out.flush().is_err() {
            break; // the reader went away (`| head`)
        }
    }
    Ok(())
}

/// `s` cut into whole lines, each starting with `prefix` (a last line without
/// its newline is given one when the stream ends).
fn prefixed<'a>(s: BoxStream<'a, Vec<u8>>, prefix: String) -> BoxStream<'a, Vec<u8>> {
    let end = futures_util::stream::once(async { None });
    s.map(Some)
        .chain(end)
        .scan(Vec::new(), move |pending: &mut Vec<u8>, chunk| {
            let mut out = Vec::new();
            match chunk {
                Some(c) => {
                    pending.extend_from_slice(&c);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        out.extend_from_slice(prefix.as_bytes());
                        out.extend(pending.drain(..=i));
                    }
                }
                None if !pending.is_empty() => {
                    out.extend_from_slice(prefix.as_bytes());
                    out.append(pending);
                    out.push(b'\n');
                }
                None => {}
            }
            std::future::ready(Some(out))
        })
        .filter(|c| std::future::ready(!c.is_empty()))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_prefixed_whole_however_they_arrive() {
        let chunks: Vec<Vec<u8>> = vec![b"a\nb".to_vec(), b"c\nd".to_vec()];
        let s = futures_util::stream::iter(chunks).boxed();
        let out: Vec<u8> = prefixed(s, "x | ".into()).concat().await;
        assert_eq!(String::from_utf8(out).unwrap(), "x | a\nx | bc\nx | d\n");
    }
}
