//! A module file's parse errors as [`Error`]s that name the file, the line, the
//! column and the field.

use crate::error::Error;
use chora_text::YamlError;
use std::path::Path;

/// A YAML module file's error, its message led by the dotted path of the key
/// at fault (`bootstrap_requirements.directories[1].mod: unknown field …`).
pub(super) fn yaml_error(e: &serde_saphyr::Error, text: &str, file: &Path) -> Error {
    let e = YamlError::new(e).with_field_path(text);
    invalid(e.message, file, e.line as usize, e.column as usize)
}

/// A JSON module file's error, its message led by the key at fault when the
/// line shows one (`field `directories`: invalid type …`).
pub(super) fn json_error(e: &serde_json::Error, text: &str, file: &Path) -> Error {
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
    invalid(message, file, e.line(), e.column())
}

fn invalid(message: String, file: &Path, line: usize, column: usize) -> Error {
    Error::new(format!("invalid module manifest: {message}"))
        .at(file, line, column)
        .action("Fix the manifest; `bootstrap_requirements` takes directories, files, database, templates and downloads")
        .permanent()
}
