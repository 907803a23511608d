//! The rules of a data version's manifest, shared by the DataRepository (which checks every version
//! before storing it) and the DataDeployer (which checks again before writing anything: it does not
//! trust the network). Sans-IO: entry paths are relative and free of `..`, symbolic links stay
//! inside the version root (also through other links), no file hides under another file or link,
//! modes are normalised, digests are `sha256:<64 lower-case hex>`, and the manifest digest is
//! canonical.

use std::collections::BTreeMap;

use prost::Message;

use crate::proto::data_v1 as pb;

/// The prefix of every content digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// Why a version's tree is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// An entry path is absolute, empty, or has `..` or other non-normal components.
    #[error("entry {path:?}: {rule}")]
    BadPath {
        /// The path as found in the origin.
        path: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A symbolic link points outside the version root (or through another link).
    #[error("symlink {path:?} -> {target:?}: {rule}")]
    BadSymlink {
        /// The link's path.
        path: String,
        /// Its target.
        target: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Two entries have the same path, or one lies under a file or link.
    #[error("entry {path:?}: {rule}")]
    Conflict {
        /// The path.
        path: String,
        /// What conflicts.
        rule: &'static str,
    },
}

/// Normalises an entry path from an origin: strips a leading `./` and trailing `/`, and rejects
/// absolute paths, `..`, empty components and control characters.
pub fn normalize_path(raw: &str) -> Result<String, TreeError> {
    let bad = |rule| TreeError::BadPath {
        path: raw.to_string(),
        rule,
    };
    if raw.starts_with('/') || raw.starts_with('\\') {
        return Err(bad("absolute paths are not allowed"));
    }
    if raw.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("control characters and backslashes are not allowed"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(bad("`..` is not allowed")),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(bad("the path is empty"));
    }
    Ok(parts.join("/"))
}

/// The mode stored for a file: 0o755 when any execute bit is set, else 0o644.
pub fn normalize_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// Checks a whole version: no duplicates, nothing under a file or link, every link target relative
/// and resolving (lexically, and without passing through another link) inside the root. `files`
/// must be sorted by path.
pub fn check_tree(files: &[pb::FileEntry]) -> Result<(), TreeError> {
    let kinds: BTreeMap<&str, bool> = files
        .iter()
        .map(|f| (f.path.as_str(), !f.symlink_target.is_empty()))
        .collect();
    if kinds.len() != files.len() {
        let mut seen = std::collections::BTreeSet::new();
        for f in files {
            if !seen.insert(f.path.as_str()) {
                return Err(TreeError::Conflict {
                    path: f.path.clone(),
                    rule: "the path appears twice",
                });
            }
        }
    }
    for f in files {
        let mut prefix = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if kinds.contains_key(prefix.as_str()) {
                return Err(TreeError::Conflict {
                    path: f.path.clone(),
                    rule: "it lies under a file or symlink",
                });
            }
        }
        if !f.symlink_target.is_empty() {
            check_symlink(&f.path, &f.symlink_target, &kinds)?;
        }
    }
    Ok(())
}

fn check_symlink(path: &str, target: &str, kinds: &BTreeMap<&str, bool>) -> Result<(), TreeError> {
    let bad = |rule| TreeError::BadSymlink {
        path: path.to_string(),
        target: target.to_string(),
        rule,
    };
    if target.starts_with('/') {
        return Err(bad("absolute targets are not allowed"));
    }
    if target.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("control characters and backslashes are not allowed"));
    }
    let mut stack: Vec<&str> = path.split('/').collect();
    stack.pop();
    let parts: Vec<&str> = target
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (index, part) in parts.iter().enumerate() {
        if *part == ".." {
            if stack.pop().is_none() {
                return Err(bad("the target leaves the version root"));
            }
        } else {
            stack.push(part);
            // An intermediate component that is itself a link could lead anywhere after a `..`.
            if index + 1 < parts.len() && kinds.get(stack.join("/").as_str()) == Some(&true) {
                return Err(bad("the target passes through another symlink"));
            }
        }
    }
    if stack.is_empty() {
        return Err(bad("the target is the version root itself"));
    }
    Ok(())
}

/// The digest of a manifest: SHA-256 of the protobuf encoding of `Manifest` with
/// `manifest_digest` empty (prost encodes deterministically, fields in number order).
pub fn manifest_digest(source_id: &str, version: &str, files: &[pb::FileEntry]) -> String {
    let manifest = pb::Manifest {
        source_id: source_id.to_string(),
        version: version.to_string(),
        files: files.to_vec(),
        manifest_digest: String::new(),
    };
    sha256_digest(&manifest.encode_to_vec())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Whether `digest` is `sha256:` followed by 64 lower-case hex digits.
pub fn is_digest(digest: &str) -> bool {
    digest_hex(digest).is_some()
}

/// The 64 hex digits of a well-formed digest (a safe file name), `None` for anything else.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix(DIGEST_PREFIX).filter(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks a manifest received from elsewhere: every path already in normal form (as
/// [`normalize_path`] would write it), every digest well formed, and the whole tree as
/// [`check_tree`] does, in any order.
pub fn check_manifest(files: &[pb::FileEntry]) -> Result<(), TreeError> {
    for file in files {
        let normal = normalize_path(&file.path)?;
        if normal != file.path {
            return Err(TreeError::BadPath {
                path: file.path.clone(),
                rule: "the path is not in normal form",
            });
        }
        if file.symlink_target.is_empty() && !is_digest(&file.digest) {
            return Err(TreeError::BadPath {
                path: file.path.clone(),
                rule: "the digest is not sha256:<64 lower-case hex digits>",
            });
        }
    }
    let mut sorted = files.to_vec();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    check_tree(&sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> pb::FileEntry {
        pb::FileEntry {
            path: path.into(),
            mode: 0o644,
            size: 1,
            digest: sha256_digest(b"x"),
            symlink_target: String::new(),
        }
    }

    fn link(path: &str, target: &str) -> pb::FileEntry {
        pb::FileEntry {
            path: path.into(),
            mode: 0o777,
            size: 0,
            digest: String::new(),
            symlink_target: target.into(),
        }
    }

    #[test]
    fn paths_are_normalised_or_rejected() {
        assert_eq!(normalize_path("./a//b/").unwrap(), "a/b");
        assert!(normalize_path("/etc/passwd").is_err());
        assert!(normalize_path("../escape").is_err());
        assert!(normalize_path("a/../../escape").is_err());
        assert!(normalize_path("./").is_err());
        assert!(normalize_path("a\nb").is_err());
    }

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(check_tree(&[link("a/l", "../b"), file("b")]).is_ok());
        assert!(check_tree(&[link("a/l", "../../b")]).is_err());
        assert!(check_tree(&[link("l", "/etc")]).is_err());
        // Each link is lexically inside, but `l2` resolves through `d/l1` = root, then `..`.
        assert!(check_tree(&[link("d/l1", ".."), link("l2", "d/l1/..")]).is_err());
    }

    #[test]
    fn conflicts_are_rejected() {
        assert!(check_tree(&[file("a"), file("a")]).is_err());
        assert!(check_tree(&[link("d", "x"), file("d/f"), file("x/f")]).is_err());
        assert!(check_tree(&[file("d/f"), file("d/g")]).is_ok());
    }

    #[test]
    fn manifest_digest_changes_with_content() {
        let a = manifest_digest("s", "v", &[file("a")]);
        let mut changed = file("a");
        changed.digest = sha256_digest(b"y");
        assert_ne!(a, manifest_digest("s", "v", &[changed]));
        assert!(is_digest(&file("a").digest));
        assert_eq!(normalize_mode(0o700), 0o755);
        assert_eq!(normalize_mode(0o600), 0o644);
    }

    #[test]
    fn digests_are_strict() {
        let good = sha256_digest(b"x");
        assert_eq!(digest_hex(&good), good.strip_prefix("sha256:"));
        assert!(!is_digest(&good.to_uppercase()));
        assert!(!is_digest("sha256:abc"));
        assert!(!is_digest(&good.replace("sha256:", "sha512:")));
        assert!(!is_digest(&format!("{good}0")));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }

    #[test]
    fn received_manifests_are_checked_in_any_order() {
        assert!(check_manifest(&[file("b"), link("a/l", "../b")]).is_ok());
        assert!(check_manifest(&[file("./a")]).is_err(), "not normal form");
        assert!(check_manifest(&[file("a/../b")]).is_err());
        assert!(check_manifest(&[file("b"), file("a"), file("b")]).is_err());
        assert!(check_manifest(&[link("a/l", "../../etc/passwd")]).is_err());
        let mut bad_digest = file("a");
        bad_digest.digest = "sha256:../../etc".into();
        assert!(check_manifest(&[bad_digest]).is_err());
    }
}
