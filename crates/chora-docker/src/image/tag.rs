//! Image names: `NAME[:TAG]` checked the way the engine checks it, so a bad
//! name is refused before anything is read.

use super::ImageError;

/// Checks `NAME[:TAG]` the way the engine would, to say what is wrong before
/// anything is read.
pub(super) fn check(tag: &str) -> Result<(), ImageError> {
    let bad = |why| {
        Err(ImageError::BadTag {
            tag: tag.to_string(),
            why,
        })
    };
    let (name, version) = match tag.rsplit_once(':') {
        Some((n, v)) if !v.contains('/') => (n, Some(v)),
        _ => (tag, None),
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A registry host (`reg.example:5000/…`) may have dots, a port, capitals.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        parts.remove(0);
    }
    let name_ok = parts.iter().all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    });
    if !name_ok {
        return bad("a name is lower-case letters, digits, '.', '_', '-' and '/'");
    }
    if let Some(v) = version
        && (v.is_empty()
            || v.len() > 128
            || v.starts_with(['.', '-'])
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return bad("a tag is 1-128 letters, digits, '.', '_' or '-', after a ':'");
    }
    Ok(())
}

/// `NAME[:TAG]` as (name, tag), the tag `latest` when none is given.
pub(super) fn split(tag: &str) -> (&str, &str) {
    match tag.rsplit_once(':') {
        Some((n, v)) if !v.contains('/') => (n, v),
        _ => (tag, "latest"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked_before_anything_is_read() {
        for ok in [
            "chora:0.1.0",
            "chora-etcd:3.4",
            "chora",
            "reg.example:5000/team/app:v1",
            "a_b.c-d:x",
        ] {
            check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ":x",
            "Chora:1",
            "chora:",
            "chora:-x",
            "chora:a b",
            "a//b",
        ] {
            assert!(check(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tags_split_into_name_and_version() {
        assert_eq!(split("chora:0.1.0"), ("chora", "0.1.0"));
        assert_eq!(split("chora"), ("chora", "latest"));
        assert_eq!(split("reg:5000/team/app"), ("reg:5000/team/app", "latest"));
        assert_eq!(split("reg:5000/team/app:v1"), ("reg:5000/team/app", "v1"));
    }
}
