//! Module files: `modules/*/module.yml` (or `.yaml`, `.json`), found, read and
//! checked into [`Module`]s with the `bootstrap_requirements` each declares.
//! (Not chora's registry, the Manifest: a module file is an application
//! module's own list of what it needs.)
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
//! Invariants:
//!
//! - Every key is checked while the file is deserialized ([`raw`]): an unknown
//!   key, a wrong type, an absolute or escaping target path, a bad mode or a bad
//!   SHA-256 is an error naming the file, the line and the field ([`errors`]).
//!   Modes are octal strings.
//! - A module's `id` is its directory's name unless it says otherwise, and is
//!   unique; errors name the module even when its file could not be read.
//! - Two modules may share a directory or a database, never a file they write.
//! - Discovery is all or nothing: one bad module file fails it, before any
//!   handler runs.

mod errors;
mod raw;

use crate::error::Error;
use crate::requirements::{
    DatabaseSpec, DownloadSpec, Module, Requirements, Schema, Source, TemplateSpec,
};
use errors::{json_error, yaml_error};
use raw::RawModuleFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The module file names looked for in each module directory, in this order.
pub const MODULE_FILE_NAMES: [&str; 3] = ["module.yml", "module.yaml", "module.json"];

/// Finds the modules under `root/modules/*/`, sorted by directory name, and
/// checks their module files. No `modules/` directory means no modules. A
/// module directory without a module file is not a module and is passed over.
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
    // Reading and parsing the module files is independent work: a few threads
    // share it; the results keep the directories' order.
    let loaded = crate::pool::map(
        &dirs,
        crate::pool::cpu_workers(dirs.len()),
        |dir| -> Result<Option<Module>, Error> {
            let found: Vec<PathBuf> = MODULE_FILE_NAMES
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
        if let Some(other) = modules.iter().find(|m| m.id == module.id) {
            return Err(Error::new(format!(
                "module id `{}` is declared twice: {} and {}",
                module.id,
                other.file.display(),
                module.file.display()
            ))
            .at(&module.file, 0, 0)
            .action("Give each module its own `id`")
            .permanent());
        }
        modules.push(module);
    }
    check_conflicts(&modules)?;
    Ok(modules)
}

/// Reads and checks one module file. Errors name the module (its directory's
/// name when the file cannot be read far enough to know its `id`).
pub fn load(file: &Path) -> Result<Module, Error> {
    let module = std::fs::read_to_string(file)
        .map_err(|e| Error::io("read", file, &e).permanent())
        .and_then(|text| parse(&text, file));
    module.map_err(|e| match (&e.module, dir_name(file)) {
        (None, Some(name)) => e.module(name),
        _ => e,
    })
}

fn dir_name(file: &Path) -> Option<String> {
    file.parent()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Parses the text of module file `file` (YAML, or JSON when its name ends in
/// `.json`).
pub fn parse(text: &str, file: &Path) -> Result<Module, Error> {
    let is_json = file.extension().is_some_and(|e| e == "json");
    let raw: RawModuleFile = if is_json {
        serde_json::from_str(text).map_err(|e| json_error(&e, text, file))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, text, file))?
    };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
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
        .at(file, 0, 0)
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
        file: file.to_owned(),
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
                    .at(&m.file, 0, 0)
                    .action("Let one module own each file")
                    .permanent());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_yaml(text: &str) -> Result<Module, Error> {
        parse(text, Path::new("/app/modules/billing/module.yml"))
    }

    #[test]
    fn a_full_module_file_parses() {
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
}
