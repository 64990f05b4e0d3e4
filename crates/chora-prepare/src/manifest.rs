//! Module discovery: `modules/*/module.yml` (or `.yaml`, `.json`) and the
//! `bootstrap_requirements` each declares.
//!
//! ```yaml
//! id: billing                  # optional; defaults to the directory name
//! version: "1.2.0"             # optional, not read (also: name, description)
//! metadata: {anything: here}   # optional, the application's own, not read
//! variables:                   # optional, for every template of the module
//!   PORT: 8080
//! bootstrap_requirements:
//!   directories:               # relative to the application root
//!     - data/billing
//!     - {path: logs/billing, mode: "0750"}
//!   files:                     # created (with `content`) only when missing
//!     - data/billing/.keep
//!     - {path: config/flags.txt, content: "beta=off\n", mode: "0600"}
//!   database:                  # one {path, schema} or a list of them
//!     path: data/billing.db    # relative to the root
//!     schema: schema.sql       # relative to the module directory
//!   templates:
//!     - template: templates/billing.json.tmpl   # relative to the module
//!       target: config/billing.json             # relative to the root
//!       variables: {CURRENCY: EUR}
//!       mode: "0640"
//!   downloads:                 # `url` (http://) or `path` (relative to the module)
//!     - url: http://mirror.local/rates.csv
//!       target: data/billing/rates.csv
//!       sha256: 3f1c…(64 hex digits)
//!     - path: assets/logo.png
//!       target: data/billing/logo.png
//!       sha256: 9a0b…
//! ```
//!
//! Every key is checked: an unknown key, a wrong type, an absolute or escaping
//! target path, a bad mode or a bad SHA-256 is an error naming the file, the line
//! and the field. Modes are octal strings. Two modules may share a directory or a
//! database, never a file they write.

use crate::error::Error;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The manifest file names looked for in each module directory, in this order.
pub const MANIFEST_NAMES: [&str; 3] = ["module.yml", "module.yaml", "module.json"];

/// A discovered module and what it needs before it loads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Module {
    /// `id` from the manifest, or the directory name.
    pub id: String,
    /// The module's directory; schema, template and `path:` download sources are
    /// relative to it.
    pub dir: PathBuf,
    /// The manifest file it was read from.
    pub manifest: PathBuf,
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

/// Finds the modules under `root/modules/*/`, sorted by directory name, and
/// checks their manifests. No `modules/` directory means no modules. A module
/// directory without a manifest is not a module and is passed over.
pub fn discover(root: &Path) -> Result<Vec<Module>, Error> {
    let modules_dir = root.join("modules");
    let entries = match std::fs::read_dir(&modules_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", &modules_dir, &e).permanent()),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read", &modules_dir, &e).permanent())?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) || entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    // Reading and parsing the manifests is independent work: a few threads
    // share it; the results keep the directories' order.
    let loaded = crate::pool::map(
        &dirs,
        crate::pool::cpu_workers(dirs.len()),
        |dir| -> Result<Option<Module>, Error> {
            let found: Vec<PathBuf> = MANIFEST_NAMES
                .iter()
                .map(|n| dir.join(n))
                .filter(|p| p.is_file())
                .collect();
            match found.as_slice() {
                [] => Ok(None),
                [one] => load(one).map(Some),
                [first, second, ..] => Err(Error::new(format!(
                    "two manifests in one module: {} and {}",
                    first.display(),
                    second.display()
                ))
                .action("Keep one of them")
                .permanent()),
            }
        },
    );
    let mut modules: Vec<Module> = Vec::new();
    for module in loaded {
        let Some(module) = module? else { continue };
        let manifest = module.manifest.clone();
        if let Some(other) = modules.iter().find(|m| m.id == module.id) {
            return Err(Error::new(format!(
                "module id `{}` is declared twice: {} and {}",
                module.id,
                other.manifest.display(),
                manifest.display()
            ))
            .at(&manifest, 0, 0)
            .action("Give each module its own `id`")
            .permanent());
        }
        modules.push(module);
    }
    check_conflicts(&modules)?;
    Ok(modules)
}

/// Reads and checks one manifest file. Errors name the module (its directory's
/// name when the manifest cannot be read far enough to know its `id`).
pub fn load(manifest: &Path) -> Result<Module, Error> {
    let module = std::fs::read_to_string(manifest)
        .map_err(|e| Error::io("read", manifest, &e).permanent())
        .and_then(|text| parse(&text, manifest));
    module.map_err(|e| match (&e.module, dir_name(manifest)) {
        (None, Some(name)) => e.module(name),
        _ => e,
    })
}

fn dir_name(manifest: &Path) -> Option<String> {
    manifest
        .parent()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Parses the text of `manifest` (YAML, or JSON when the name ends in `.json`).
pub fn parse(text: &str, manifest: &Path) -> Result<Module, Error> {
    let is_json = manifest.extension().is_some_and(|e| e == "json");
    let raw: RawManifest = if is_json {
        serde_json::from_str(text).map_err(|e| json_error(&e, text, manifest))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, text, manifest))?
    };
    let dir = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let id = match raw.id {
        Some(id) => id,
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::new(format!(
            "module id `{id}` is not valid: use letters, digits, `.`, `_` and `-`"
        ))
        .at(manifest, 0, 0)
        .action("Fix `id` in the manifest")
        .permanent());
    }
    let r = raw.bootstrap_requirements;
    let src = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let requirements = Requirements {
        directories: r.directories.into_iter().map(|d| d.0).collect(),
        files: r.files.into_iter().map(|f| f.0).collect(),
        databases: r
            .database
            .map(|d| d.0)
            .unwrap_or_default()
            .into_iter()
            .map(|d| DatabaseSpec {
                path: d.path.0,
                schema: Schema::File(src(d.schema)),
            })
            .collect(),
        templates: r
            .templates
            .into_iter()
            .map(|t| TemplateSpec {
                template: src(t.template),
                target: t.target.0,
                variables: t.variables,
                mode: t.mode.map(|m| m.0),
            })
            .collect(),
        downloads: r
            .downloads
            .into_iter()
            .map(|d| DownloadSpec {
                source: match d.source {
                    Source::Path(p) => Source::Path(src(p)),
                    url => url,
                },
                target: d.target,
                sha256: d.sha256,
                mode: d.mode,
            })
            .collect(),
    };
    Ok(Module {
        id,
        dir,
        manifest: manifest.to_owned(),
        variables: raw.variables,
        requirements,
    })
}

/// Two modules may share a directory or a database, but not a file they write.
fn check_conflicts(modules: &[Module]) -> Result<(), Error> {
    let mut owners: BTreeMap<&Path, &Module> = BTreeMap::new();
    for m in modules {
        let r = &m.requirements;
        let targets = r
            .files
            .iter()
            .map(|f| f.path.as_path())
            .chain(r.templates.iter().map(|t| t.target.as_path()))
            .chain(r.downloads.iter().map(|d| d.target.as_path()));
        for t in targets {
            if let Some(other) = owners.insert(t, m) {
                let msg = if other.id == m.id {
                    format!("{} is declared twice", t.display())
                } else {
                    format!(
                        "{} is declared by both module {} and module {}",
                        t.display(),
                        other.id,
                        m.id
                    )
                };
                return Err(Error::new(msg)
                    .module(&m.id)
                    .at(&m.manifest, 0, 0)
                    .action("Let one module own each file")
                    .permanent());
            }
        }
    }
    Ok(())
}

fn yaml_error(e: &serde_saphyr::Error, text: &str, file: &Path) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line() as usize, l.column() as usize))
        .unwrap_or((0, 0));
    let full = e.to_string();
    // The parser's message is "line L column C: what" followed by a snippet.
    let first = full
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    let message = first
        .split_once(": ")
        .filter(|(head, _)| head.starts_with("line "))
        .map(|(_, m)| m)
        .unwrap_or(first);
    let message = match yaml_field_path(text, line) {
        Some(path) => format!("{path}: {message}"),
        None => message.to_owned(),
    };
    manifest_error(message, file, line, column)
}

fn json_error(e: &serde_json::Error, text: &str, file: &Path) -> Error {
    let full = e.to_string();
    let message = full
        .rsplit_once(" at line ")
        .map(|(m, _)| m)
        .unwrap_or(&full)
        .to_owned();
    let key = text.lines().nth(e.line().saturating_sub(1)).and_then(|l| {
        let head = &l[..e.column().min(l.len())];
        let end = head.rfind("\":")?;
        let start = head[..end].rfind('"')?;
        Some(head[start + 1..end].to_owned())
    });
    let message = match key {
        Some(k) => format!("field `{k}`: {message}"),
        None => message,
    };
    manifest_error(message, file, e.line(), e.column())
}

fn manifest_error(message: String, file: &Path, line: usize, column: usize) -> Error {
    Error::new(format!("invalid module manifest: {message}"))
        .at(file, line, column)
        .action("Fix the manifest; `bootstrap_requirements` takes directories, files, database, templates and downloads")
        .permanent()
}

/// The dotted path of the YAML key on `line` (1-based), from the indentation of
/// the lines before it: `bootstrap_requirements.directories[1].mode`. A best
/// effort for messages, not a parser.
fn yaml_field_path(text: &str, line: usize) -> Option<String> {
    enum Seg {
        Key(String),
        Index(usize),
    }
    let mut stack: Vec<(usize, Seg)> = Vec::new();
    for raw in text.lines().take(line) {
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let mut pos = raw.len() - trimmed.len();
        let mut rest = trimmed;
        while rest == "-" || rest.starts_with("- ") {
            while stack.last().is_some_and(|(i, _)| *i > pos) {
                stack.pop();
            }
            match stack.last_mut() {
                Some((i, Seg::Index(n))) if *i == pos => *n += 1,
                _ => stack.push((pos, Seg::Index(0))),
            }
            let after = rest[1..].trim_start_matches(' ');
            pos += rest.len() - after.len();
            rest = after;
        }
        if let Some(key) = yaml_key(rest) {
            while stack.last().is_some_and(|(i, _)| *i >= pos) {
                stack.pop();
            }
            stack.push((pos, Seg::Key(key)));
        }
    }
    let mut out = String::new();
    for (_, seg) in &stack {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn yaml_key(s: &str) -> Option<String> {
    let (key, after) = if let Some(q) = s.strip_prefix('"') {
        let end = q.find('"')?;
        (&q[..end], &q[end + 1..])
    } else if let Some(q) = s.strip_prefix('\'') {
        let end = q.find('\'')?;
        (&q[..end], &q[end + 1..])
    } else {
        let end = s.find(':')?;
        let key = &s[..end];
        if key.is_empty() || key.contains([' ', '{', '[', '"', '\'']) {
            return None;
        }
        (key, &s[end..])
    };
    let after = after.strip_prefix(':')?;
    (after.is_empty() || after.starts_with(' ')).then(|| key.to_owned())
}

// --- the serde shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// The application's own data; not read by chora prepare.
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<IgnoredAny>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    bootstrap_requirements: RawRequirements,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirements {
    #[serde(default)]
    directories: Vec<DirEntry>,
    #[serde(default)]
    files: Vec<FileEntry>,
    #[serde(default)]
    database: Option<OneOrMany<RawDatabase>>,
    #[serde(default)]
    templates: Vec<RawTemplate>,
    #[serde(default)]
    downloads: Vec<RawDownloadChecked>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: Target,
    schema: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    template: PathBuf,
    target: Target,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    mode: Option<Mode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownload {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    target: Target,
    sha256: String,
    #[serde(default)]
    mode: Option<Mode>,
}

/// A download entry, checked while it is deserialized so that a mistake carries
/// the line it is on.
#[derive(Deserialize)]
#[serde(try_from = "RawDownload")]
struct RawDownloadChecked {
    source: Source,
    target: PathBuf,
    sha256: String,
    mode: Option<u32>,
}

impl TryFrom<RawDownload> for RawDownloadChecked {
    type Error = String;

    fn try_from(d: RawDownload) -> Result<Self, String> {
        let source = match (d.url, d.path) {
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "`url` must start with http:// or https://, not `{url}`"
                    ));
                }
                Source::Url(url)
            }
            (None, Some(path)) => Source::Path(path),
            (Some(_), Some(_)) => return Err("give `url` or `path`, not both".into()),
            (None, None) => return Err("give `url` or `path` to fetch the file from".into()),
        };
        let sha = d.sha256.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "`sha256` must be 64 hexadecimal digits, not `{}`",
                d.sha256
            ));
        }
        Ok(RawDownloadChecked {
            source,
            target: d.target.0,
            sha256: sha,
            mode: d.mode.map(|m| m.0),
        })
    }
}

/// A path relative to the application root that stays inside it.
struct Target(PathBuf);

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_target(&s).map(Target).map_err(de::Error::custom)
    }
}

pub(crate) fn check_target(s: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if s.trim().is_empty() {
        return Err("a path must not be empty".into());
    }
    if p.is_absolute() {
        return Err(format!(
            "`{s}` is absolute; give a path relative to the application root"
        ));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "`{s}` leaves the application root; `..` is not allowed"
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("`{s}` names the root itself"));
    }
    Ok(out)
}

/// Unix permission bits, written as an octal string: "0750", "750", "0o750".
struct Mode(u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_mode(&s).map(Mode).map_err(de::Error::custom)
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(m),
        _ => Err(format!(
            "`{s}` is not a permission mode; write it in octal, e.g. \"0750\""
        )),
    }
}

/// A directory: `data/cache` or `{path: data/cache, mode: "0750"}`.
struct DirEntry(DirSpec);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    path: Target,
    #[serde(default)]
    mode: Option<Mode>,
}

impl<'de> Deserialize<'de> for DirEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: RawDir = string_or_map(d, "a directory path or {path, mode}", |s| {
            Ok(RawDir {
                path: Target(check_target(s)?),
                mode: None,
            })
        })?;
        Ok(DirEntry(DirSpec {
            path: raw.path.0,
            mode: raw.mode.map(|m| m.0),
        }))
    }
}

/// A file: `config/a.json` or `{path, content, mode}`.
struct FileEntry(FileSpec);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Target,
    #[serde(default)]
    content: String,
    #[serde(default)]
    mode: Option<Mode>,
}

impl<'de> Deserialize<'de> for FileEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: RawFile = string_or_map(d, "a file path or {path, content, mode}", |s| {
            Ok(RawFile {
                path: Target(check_target(s)?),
                content: String::new(),
                mode: None,
            })
        })?;
        Ok(FileEntry(FileSpec {
            path: raw.path.0,
            content: raw.content,
            mode: raw.mode.map(|m| m.0),
        }))
    }
}

fn string_or_map<'de, D, T>(
    d: D,
    expecting: &'static str,
    from_str: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T> {
        expecting: &'static str,
        from_str: fn(&str) -> Result<T, String>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.from_str)(s).map_err(E::custom)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(V {
        expecting,
        from_str,
    })
}

/// One entry or a list of them.
struct OneOrMany<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{path, schema} or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_yaml(text: &str) -> Result<Module, Error> {
        parse(text, Path::new("/app/modules/billing/module.yml"))
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse_yaml(
            r#"
id: billing
version: "1.2"
variables:
  PORT: 8080
bootstrap_requirements:
  directories:
    - data/billing
    - path: logs/billing
      mode: 0750
  files:
    - data/billing/.keep
    - path: config/flags.txt
      content: "on\n"
      mode: "0600"
  database:
    path: data/billing.db
    schema: schema.sql
  templates:
    - template: templates/billing.json.tmpl
      target: config/billing.json
      variables: {CURRENCY: EUR}
  downloads:
    - url: http://example.com/rates.csv
      target: data/billing/rates.csv
      sha256: E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855
    - path: assets/logo.png
      target: data/billing/logo.png
      sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
"#,
        )
        .unwrap();
        assert_eq!(m.id, "billing");
        assert_eq!(m.variables["PORT"], "8080");
        let r = &m.requirements;
        assert_eq!(r.directories[1].mode, Some(0o750));
        assert_eq!(r.directories[0].path, Path::new("data/billing"));
        assert_eq!(r.files[1].content, "on\n");
        assert_eq!(r.files[1].mode, Some(0o600));
        assert_eq!(
            r.databases[0].schema,
            Schema::File("/app/modules/billing/schema.sql".into())
        );
        assert_eq!(r.templates[0].variables["CURRENCY"], "EUR");
        assert_eq!(
            r.downloads[0].sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            r.downloads[1].source,
            Source::Path("/app/modules/billing/assets/logo.png".into())
        );
    }

    #[test]
    fn database_takes_a_list_and_json_works() {
        let m = parse(
            r#"{"bootstrap_requirements": {"database": [
                {"path": "data/a.db", "schema": "a.sql"},
                {"path": "data/b.db", "schema": "b.sql"}]}}"#,
            Path::new("/app/modules/two/module.json"),
        )
        .unwrap();
        assert_eq!(m.id, "two");
        assert_eq!(m.requirements.databases.len(), 2);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_field() {
        let e = parse_yaml(
            "bootstrap_requirements:\n  directories:\n    - path: a\n    - path: b\n      mod: \"0750\"\n",
        )
        .unwrap_err();
        let loc = e.location.clone().unwrap();
        assert_eq!(loc.file, Path::new("/app/modules/billing/module.yml"));
        assert_eq!(loc.line, 5);
        assert!(
            e.message
                .contains("bootstrap_requirements.directories[1].mod"),
            "{e}"
        );
        assert!(e.message.contains("unknown field `mod`"), "{e}");
        assert!(!e.retryable);
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        for (text, line, needle) in [
            (
                "bootstrap_requirements:\n  directories:\n    - /etc/x\n",
                3,
                "absolute",
            ),
            (
                "bootstrap_requirements:\n  directories:\n    - path: ../x\n",
                3,
                "leaves the application root",
            ),
            (
                "bootstrap_requirements:\n  directories:\n    - path: x\n      mode: rwx\n",
                4,
                "not a permission mode",
            ),
            (
                "bootstrap_requirements:\n  downloads:\n    - url: http://x/y\n      target: y\n      sha256: abc\n",
                0,
                "64 hexadecimal digits",
            ),
            (
                "bootstrap_requirements:\n  downloads:\n    - url: ftp://x/y\n      target: y\n      sha256: abc\n",
                0,
                "http://",
            ),
            (
                "bootstrap_requirement:\n  directories: []\n",
                1,
                "unknown field",
            ),
        ] {
            let e = parse_yaml(text).unwrap_err();
            assert!(e.message.contains(needle), "{text}: {e}");
            if line > 0 {
                assert_eq!(e.location.as_ref().unwrap().line, line, "{text}: {e}");
            } else {
                assert!(e.location.as_ref().unwrap().line > 0, "{text}: {e}");
            }
        }
    }

    #[test]
    fn malformed_yaml_has_a_line() {
        let e = parse_yaml("bootstrap_requirements:\n  directories: [a\n").unwrap_err();
        assert!(e.location.unwrap().line >= 2);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse(
            "{\n  \"bootstrap_requirements\": {\n    \"directories\": 3\n  }\n}",
            Path::new("/app/modules/x/module.json"),
        )
        .unwrap_err();
        assert_eq!(e.location.as_ref().unwrap().line, 3);
        assert!(e.message.contains("`directories`"), "{e}");
    }

    #[test]
    fn field_paths_follow_indentation() {
        let text = "a:\n  b:\n  - x: 1\n    y: 2\n  - x: 3\n    z: 4\nc: 5\n";
        assert_eq!(yaml_field_path(text, 4).as_deref(), Some("a.b[0].y"));
        assert_eq!(yaml_field_path(text, 6).as_deref(), Some("a.b[1].z"));
        assert_eq!(yaml_field_path(text, 7).as_deref(), Some("c"));
    }
}
