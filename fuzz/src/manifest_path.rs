//! Manifest path rules (DataRepository and DataDeployer): a path from an archive or a manifest is
//! accepted only in a normal form that, joined to a directory, stays under it: relative, no `..`,
//! `.` or empty components, no control characters or backslashes; normalising is idempotent. A
//! digest's hex part (used as a blob file name) is exactly 64 lower-case hex digits.

use std::path::{Component, Path};

use autocrane_api::manifest::{digest_hex, normalize_path};

/// Whether `path` is a relative path of normal components only (so it cannot leave the directory
/// it is joined to, lexically).
pub fn stays_inside(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(raw) = crate::text(data) else {
        return;
    };
    if let Ok(path) = normalize_path(raw) {
        assert!(stays_inside(&path), "{raw:?} normalises to {path:?}");
        assert_eq!(
            normalize_path(&path).as_deref(),
            Ok(path.as_str()),
            "normalising {raw:?} is not idempotent"
        );
        let base = Path::new("/stage/version");
        assert!(base.join(&path).starts_with(base));
    }
    if let Some(hex) = digest_hex(raw) {
        assert_eq!(hex.len(), 64, "{raw:?}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{raw:?}"
        );
    }
}
