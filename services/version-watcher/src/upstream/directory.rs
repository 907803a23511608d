//! Local directories: each sub-directory is a version (named by the directory, published at its
//! modification time), or the first line of a version file is the version.

use std::time::SystemTime;

use super::ProbeError;
use crate::state::{Listing, Observed};

/// Probes the directory at `path`.
pub async fn probe(path: &str, version_file: &str) -> Result<Listing, ProbeError> {
    if !version_file.is_empty() {
        let file = format!("{path}/{version_file}");
        let text = tokio::fs::read_to_string(&file)
            .await
            .map_err(|e| ProbeError::new(format!("reading {file}: {e}")))?;
        let name = text.lines().next().unwrap_or_default().trim().to_string();
        if name.is_empty() {
            return Err(ProbeError::new(format!("{file}: the first line is empty")));
        }
        let published_at = tokio::fs::metadata(&file)
            .await
            .ok()
            .and_then(|m| m.modified().ok());
        return Ok(Listing {
            items: vec![Observed {
                name,
                digest: String::new(),
                published_at,
            }],
            complete: false,
        });
    }
    let mut entries = tokio::fs::read_dir(path)
        .await
        .map_err(|e| ProbeError::new(format!("reading {path}: {e}")))?;
    let mut items = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| ProbeError::new(format!("reading {path}: {e}")))?
    {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Hidden entries are work in progress (a version being copied in under a temporary name).
        if name.starts_with('.') {
            continue;
        }
        let Ok(metadata) = entry.metadata().await else {
            continue;
        };
        if metadata.is_dir() {
            items.push(Observed {
                name,
                digest: String::new(),
                published_at: metadata
                    .modified()
                    .ok()
                    .filter(|t| *t > SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(Listing {
        items,
        complete: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subdirectories_and_version_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        std::fs::create_dir(dir.path().join("v1")).unwrap();
        std::fs::create_dir(dir.path().join(".v2.tmp")).unwrap();
        std::fs::write(dir.path().join("VERSION"), "7.1\nrest").unwrap();
        let listing = probe(path, "").await.unwrap();
        let names: Vec<_> = listing.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["v1"]);
        assert!(listing.complete);
        let listing = probe(path, "VERSION").await.unwrap();
        assert_eq!(listing.items[0].name, "7.1");
        assert!(!listing.complete);
        assert!(probe("/nonexistent/dir", "").await.is_err());
    }
}
