//! What an image holds, read back from its layers (`docker save`): for tests
//! that check an image has exactly the files it should.

use crate::{Docker, DockerError};
use futures_util::StreamExt;
use std::collections::BTreeMap;

/// One path in an image's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute; a directory's ends with `/`.
    pub path: String,
    /// Permission bits (`0o1777` for `/tmp/`).
    pub mode: u32,
    pub size: u64,
}

/// What image `tag` holds, read from its layers (`docker save`), sorted by path.
pub async fn files_in(docker: &Docker, tag: &str) -> Result<Vec<Entry>, DockerError> {
    let mut saved = Vec::new();
    let mut stream = docker.export_image(tag);
    while let Some(chunk) = stream.next().await {
        saved.extend_from_slice(&chunk.map_err(DockerError::from_bollard)?);
    }
    let unreadable = |what: String| DockerError::Api {
        host: crate::host(),
        status: None,
        message: format!("cannot read the saved image {tag}: {what}"),
    };
    // `manifest.json` names the layers in order: `<id>/layer.tar` up to Docker
    // 24, `blobs/sha256/<digest>` in the OCI layout of later engines.
    let mut members: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut archive = tar::Archive::new(saved.as_slice());
    for entry in archive.entries().map_err(|e| unreadable(e.to_string()))? {
        let mut entry = entry.map_err(|e| unreadable(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| unreadable(e.to_string()))?;
        let path = path.display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| unreadable(e.to_string()))?;
        members.insert(path, data);
    }
    let manifest: serde_json::Value = members
        .get("manifest.json")
        .and_then(|m| serde_json::from_slice(m).ok())
        .ok_or_else(|| unreadable("no manifest.json".into()))?;
    let layers: Vec<&Vec<u8>> = manifest[0]["Layers"]
        .as_array()
        .ok_or_else(|| unreadable("manifest.json lists no layers".into()))?
        .iter()
        .map(|l| {
            l.as_str()
                .and_then(|l| members.get(l))
                .ok_or_else(|| unreadable(format!("layer {l} is missing")))
        })
        .collect::<Result<_, _>>()?;
    let mut paths = BTreeMap::new();
    for layer in layers {
        let mut archive = tar::Archive::new(layer.as_slice());
        for entry in archive.entries().map_err(|e| unreadable(e.to_string()))? {
            let entry = entry.map_err(|e| unreadable(e.to_string()))?;
            let path = entry.path().map_err(|e| unreadable(e.to_string()))?;
            let mut p = format!("/{}", path.display().to_string().trim_end_matches('/'));
            if entry.header().entry_type().is_dir() {
                p.push('/');
            }
            let mode = entry.header().mode().unwrap_or(0) & 0o7777;
            let size = entry.header().size().unwrap_or(0);
            paths.insert(
                p.clone(),
                Entry {
                    path: p,
                    mode,
                    size,
                },
            );
        }
    }
    Ok(paths.into_values().collect())
}
