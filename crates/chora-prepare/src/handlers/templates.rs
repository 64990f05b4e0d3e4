use super::{default_file_mode, in_module, need, plural, show};
use crate::fsutil::{fmt_mode, mode_differs, set_mode, write_atomic};
use crate::{Change, ChangeKind, Context, Error, Handler, Need, Outcome, TemplateSpec, priority};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes configuration files from templates, only when missing.
///
/// `${NAME}` is replaced by, in this order: the template's `variables`, the
/// module's `variables`, the built-ins `MODULE_ID`, `MODULE_DIR` and
/// `CHORA_ROOT`, then [`Context::var`] (the context's variables, then the process
/// environment). `$${` writes a literal `${`. A variable found nowhere is an
/// error. A `.json`, `.yml` or `.yaml` target must parse, both the one rendered
/// (else nothing is written) and one already there (else the run fails: a broken
/// configuration is not something to start modules on).
pub struct TemplatesHandler {
    module: Option<String>,
    templates: Vec<TemplateSpec>,
    variables: BTreeMap<String, String>,
    module_dir: Option<PathBuf>,
}

impl TemplatesHandler {
    pub fn new(module: Option<String>, templates: Vec<TemplateSpec>) -> TemplatesHandler {
        TemplatesHandler {
            module,
            templates,
            variables: BTreeMap::new(),
            module_dir: None,
        }
    }

    /// The module's variables, shared by its templates.
    pub fn with_variables(mut self, variables: BTreeMap<String, String>) -> TemplatesHandler {
        self.variables = variables;
        self
    }

    /// The module's directory (the `MODULE_DIR` variable).
    pub fn with_module_dir(mut self, dir: PathBuf) -> TemplatesHandler {
        self.module_dir = Some(dir);
        self
    }

    fn plan(&self, ctx: &Context, t: &TemplateSpec) -> Result<Option<Change>, Error> {
        let path = ctx.path(&t.target);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, &e))?;
                if let Err((line, msg)) = validate(&t.target, &text) {
                    return Err(Error::new(format!(
                        "the configuration file {} is not valid: {msg}",
                        show(&t.target)
                    ))
                    .at(&path, line, 0)
                    .action(format!(
                        "Fix it, or delete it to have it written again from {}",
                        ctx.show(&t.template)
                    ))
                    .permanent());
                }
                Ok(mode_differs(&path, t.mode)?.map(|actual| {
                    Change::repair(
                        show(&t.target),
                        format!(
                            "mode {} -> {}",
                            fmt_mode(actual),
                            fmt_mode(t.mode.unwrap_or_default())
                        ),
                    )
                }))
            }
            Ok(_) => Err(
                Error::new(format!("{} exists and is not a file", path.display()))
                    .action("Move it aside so the configuration file can be written")
                    .permanent(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Change::create(
                show(&t.target),
                format!("from {}", ctx.show(&t.template)),
            ))),
            Err(e) => Err(Error::io("inspect", &path, &e)),
        }
    }

    fn lookup(&self, ctx: &Context, t: &TemplateSpec, name: &str) -> Option<String> {
        if let Some(v) = t.variables.get(name).or_else(|| self.variables.get(name)) {
            return Some(v.clone());
        }
        match name {
            "MODULE_ID" => return self.module.clone(),
            "MODULE_DIR" => return self.module_dir.as_ref().map(|d| show(d)),
            "CHORA_ROOT" => return Some(show(ctx.root())),
            _ => {}
        }
        ctx.var(name)
    }

    fn write(&self, ctx: &Context, t: &TemplateSpec) -> Result<(), Error> {
        let text = std::fs::read_to_string(&t.template)
            .map_err(|e| Error::io("read the template", &t.template, &e).permanent())?;
        let rendered = render(&text, |n| self.lookup(ctx, t, n)).map_err(|(line, msg)| {
            Error::new(format!("template {}: {msg}", ctx.show(&t.template)))
                .at(&t.template, line, 0)
                .action(format!(
                    "Define the variable under `variables` in the module manifest or in the environment; {} was not written",
                    show(&t.target)
                ))
                .permanent()
        })?;
        if let Err((line, msg)) = validate(&t.target, &rendered) {
            return Err(Error::new(format!(
                "template {} renders an invalid {} (line {line} of the result): {msg}",
                ctx.show(&t.template),
                show(&t.target)
            ))
            .at(&t.template, 0, 0)
            .action("Fix the template; nothing was written")
            .permanent());
        }
        let mode = t.mode.unwrap_or_else(default_file_mode);
        write_atomic(
            ctx,
            &ctx.path(&t.target),
            rendered.as_bytes(),
            Some(mode),
            false,
        )
    }
}

impl Handler for TemplatesHandler {
    fn name(&self) -> &str {
        "templates"
    }

    fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }

    fn priority(&self) -> i32 {
        priority::TEMPLATES
    }

    fn should_run(&self, ctx: &Context) -> Result<Need, Error> {
        let mut changes = Vec::new();
        for t in &self.templates {
            changes.extend(self.plan(ctx, t).map_err(|e| in_module(e, &self.module))?);
        }
        Ok(need(
            changes,
            format!(
                "{} exist and are valid",
                plural(
                    self.templates.len(),
                    "configuration file",
                    "configuration files"
                )
            ),
        ))
    }

    fn run(&self, ctx: &Context) -> Result<Outcome, Error> {
        let mut changes = Vec::new();
        for t in &self.templates {
            let m = |e| in_module(e, &self.module);
            let Some(change) = self.plan(ctx, t).map_err(m)? else {
                continue;
            };
            if change.kind == ChangeKind::Create {
                self.write(ctx, t).map_err(m)?;
            } else if let Some(mode) = t.mode {
                set_mode(&ctx.path(&t.target), mode).map_err(m)?;
            }
            changes.push(change);
        }
        Ok(Outcome::new(changes))
    }
}

/// Replaces `${NAME}`; `$${` is a literal `${`. Errors carry the line.
pub(crate) fn render(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let line_of = |rest: &str| text[..text.len() - rest.len()].matches('\n').count() + 1;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err((line_of(after), "`${` without a closing `}`".into()));
            };
            let name = &tail[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err((
                    line_of(after),
                    format!("`${{{name}}}` is not a variable name"),
                ));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err((line_of(after), format!("variable `{name}` is not defined")));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses JSON and YAML targets; other extensions are not checked.
fn validate(target: &Path, text: &str) -> Result<(), (usize, String)> {
    let ext = target
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("json") => serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map(|_| ())
            .map_err(|e| (e.line(), e.to_string())),
        Some("yml" | "yaml") => {
            if text.trim().is_empty() {
                return Ok(());
            }
            serde_saphyr::from_str::<serde::de::IgnoredAny>(text)
                .map(|_| ())
                .map_err(|e| {
                    let line = e.location().map(|l| l.line() as usize).unwrap_or(0);
                    let msg = e.to_string();
                    (line, msg.lines().next().unwrap_or_default().to_owned())
                })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        let vars = |n: &str| (n == "A").then(|| "1".to_owned());
        assert_eq!(render("x=${A} $${A} $5 $", vars).unwrap(), "x=1 ${A} $5 $");
        assert_eq!(render("a\n${B}", vars).unwrap_err().0, 2);
        assert!(render("${A", vars).unwrap_err().1.contains("closing"));
        assert!(
            render("${A-b}", vars)
                .unwrap_err()
                .1
                .contains("not a variable")
        );
    }

    #[test]
    fn validates_by_extension() {
        assert!(validate(Path::new("a.json"), "{\"a\": 1}").is_ok());
        assert_eq!(
            validate(Path::new("a.json"), "{\n\"a\": }").unwrap_err().0,
            2
        );
        assert!(validate(Path::new("a.yml"), "a: [1\n").is_err());
        assert!(validate(Path::new("a.yaml"), "a: 1\n").is_ok());
        assert!(validate(Path::new("a.conf"), "{{{").is_ok());
    }
}
