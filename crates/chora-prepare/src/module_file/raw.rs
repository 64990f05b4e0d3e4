//! The serde shapes of a module file. Each value is checked while it is
//! deserialized (paths, modes, downloads), so a mistake carries the line it is
//! on; [`super::parse`] turns the result into the public model.

use crate::requirements::{DirSpec, FileSpec, Source};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A whole module file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModuleFile {
    #[serde(default)]
    pub(super) id: Option<String>,
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
    pub(super) variables: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) bootstrap_requirements: RawRequirements,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequirements {
    #[serde(default)]
    pub(super) directories: Vec<DirEntry>,
    #[serde(default)]
    pub(super) files: Vec<FileEntry>,
    #[serde(default)]
    pub(super) database: Option<OneOrMany<RawDatabase>>,
    #[serde(default)]
    pub(super) templates: Vec<RawTemplate>,
    #[serde(default)]
    pub(super) downloads: Vec<RawDownloadChecked>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) path: Target,
    pub(super) schema: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    pub(super) template: PathBuf,
    pub(super) target: Target,
    #[serde(default)]
    pub(super) variables: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) mode: Option<Mode>,
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
pub(super) struct RawDownloadChecked {
    pub(super) source: Source,
    pub(super) target: PathBuf,
    pub(super) sha256: String,
    pub(super) mode: Option<u32>,
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
pub(super) struct Target(pub(super) PathBuf);

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_target(&s).map(Target).map_err(de::Error::custom)
    }
}

fn check_target(s: &str) -> Result<PathBuf, String> {
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
pub(super) struct Mode(pub(super) u32);

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
pub(super) struct DirEntry(pub(super) DirSpec);

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
pub(super) struct FileEntry(pub(super) FileSpec);

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
pub(super) struct OneOrMany<T>(pub(super) Vec<T>);

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
