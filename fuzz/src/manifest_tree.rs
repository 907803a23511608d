//! The tree rules of a data version (`check_manifest`, run by the DataDeployer on every manifest it
//! receives): an accepted tree has paths in normal form, no duplicates, nothing under a file or a
//! link, and every symbolic link, resolved the way the kernel would (following links, `..`
//! included), stays inside the version directory.
//!
//! Input: one entry per line, `<path>` for a file, `<path>\t<target>` for a symbolic link.

use std::collections::{BTreeMap, BTreeSet};

use autocrane_api::{
    manifest::{check_manifest, normalize_path, sha256_digest},
    proto::data_v1::FileEntry,
};

/// Why a resolution stopped short of a path inside the root.
#[derive(Debug)]
enum Stop {
    /// Too many links (the kernel's ELOOP): harmless.
    Loop,
    /// Above the version root.
    Escape,
}

/// Resolves `target` from the directory `dir` (components below the root), following the links in
/// `links` as the kernel does.
fn resolve(
    links: &BTreeMap<&str, &str>,
    mut dir: Vec<String>,
    target: &str,
    depth: usize,
) -> Result<Vec<String>, Stop> {
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if dir.pop().is_none() {
                    return Err(Stop::Escape);
                }
            }
            name => {
                dir.push(name.to_string());
                if let Some(next) = links.get(dir.join("/").as_str()) {
                    if depth >= 40 {
                        return Err(Stop::Loop);
                    }
                    dir.pop();
                    dir = resolve(links, dir, next, depth + 1)?;
                }
            }
        }
    }
    Ok(dir)
}

/// Panics unless `entries` (an accepted tree) keeps every path and link inside its root.
pub fn assert_tree_stays_inside(entries: &[FileEntry]) {
    let mut seen = BTreeSet::new();
    for entry in entries {
        assert_eq!(
            normalize_path(&entry.path).as_deref(),
            Ok(entry.path.as_str()),
            "{entry:?}"
        );
        assert!(
            seen.insert(entry.path.as_str()),
            "duplicate {:?}",
            entry.path
        );
    }
    for entry in entries {
        let mut prefix = String::new();
        for part in entry.path.split('/') {
            assert!(
                !seen.contains(prefix.as_str()),
                "{:?} lies under the entry {prefix:?}",
                entry.path
            );
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
    }
    let links: BTreeMap<&str, &str> = entries
        .iter()
        .filter(|e| !e.symlink_target.is_empty())
        .map(|e| (e.path.as_str(), e.symlink_target.as_str()))
        .collect();
    for (path, target) in &links {
        assert!(
            !target.starts_with('/'),
            "{path:?} -> {target:?} is absolute"
        );
        let mut dir: Vec<String> = path.split('/').map(String::from).collect();
        dir.pop();
        if let Err(Stop::Escape) = resolve(&links, dir, target, 0) {
            panic!("the link {path:?} -> {target:?} resolves outside the version directory");
        }
    }
}

/// The entries an input describes.
pub fn entries(text: &str) -> Vec<FileEntry> {
    text.lines()
        .map(|line| match line.split_once('\t') {
            Some((path, target)) => FileEntry {
                path: path.to_string(),
                mode: 0o777,
                size: 0,
                digest: String::new(),
                symlink_target: target.to_string(),
            },
            None => FileEntry {
                path: line.to_string(),
                mode: 0o644,
                size: 1,
                digest: sha256_digest(line.as_bytes()),
                symlink_target: String::new(),
            },
        })
        .collect()
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let entries = entries(text);
    if check_manifest(&entries).is_ok() {
        assert_tree_stays_inside(&entries);
    }
}
