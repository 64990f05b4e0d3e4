//! Files written whole or not at all: a temp file in the target's directory,
//! fsync, rename, fsync of the directory.

use crate::Context;
use crate::error::Error;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tempfile::NamedTempFile;

/// A temp file next to `target` (its directory is created when missing).
pub fn temp_beside(target: &Path) -> Result<NamedTempFile, Error> {
    let dir = parent(target);
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, &e))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".prepare-tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("create a temp file in", dir, &e))
}

/// Makes `tmp` durable and moves it to `target`. With `replace` false an
/// existing target is an error (someone else created it meanwhile). The
/// directory's fsync (which makes the rename itself durable) is left to the
/// runner's end of phase when there is one: many files share a directory.
pub fn commit(
    ctx: &Context,
    tmp: NamedTempFile,
    target: &Path,
    mode: Option<u32>,
    replace: bool,
) -> Result<(), Error> {
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("set the mode of", tmp.path(), &e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("sync", tmp.path(), &e))?;
    if replace {
        tmp.persist(target)
            .map_err(|e| Error::io("rename into", target, &e.error))?;
    } else {
        tmp.persist_noclobber(target)
            .map_err(|e| Error::io("create", target, &e.error))?;
    }
    ctx.sync_dir_later(parent(target));
    Ok(())
}

/// Writes `bytes` to `target` atomically.
pub fn write_atomic(
    ctx: &Context,
    target: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    replace: bool,
) -> Result<(), Error> {
    let mut tmp = temp_beside(target)?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("write", tmp.path(), &e))?;
    commit(ctx, tmp, target, mode, replace)
}

/// Best effort: a directory fsync makes a rename durable; some filesystems
/// refuse it, which is not worth failing for.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub fn parent(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The permission bits of `path` if it differs from `mode`.
pub fn mode_differs(path: &Path, mode: Option<u32>) -> Result<Option<u32>, Error> {
    let Some(mode) = mode else { return Ok(None) };
    let meta = fs::metadata(path).map_err(|e| Error::io("read", path, &e))?;
    let actual = meta.permissions().mode() & 0o7777;
    Ok((actual != mode).then_some(actual))
}

pub fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set the mode of", path, &e))
}

/// SHA-256 of a file, lower-case hex; `None` when it does not exist.
pub fn sha256_file(path: &Path) -> Result<Option<String>, Error> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, &e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

pub fn fmt_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Whether `p` exists without following a final symlink's target being absent.
pub fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}
