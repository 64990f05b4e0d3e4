//! The one error type: what went wrong, where (module, handler, file, line), and
//! what a person should do about it.

use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a file: a module manifest, a schema, a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based; 0 when unknown.
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        Ok(())
    }
}

/// A failure of discovery, of a handler's check or of its run.
///
/// The runner fills in `handler` and `module` from the handler that failed when
/// they are not set already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Error {
    /// The module whose requirement failed (`None`: the framework's own).
    pub module: Option<String>,
    /// The handler that failed, e.g. `databases`.
    pub handler: Option<String>,
    /// The file (and line) at fault, when there is one.
    pub location: Option<Box<Location>>,
    /// What went wrong, in one sentence.
    pub message: String,
    /// What to do about it.
    pub action: Option<String>,
    /// Whether trying again may help (I/O, network). A bad schema, a hash
    /// mismatch or a malformed manifest is not retried.
    #[serde(skip)]
    pub retryable: bool,
}

impl Error {
    /// A retryable error with `message`.
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            module: None,
            handler: None,
            location: None,
            message: message.into(),
            action: None,
            retryable: true,
        }
    }

    /// Marks the error as one that trying again cannot fix.
    pub fn permanent(mut self) -> Error {
        self.retryable = false;
        self
    }

    pub fn module(mut self, module: impl Into<String>) -> Error {
        self.module = Some(module.into());
        self
    }

    pub fn handler(mut self, handler: impl Into<String>) -> Error {
        self.handler = Some(handler.into());
        self
    }

    pub fn action(mut self, action: impl Into<String>) -> Error {
        self.action = Some(action.into());
        self
    }

    pub fn at(mut self, file: impl Into<PathBuf>, line: usize, column: usize) -> Error {
        self.location = Some(Box::new(Location {
            file: file.into(),
            line,
            column,
        }));
        self
    }

    /// An I/O error on `path` while doing `what` (retryable).
    pub(crate) fn io(what: &str, path: &Path, e: &std::io::Error) -> Error {
        Error::new(format!("cannot {what} {}: {e}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.module, &self.handler) {
            (Some(m), Some(h)) => write!(f, "module {m}, {h}: ")?,
            (Some(m), None) => write!(f, "module {m}: ")?,
            (None, Some(h)) => write!(f, "{h}: ")?,
            (None, None) => {}
        }
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
