//! `.chora/bootstrap.lock`: one `chora bootstrap` (or rollback, reset) at a time.
//! The OS lock dies with its holder, so a killed run never leaves it stuck. The
//! file names the holder, so a refused run can say who.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

pub struct Lock {
    _file: File,
}

/// Takes the lock or says who holds it.
pub fn acquire(path: &Path, what: &str) -> Result<Lock, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            let holder = format!(
                "{{\"pid\": {}, \"since\": \"{}\", \"command\": \"{what}\"}}\n",
                std::process::id(),
                chora_api::bootstrap_state::now()
            );
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = file.write_all(holder.as_bytes());
            let _ = file.sync_data();
            Ok(Lock { _file: file })
        }
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            Err(format!(
                "another `{}` (pid {}, since {}) holds {}",
                v["command"].as_str().unwrap_or("chora bootstrap"),
                v["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into()),
                v["since"].as_str().unwrap_or("?"),
                path.display()
            ))
        }
        Err(TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}
