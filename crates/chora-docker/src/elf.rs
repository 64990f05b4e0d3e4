//! What a binary needs to run, read from its ELF headers the way the dynamic
//! loader would find it, without running anything (no `ldd`, which executes the
//! binary's loader).
//!
//! [`read`] parses the ELF64 header, the program headers (`PT_INTERP`,
//! `PT_DYNAMIC`, `PT_LOAD`) and the dynamic section (`DT_NEEDED`, `DT_RUNPATH`,
//! `DT_RPATH`, with `DT_STRTAB` mapped to a file offset through the `PT_LOAD`
//! segments). [`Resolver::resolve`] then finds the complete transitive set of
//! shared libraries: RPATH / RUNPATH (`$ORIGIN` expanded), the directories of
//! `/etc/ld.so.conf` (with its `include` lines), then the default directories.
//! Libraries a program opens itself at run time (`dlopen`) are not in its
//! headers and are not found.
//!
//! Invariants: nothing is executed, only headers are read. The search order
//! is ld.so's (RPATH only for an object without RUNPATH, the executable's RPATH
//! for every such library), and a candidate of another machine than its user is
//! passed over as ld.so passes it over. Each needed name is resolved once (the
//! first object to need it decides, as in the loader's link map); the loader
//! itself is never searched for. A name not found anywhere is an error listing
//! every directory searched.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The directories searched after RUNPATH and ld.so.conf, in order.
pub const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an ELF executable or library", path.display())]
    NotElf { path: PathBuf },
    #[error("{} is {what}, which is not supported (only 64-bit little-endian ELF)", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{} is a malformed ELF file: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error(
        "{name}, needed by {}, was not found (searched {})",
        needed_by.display(),
        searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    MissingLibrary {
        name: String,
        needed_by: PathBuf,
        searched: Vec<PathBuf>,
    },
}

/// What one ELF file says about loading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine` (62 = x86-64): a library must match its user's.
    pub machine: u16,
    /// `PT_INTERP`: the loader path a dynamic executable names.
    pub interp: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
    pub rpath: Vec<String>,
}

impl ElfInfo {
    /// Statically linked: no loader and nothing needed.
    pub fn is_static(&self) -> bool {
        self.interp.is_none() && self.needed.is_empty()
    }
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: i64 = 0;
const DT_NEEDED: i64 = 1;
const DT_STRTAB: i64 = 5;
const DT_STRSZ: i64 = 10;
const DT_RPATH: i64 = 15;
const DT_RUNPATH: i64 = 29;
/// Refuse header tables bigger than this (a corrupt count, not a real file).
const MAX_TABLE: u64 = 16 << 20;

struct Reader<'a> {
    file: File,
    path: &'a Path,
    len: u64,
}

impl Reader<'_> {
    fn bytes(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, ElfError> {
        if len > MAX_TABLE || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(self.malformed(format!("{what} lies outside the file")));
        }
        let mut buf = vec![0; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| ElfError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(buf)
    }

    fn malformed(&self, what: impl Into<String>) -> ElfError {
        ElfError::Malformed {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads the loading information of the ELF file at `path` (symlinks followed).
pub fn read(path: &Path) -> Result<ElfInfo, ElfError> {
    let io = |source| ElfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ElfError::NotElf {
            path: path.to_path_buf(),
        });
    }
    let r = Reader {
        file,
        path,
        len: meta.len(),
    };
    if r.len < 64 {
        return Err(ElfError::NotElf {
            path: path.to_path_buf(),
        });
    }
    let h = r.bytes(0, 64, "the ELF header")?;
    if h[0..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf {
            path: path.to_path_buf(),
        });
    }
    let unsupported = |what: &str| ElfError::Unsupported {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    if h[4] != 2 {
        return Err(unsupported("32-bit ELF"));
    }
    if h[5] != 1 {
        return Err(unsupported("big-endian ELF"));
    }
    let machine = u16_at(&h, 18);
    let phoff = u64_at(&h, 32);
    let phentsize = u64::from(u16_at(&h, 54));
    let phnum = u64::from(u16_at(&h, 56));
    if phnum == 0xffff {
        return Err(unsupported(
            "an ELF file with more than 65534 program headers",
        ));
    }
    if phnum > 0 && phentsize < 56 {
        return Err(r.malformed("program header entries are too small"));
    }
    let table = r.bytes(phoff, phentsize * phnum, "the program header table")?;
    let segments: Vec<Segment> = table
        .chunks_exact(phentsize as usize)
        .map(|p| Segment {
            kind: u32_at(p, 0),
            offset: u64_at(p, 8),
            vaddr: u64_at(p, 16),
            filesz: u64_at(p, 32),
        })
        .collect();

    let mut info = ElfInfo {
        machine,
        ..ElfInfo::default()
    };
    if let Some(s) = segments.iter().find(|s| s.kind == PT_INTERP) {
        let raw = r.bytes(s.offset, s.filesz, "PT_INTERP")?;
        info.interp =
            Some(c_string(&raw, 0).ok_or_else(|| r.malformed("PT_INTERP is not a string"))?);
    }
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(info);
    };
    let raw = r.bytes(dynamic.offset, dynamic.filesz, "PT_DYNAMIC")?;
    let mut entries = Vec::new();
    let (mut strtab, mut strsz) = (None, None);
    for e in raw.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0) as i64, u64_at(e, 8));
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_NEEDED | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
            _ => {}
        }
    }
    if entries.is_empty() {
        return Ok(info);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(r.malformed("the dynamic section has no string table"));
    };
    // DT_STRTAB is an address: find the loaded segment that maps it.
    let offset = segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .find(|s| strtab >= s.vaddr && strtab - s.vaddr < s.filesz)
        .map(|s| strtab - s.vaddr + s.offset)
        .ok_or_else(|| r.malformed("DT_STRTAB is not in any loaded segment"))?;
    let strings = r.bytes(offset, strsz, "the dynamic string table")?;
    for (tag, at) in entries {
        let s = usize::try_from(at)
            .ok()
            .and_then(|at| c_string(&strings, at))
            .ok_or_else(|| r.malformed("a dynamic entry points outside the string table"))?;
        match tag {
            DT_NEEDED => info.needed.push(s),
            DT_RUNPATH => info.runpath.extend(split_path(&s)),
            _ => info.rpath.extend(split_path(&s)),
        }
    }
    Ok(info)
}

fn c_string(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

fn split_path(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(':').filter(|p| !p.is_empty()).map(str::to_string)
}

/// One shared library a binary needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// The `DT_NEEDED` name (`libc.so.6`).
    pub name: String,
    /// Where it was found, symlinks kept: the path the loader will open, and so
    /// the path it must have in an image.
    pub path: PathBuf,
    /// Found through a RUNPATH or RPATH entry (the loader finds it there again
    /// without any configuration), rather than in a searched directory.
    pub via_runpath: bool,
}

/// Everything a binary needs besides itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The loader (`PT_INTERP`), as the binary names it; `None` when static.
    pub loader: Option<PathBuf>,
    /// The shared libraries, transitively, in the order they were first needed.
    pub libraries: Vec<Library>,
}

/// Finds libraries the way the dynamic loader does, from a fixed list of
/// directories (ld.so.conf's, then the defaults).
#[derive(Debug, Clone)]
pub struct Resolver {
    /// Searched after RPATH/RUNPATH: ld.so.conf's directories, then [`DEFAULT_DIRS`].
    pub dirs: Vec<PathBuf>,
}

impl Resolver {
    /// The directories of `/etc/ld.so.conf` (and what it includes), then the defaults.
    pub fn system() -> Resolver {
        let mut dirs = Vec::new();
        read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
        for d in DEFAULT_DIRS {
            dirs.push(PathBuf::from(d));
        }
        let mut seen = std::collections::HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        Resolver { dirs }
    }

    pub fn with_dirs(dirs: Vec<PathBuf>) -> Resolver {
        Resolver { dirs }
    }

    /// The loader and the transitive shared libraries `binary` needs. A static
    /// binary needs nothing; a library not found is an error naming it.
    pub fn resolve(&self, binary: &Path) -> Result<Needs, ElfError> {
        let info = read(binary)?;
        let origin = std::fs::canonicalize(binary)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| binary.parent().unwrap_or(Path::new("/")).to_path_buf());
        let mut needs = Needs {
            loader: info.interp.as_ref().map(PathBuf::from),
            libraries: Vec::new(),
        };
        // The loader is already loaded under its own name: a library that
        // needs it (libc does) gets it without a search.
        let loader_name = needs
            .loader
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        // The executable's RPATH applies to every library that has no RUNPATH.
        let exe_rpath = if info.runpath.is_empty() {
            expand(&info.rpath, &origin)
        } else {
            Vec::new()
        };
        let mut found = BTreeSet::new();
        let mut queue = VecDeque::from([(binary.to_path_buf(), origin, info)]);
        while let Some((path, origin, info)) = queue.pop_front() {
            for name in &info.needed {
                if found.contains(name) || loader_name.as_deref() == Some(name.as_str()) {
                    continue;
                }
                let lib = self.find(name, &path, &origin, &info, &exe_rpath)?;
                found.insert(name.clone());
                let lib_info = read(&lib.path)?;
                let lib_origin = lib.path.parent().unwrap_or(Path::new("/")).to_path_buf();
                queue.push_back((lib.path.clone(), lib_origin, lib_info));
                needs.libraries.push(lib);
            }
        }
        Ok(needs)
    }

    /// Finds one library `name` needed by the object at `needed_by` (whose
    /// directory is `origin` and whose headers are `info`).
    pub fn find(
        &self,
        name: &str,
        needed_by: &Path,
        origin: &Path,
        info: &ElfInfo,
        exe_rpath: &[PathBuf],
    ) -> Result<Library, ElfError> {
        if name.contains('/') {
            let path = PathBuf::from(name);
            return if path.is_file() {
                Ok(Library {
                    name: name.to_string(),
                    path,
                    via_runpath: true,
                })
            } else {
                Err(ElfError::MissingLibrary {
                    name: name.to_string(),
                    needed_by: needed_by.to_path_buf(),
                    searched: Vec::new(),
                })
            };
        }
        // ld.so: DT_RPATH (of the object, then the executable) only when the
        // object has no DT_RUNPATH; then DT_RUNPATH; then the cache and defaults.
        let mut own: Vec<PathBuf> = Vec::new();
        if info.runpath.is_empty() {
            own.extend(expand(&info.rpath, origin));
            own.extend(exe_rpath.iter().cloned());
        } else {
            own.extend(expand(&info.runpath, origin));
        }
        let mut searched = Vec::new();
        for (dir, via_runpath) in own
            .iter()
            .map(|d| (d, true))
            .chain(self.dirs.iter().map(|d| (d, false)))
        {
            let candidate = dir.join(name);
            searched.push(dir.clone());
            // The loader skips a library of another machine (a 32-bit libc in a
            // directory searched first) and goes on.
            match read(&candidate) {
                Ok(lib) if lib.machine == info.machine => {
                    return Ok(Library {
                        name: name.to_string(),
                        path: candidate,
                        via_runpath,
                    });
                }
                _ => continue,
            }
        }
        searched.dedup();
        Err(ElfError::MissingLibrary {
            name: name.to_string(),
            needed_by: needed_by.to_path_buf(),
            searched,
        })
    }
}

/// RPATH/RUNPATH entries with `$ORIGIN` / `${ORIGIN}` replaced by `origin`.
fn expand(entries: &[String], origin: &Path) -> Vec<PathBuf> {
    let o = origin.to_string_lossy();
    entries
        .iter()
        .map(|e| PathBuf::from(e.replace("${ORIGIN}", &o).replace("$ORIGIN", &o)))
        .collect()
}

/// Appends the directories listed in an ld.so.conf file, following `include`
/// lines (globs of the form `dir/*.conf`, sorted, as ldconfig reads them).
fn read_ld_so_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let base = path.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(pattern) = line
            .strip_prefix("include")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            for pat in pattern.split_whitespace() {
                let pat = base.join(pat);
                for file in glob(&pat) {
                    read_ld_so_conf(&file, dirs, depth + 1);
                }
            }
        } else if line.starts_with("hwcap") {
            continue;
        } else {
            for d in line
                .split([' ', '\t', ':', ','])
                .filter(|d| d.starts_with('/'))
            {
                dirs.push(PathBuf::from(d));
            }
        }
    }
}

/// The files matching `pattern`, whose last component may hold `*` wildcards.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    if !name.contains('*') {
        return vec![pattern.to_path_buf()];
    }
    let parts: Vec<&str> = name.split('*').collect();
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wildcard_match(&parts, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `parts` is a pattern split at `*`.
fn wildcard_match(parts: &[&str], s: &str) -> bool {
    let (first, rest) = parts.split_first().expect("split yields one part");
    let Some(mut s) = s.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return s.is_empty();
    };
    for p in middle {
        match s.find(p) {
            Some(i) => s = &s[i + p.len()..],
            None => return false,
        }
    }
    s.len() >= last.len() && s.ends_with(last)
}

#[cfg(test)]
#[path = "elf_tests.rs"]
mod tests;
