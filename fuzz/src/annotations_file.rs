//! The downward-API annotations file the DataDeployer reads (`key="value"` lines, Go-quoted):
//! whatever parses, written back the way the kubelet writes it, parses to the same map; every
//! desired version found in it gets a directory name that is one safe path component.

use std::{
    collections::BTreeMap,
    path::{Component, Path},
};

use autocrane_data_deployer::desired::{
    desired, is_label, parse_annotations, unquote, version_dir,
};

/// Go's `strconv.Quote`, as the kubelet writes annotation values.
pub fn go_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The directory of `version` is one normal path component, never a hidden or reserved name, and
/// the version itself when that is safe.
pub fn check_version_dir(version: &str) {
    let dir = version_dir(version);
    let mut components = Path::new(&dir).components();
    assert!(
        matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none(),
        "version {version:?} -> directory {dir:?} is not one path component"
    );
    assert!(
        !dir.is_empty() && dir.len() <= 255 && !dir.starts_with('.') && dir != "current",
        "version {version:?} -> directory {dir:?}"
    );
    assert!(!dir.contains(['/', '\0', '\\']), "{dir:?}");
    if dir != version {
        assert!(dir.starts_with("v_"), "{version:?} -> {dir:?}");
    }
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    if let Some(value) = unquote(text) {
        let quoted = go_quote(&value);
        assert_eq!(
            unquote(&quoted).as_deref(),
            Some(value.as_str()),
            "{text:?} -> {value:?} -> {quoted:?}"
        );
    }
    check_version_dir(text);
    let Ok(map) = parse_annotations(text) else {
        return;
    };
    let file: String = map
        .iter()
        .map(|(key, value)| format!("{key}={}\n", go_quote(value)))
        .collect();
    assert_eq!(
        parse_annotations(&file).as_ref(),
        Ok(&map),
        "written back as {file:?}"
    );
    let sources = BTreeMap::new();
    for want in desired(&map, &sources) {
        assert!(is_label(&want.name), "{want:?}");
        assert!(!want.version.is_empty() && want.version.trim() == want.version);
        check_version_dir(&want.version);
    }
}
