//! What a module needs before it loads: the model that `module_file`
//! reads from a module's `module.yml` and the handlers act on. Sources (schemas,
//! templates, local download files) are resolved against the module's directory;
//! targets stay relative to the application root and never leave it.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A discovered module and what it needs before it loads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Module {
    /// `id` from the module file, or the directory name.
    pub id: String,
    /// The module's directory; schema, template and `path:` download sources are
    /// relative to it.
    pub dir: PathBuf,
    /// The module file it was read from.
    pub file: PathBuf,
    /// Template variables shared by all of the module's templates.
    pub variables: BTreeMap<String, String>,
    pub requirements: Requirements,
}

/// What a module declares under `bootstrap_requirements`. Sources are resolved
/// against the module directory; targets stay relative to the application root.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Requirements {
    pub directories: Vec<DirSpec>,
    pub files: Vec<FileSpec>,
    pub databases: Vec<DatabaseSpec>,
    pub templates: Vec<TemplateSpec>,
    pub downloads: Vec<DownloadSpec>,
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.directories.is_empty()
            && self.files.is_empty()
            && self.databases.is_empty()
            && self.templates.is_empty()
            && self.downloads.is_empty()
    }
}

/// A directory under the root, with optional permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirSpec {
    /// Relative to the application root.
    pub path: PathBuf,
    /// Unix permission bits, e.g. `0o750`; `None` leaves the umask's choice.
    pub mode: Option<u32>,
}

/// A file that must exist; created with `content` only when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    pub path: PathBuf,
    pub content: String,
    pub mode: Option<u32>,
}

/// A SQLite database and the schema its tables come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseSpec {
    /// Relative to the application root.
    pub path: PathBuf,
    pub schema: Schema,
}

/// Where a database's schema comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    /// A SQL file (modules: relative to the module directory, resolved here).
    File(PathBuf),
    /// SQL text, named in messages by `name` (chora's own services use this).
    Inline { name: String, sql: String },
}

/// A configuration file rendered from a template when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateSpec {
    /// The template file (resolved against the module directory).
    pub template: PathBuf,
    /// Relative to the application root.
    pub target: PathBuf,
    /// Variables of this template; they win over the module's and the
    /// environment's.
    pub variables: BTreeMap<String, String>,
    pub mode: Option<u32>,
}

/// A dependency file, fetched or copied, verified by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadSpec {
    pub source: Source,
    /// Relative to the application root.
    pub target: PathBuf,
    /// Lower-case hex.
    pub sha256: String,
    pub mode: Option<u32>,
}

/// Where a dependency file comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `http://…` (`https://` is refused: this build has no TLS).
    Url(String),
    /// A local file (resolved against the module directory).
    Path(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(u) => f.write_str(u),
            Source::Path(p) => write!(f, "{}", p.display()),
        }
    }
}
