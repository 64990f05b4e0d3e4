//! Tests of `elf.rs`: ELF files made in memory (`synth`) in temp directories,
//! searched as ld.so would search them, plus this test binary itself.

use super::*;

const X86_64: u16 = 62;

/// A minimal ELF64 file: one PT_LOAD over the whole file, PT_INTERP when
/// `interp` is given, PT_DYNAMIC with NEEDED / RUNPATH / RPATH entries.
fn synth(
    machine: u16,
    interp: Option<&str>,
    needed: &[&str],
    runpath: Option<&str>,
    rpath: Option<&str>,
) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let phnum: u64 = if interp.is_some() { 3 } else { 2 };
    let mut data = Vec::new();
    let data_start = 64 + 56 * phnum;
    let interp_off = data_start;
    if let Some(i) = interp {
        data.extend_from_slice(i.as_bytes());
        data.push(0);
    }
    let strtab_off = data_start + data.len() as u64;
    let mut strtab = vec![0u8];
    let mut add = |s: &str| {
        let at = strtab.len() as u64;
        strtab.extend_from_slice(s.as_bytes());
        strtab.push(0);
        at
    };
    let mut dynamic: Vec<(i64, u64)> = needed.iter().map(|n| (DT_NEEDED, add(n))).collect();
    if let Some(r) = runpath {
        dynamic.push((DT_RUNPATH, add(r)));
    }
    if let Some(r) = rpath {
        dynamic.push((DT_RPATH, add(r)));
    }
    dynamic.push((DT_STRTAB, BASE + strtab_off));
    dynamic.push((DT_STRSZ, strtab.len() as u64));
    dynamic.push((DT_NULL, 0));
    data.extend_from_slice(&strtab);
    while !(data_start + data.len() as u64).is_multiple_of(8) {
        data.push(0);
    }
    let dyn_off = data_start + data.len() as u64;
    for (tag, val) in &dynamic {
        data.extend_from_slice(&tag.to_le_bytes());
        data.extend_from_slice(&val.to_le_bytes());
    }
    let total = data_start + data.len() as u64;

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    f.extend_from_slice(&machine.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let mut ph = |kind: u32, offset: u64, size: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&offset.to_le_bytes());
        f.extend_from_slice(&(BASE + offset).to_le_bytes());
        f.extend_from_slice(&(BASE + offset).to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&8u64.to_le_bytes());
    };
    ph(PT_LOAD, 0, total);
    if let Some(i) = interp {
        ph(PT_INTERP, interp_off, i.len() as u64 + 1);
    }
    ph(PT_DYNAMIC, dyn_off, 16 * dynamic.len() as u64);
    f.extend_from_slice(&data);
    assert_eq!(f.len() as u64, total);
    f
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn reads_a_synthetic_elf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("app");
    write(
        &p,
        &synth(
            X86_64,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["liba.so.1", "libb.so.2"],
            Some("$ORIGIN/../lib:/opt/x"),
            None,
        ),
    );
    let info = read(&p).unwrap();
    assert_eq!(
        info,
        ElfInfo {
            machine: X86_64,
            interp: Some("/lib64/ld-linux-x86-64.so.2".into()),
            needed: vec!["liba.so.1".into(), "libb.so.2".into()],
            runpath: vec!["$ORIGIN/../lib".into(), "/opt/x".into()],
            rpath: vec![],
        }
    );
}

#[test]
fn this_test_binary_needs_libc_and_the_loader() {
    let exe = std::env::current_exe().unwrap();
    let info = read(&exe).unwrap();
    assert!(!info.is_static(), "{info:?}");
    let needs = Resolver::system().resolve(&exe).unwrap();
    let loader = needs.loader.expect("a dynamic executable names its loader");
    assert!(loader.is_absolute() && loader.exists(), "{loader:?}");
    let names: Vec<&str> = needs.libraries.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"libc.so.6"), "{names:?}");
    let loader_name = loader.file_name().unwrap().to_str().unwrap();
    assert!(
        !names.contains(&loader_name),
        "the loader is not searched as a library: {names:?}"
    );
    for l in &needs.libraries {
        assert!(l.path.is_file(), "{l:?}");
        assert!(
            l.path.ends_with(&l.name),
            "kept under its NEEDED name: {l:?}"
        );
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "each library once: {names:?}");
}

#[test]
fn a_static_binary_needs_nothing() {
    let busybox = Path::new("/bin/busybox");
    let info = if busybox.exists() && read(busybox).is_ok_and(|i| i.is_static()) {
        read(busybox).unwrap()
    } else {
        eprintln!("no static /bin/busybox (apt-get install busybox-static); using a synthetic one");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("static");
        write(&p, &synth(X86_64, None, &[], None, None));
        let needs = Resolver::system().resolve(&p).unwrap();
        assert_eq!(needs, Needs::default());
        return;
    };
    assert!(info.is_static());
    assert_eq!(
        Resolver::system().resolve(busybox).unwrap(),
        Needs::default()
    );
}

#[test]
fn runpath_origin_and_search_dirs_resolve_transitively_keeping_symlink_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let app = root.join("app/bin/app");
    write(
        &app,
        &synth(X86_64, None, &["libdep.so.1"], Some("$ORIGIN/../lib"), None),
    );
    write(
        &root.join("app/lib/libdep.so.1"),
        &synth(X86_64, None, &["libleaf.so.1"], None, None),
    );
    // In the first searched directory a library of another machine, skipped as
    // the loader skips it; in the second the real one behind a symlink.
    write(
        &root.join("wrong/libleaf.so.1"),
        &synth(183, None, &[], None, None),
    );
    write(
        &root.join("sys/libleaf.so.1.2.3"),
        &synth(X86_64, None, &[], None, None),
    );
    std::os::unix::fs::symlink("libleaf.so.1.2.3", root.join("sys/libleaf.so.1")).unwrap();

    let r = Resolver::with_dirs(vec![root.join("wrong"), root.join("sys")]);
    let needs = r.resolve(&app).unwrap();
    assert_eq!(needs.loader, None);
    let got: Vec<(&str, PathBuf, bool)> = needs
        .libraries
        .iter()
        .map(|l| (l.name.as_str(), l.path.clone(), l.via_runpath))
        .collect();
    let app_dir = std::fs::canonicalize(root.join("app/bin")).unwrap();
    assert_eq!(
        got,
        vec![
            ("libdep.so.1", app_dir.join("../lib/libdep.so.1"), true),
            ("libleaf.so.1", root.join("sys/libleaf.so.1"), false),
        ]
    );
}

#[test]
fn rpath_of_the_executable_applies_to_its_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let app = root.join("app");
    let rpath = root.join("private").display().to_string();
    write(
        &app,
        &synth(X86_64, None, &["libone.so"], None, Some(&rpath)),
    );
    write(
        &root.join("private/libone.so"),
        &synth(X86_64, None, &["libtwo.so"], None, None),
    );
    write(
        &root.join("private/libtwo.so"),
        &synth(X86_64, None, &[], None, None),
    );
    let needs = Resolver::with_dirs(vec![]).resolve(&app).unwrap();
    let names: Vec<&str> = needs.libraries.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["libone.so", "libtwo.so"]);
}

#[test]
fn a_missing_library_is_named_with_the_dirs_searched() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    write(
        &app,
        &synth(
            X86_64,
            None,
            &["libchora-missing.so.9"],
            Some("/nonexistent/rp"),
            None,
        ),
    );
    let r = Resolver::with_dirs(vec![dir.path().join("a"), dir.path().join("b")]);
    let e = r.resolve(&app).unwrap_err();
    let ElfError::MissingLibrary {
        name,
        needed_by,
        searched,
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(name, "libchora-missing.so.9");
    assert_eq!(needed_by, &app);
    assert_eq!(
        searched,
        &[
            PathBuf::from("/nonexistent/rp"),
            dir.path().join("a"),
            dir.path().join("b")
        ]
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("libchora-missing.so.9, needed by "),
        "{msg}"
    );
    assert!(msg.contains("/nonexistent/rp, "), "{msg}");
}

#[test]
fn text_empty_and_truncated_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    write(
        &text,
        b"#!/bin/sh\necho this is a script, not an ELF binary\n",
    );
    assert!(matches!(read(&text), Err(ElfError::NotElf { .. })));
    let empty = dir.path().join("empty");
    write(&empty, b"");
    assert!(matches!(read(&empty), Err(ElfError::NotElf { .. })));
    assert!(matches!(read(dir.path()), Err(ElfError::NotElf { .. })));
    assert!(matches!(
        read(&dir.path().join("nope")),
        Err(ElfError::Io { .. })
    ));

    let mut cut = synth(X86_64, None, &["liba.so"], None, None);
    cut.truncate(120);
    let p = dir.path().join("cut");
    write(&p, &cut);
    let e = read(&p).unwrap_err();
    assert!(matches!(e, ElfError::Malformed { .. }), "{e:?}");

    let mut elf32 = synth(X86_64, None, &[], None, None);
    elf32[4] = 1;
    write(&p, &elf32);
    let e = read(&p).unwrap_err();
    assert!(e.to_string().contains("32-bit ELF"), "{e}");
}

#[test]
fn ld_so_conf_follows_includes_and_skips_comments() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("ld.so.conf"),
        b"# top\ninclude ld.so.conf.d/*.conf\n/opt/top/lib\n",
    );
    write(&root.join("ld.so.conf.d/b.conf"), b"/opt/b # trailing\n\n");
    write(
        &root.join("ld.so.conf.d/a.conf"),
        b"/opt/a1\n/opt/a2:/opt/a3\n",
    );
    write(&root.join("ld.so.conf.d/a.conf.bak"), b"/opt/ignored\n");
    let mut dirs = Vec::new();
    read_ld_so_conf(&root.join("ld.so.conf"), &mut dirs, 0);
    let want: Vec<PathBuf> = ["/opt/a1", "/opt/a2", "/opt/a3", "/opt/b", "/opt/top/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(dirs, want);
}

#[test]
fn wildcards_match_like_a_shell_glob() {
    let m = |pat: &str, s: &str| wildcard_match(&pat.split('*').collect::<Vec<_>>(), s);
    assert!(m("*.conf", "libc.conf"));
    assert!(!m("*.conf", "libc.conf.bak"));
    assert!(m("a*b*c", "axxbyyc"));
    assert!(!m("a*b*c", "axxbyy"));
    assert!(m("exact", "exact"));
    assert!(!m("*.conf", "conf"));
}
