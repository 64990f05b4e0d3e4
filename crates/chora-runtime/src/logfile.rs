//! A unit's log file as the process and Docker runtimes keep it: its last
//! lines, and a stream of its tail that follows what is appended.

use crate::BoxStream;

/// A log file as a stream: its last `tail` lines, then (with `follow`) what
/// is appended, looked at every 200 ms like `tail -F` (a file that shrank was
/// rotated or truncated: it is read again from its start).
pub fn file_stream(
    path: std::path::PathBuf,
    tail: usize,
    follow: bool,
) -> BoxStream<'static, Vec<u8>> {
    use futures_util::StreamExt;
    let first = {
        let text = std::fs::read(&path).unwrap_or_default();
        let start = tail_start(&text, tail);
        (text[start..].to_vec(), text.len() as u64)
    };
    let (head, offset) = first;
    let rest = futures_util::stream::unfold(offset, move |mut offset| {
        let path = path.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0;
                }
                if len > offset {
                    use std::io::{Read, Seek, SeekFrom};
                    let Ok(mut f) = std::fs::File::open(&path) else {
                        continue;
                    };
                    let mut buf = Vec::with_capacity((len - offset) as usize);
                    if f.seek(SeekFrom::Start(offset)).is_ok()
                        && f.take(len - offset).read_to_end(&mut buf).is_ok()
                    {
                        offset += buf.len() as u64;
                        return Some((buf, offset));
                    }
                }
            }
        }
    });
    let head = futures_util::stream::iter((!head.is_empty()).then_some(head));
    if follow {
        head.chain(rest).boxed()
    } else {
        head.boxed()
    }
}

/// Where the last `n` lines of `text` start.
fn tail_start(text: &[u8], n: usize) -> usize {
    if n == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// The last `n` lines of a file ("" when unreadable).
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_starts_at_the_nth_line_from_the_end() {
        let t = b"a\nb\nc\n";
        assert_eq!(&t[tail_start(t, 2)..], b"b\nc\n");
        assert_eq!(&t[tail_start(t, 9)..], t);
        assert_eq!(tail_start(t, 0), t.len());
        assert_eq!(&b"x\ny"[tail_start(b"x\ny", 1)..], b"y");
    }

    #[tokio::test]
    async fn a_followed_file_yields_its_tail_then_what_is_appended() {
        use futures_util::StreamExt;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("svc.log");
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        let mut s = file_stream(p.clone(), 2, true);
        assert_eq!(s.next().await.unwrap(), b"two\nthree\n");
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"four\n").unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("the appended line arrives");
        assert_eq!(next.unwrap(), b"four\n");
        // Without follow the stream ends after the tail.
        let all: Vec<Vec<u8>> = file_stream(p, 1, false).collect().await;
        assert_eq!(all, [b"four\n".to_vec()]);
    }
}
