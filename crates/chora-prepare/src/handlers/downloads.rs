use super::{default_file_mode, in_module, need, plural, show};
use crate::fsutil::{commit, fmt_mode, mode_differs, set_mode, sha256_file, temp_beside};
use crate::{Change, Context, DownloadSpec, Error, Handler, Need, Outcome, Source, priority};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// Makes dependency files present and intact: fetched over `http://` or copied
/// from a path, checked against their SHA-256, written to a temp file beside the
/// target and renamed into place only when the hash matches. A file already
/// there with the right hash is not fetched again; one with the wrong hash is
/// fetched again (a repair). A mismatch leaves nothing behind.
pub struct DownloadsHandler {
    module: Option<String>,
    downloads: Vec<DownloadSpec>,
}

impl DownloadsHandler {
    pub fn new(module: Option<String>, downloads: Vec<DownloadSpec>) -> DownloadsHandler {
        DownloadsHandler { module, downloads }
    }

    /// The change needed, and whether it takes fetching the content.
    fn plan(&self, ctx: &Context, d: &DownloadSpec) -> Result<Option<(Change, bool)>, Error> {
        let path = ctx.path(&d.target);
        if path.is_dir() {
            return Err(Error::new(format!("{} is a directory", path.display()))
                .action("Move it aside so the file can be written")
                .permanent());
        }
        match sha256_file(&path)? {
            None => Ok(Some((
                Change::create(show(&d.target), format!("from {}", d.source)),
                true,
            ))),
            Some(h) if h != d.sha256 => Ok(Some((
                Change::repair(
                    show(&d.target),
                    format!("sha256 was {h}; fetched again from {}", d.source),
                ),
                true,
            ))),
            Some(_) => Ok(mode_differs(&path, d.mode)?.map(|actual| {
                let change = Change::repair(
                    show(&d.target),
                    format!(
                        "mode {} -> {}",
                        fmt_mode(actual),
                        fmt_mode(d.mode.unwrap_or_default())
                    ),
                );
                (change, false)
            })),
        }
    }

    fn fetch(&self, ctx: &Context, d: &DownloadSpec) -> Result<(), Error> {
        let path = ctx.path(&d.target);
        let mut tmp = temp_beside(&path)?;
        let mut out = HashingWriter {
            inner: tmp.as_file_mut(),
            hasher: Sha256::new(),
        };
        match &d.source {
            Source::Url(url) => {
                crate::http::get(url, &mut out, ctx.deadline()).map_err(|e| {
                    let action = e.action.clone().unwrap_or_else(|| {
                        format!(
                            "Check that {url} is reachable, or put the file at {} by hand (sha256 {})",
                            show(&d.target),
                            d.sha256
                        )
                    });
                    e.action(action)
                })?;
            }
            Source::Path(src) => {
                let mut f = std::fs::File::open(src).map_err(|e| {
                    Error::io("open", src, &e)
                        .action("Check the `path` of the download in the module manifest")
                })?;
                copy(&mut f, &mut out).map_err(|e| Error::io("copy", src, &e))?;
            }
        }
        let got = hex::encode(out.hasher.finalize());
        if got != d.sha256 {
            // `tmp` is removed when dropped: nothing is left behind.
            return Err(Error::new(format!(
                "sha256 mismatch for {} from {}: expected {}, got {got}",
                show(&d.target),
                d.source,
                d.sha256
            ))
            .action("Check the `sha256` in the module manifest against the file the source serves; nothing was written")
            .permanent());
        }
        let mode = d.mode.unwrap_or_else(default_file_mode);
        commit(ctx, tmp, &path, Some(mode), true)
    }
}

struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    hasher: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn copy(r: &mut dyn Read, w: &mut dyn Write) -> std::io::Result<u64> {
    std::io::copy(r, w)
}

impl Handler for DownloadsHandler {
    fn name(&self) -> &str {
        "downloads"
    }

    fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    fn priority(&self) -> i32 {
        priority::DOWNLOADS
    }

    fn should_run(&self, ctx: &Context) -> Result<Need, Error> {
        let mut changes = Vec::new();
        for d in &self.downloads {
            let planned = self.plan(ctx, d).map_err(|e| in_module(e, &self.module))?;
            changes.extend(planned.map(|(c, _)| c));
        }
        Ok(need(
            changes,
            format!(
                "{} present with the right sha256",
                plural(self.downloads.len(), "dependency file", "dependency files")
            ),
        ))
    }

    fn run(&self, ctx: &Context) -> Result<Outcome, Error> {
        let mut changes = Vec::new();
        for d in &self.downloads {
            let m = |e| in_module(e, &self.module);
            let Some((change, fetch)) = self.plan(ctx, d).map_err(m)? else {
                continue;
            };
            if fetch {
                self.fetch(ctx, d).map_err(m)?;
            } else if let Some(mode) = d.mode {
                set_mode(&ctx.path(&d.target), mode).map_err(m)?;
            }
            changes.push(change);
        }
        Ok(Outcome::new(changes))
    }
}
