//! The image table: which local program stands in for an image when a container has no
//! `command`. Patterns are exact image references or a prefix ending in `*`
//! (`autocrane:*`, `registry.local/autocrane*`); the first match wins.

use std::path::{Path, PathBuf};

/// Image pattern → local program.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<(String, PathBuf)>,
}

impl ImageMap {
    /// An empty table: every container needs a `command`.
    pub fn new() -> Self {
        ImageMap::default()
    }

    /// Map images matching `pattern` to `program` (builder style).
    pub fn with(mut self, pattern: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        self.insert(pattern, program);
        self
    }

    /// Map images matching `pattern` to `program`.
    pub fn insert(&mut self, pattern: impl Into<String>, program: impl Into<PathBuf>) {
        self.entries.push((pattern.into(), program.into()));
    }

    /// The program for `image`, if any pattern matches.
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        self.entries
            .iter()
            .find(|(p, _)| matches(p, image))
            .map(|(_, prog)| prog.as_path())
    }
}

impl<P: Into<String>, Q: Into<PathBuf>> FromIterator<(P, Q)> for ImageMap {
    fn from_iter<T: IntoIterator<Item = (P, Q)>>(iter: T) -> Self {
        ImageMap {
            entries: iter
                .into_iter()
                .map(|(p, q)| (p.into(), q.into()))
                .collect(),
        }
    }
}

fn matches(pattern: &str, image: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => pattern == image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_patterns_match_first_wins() {
        let m = ImageMap::new()
            .with("autocrane:*", "/bin/autocrane")
            .with("busybox", "/bin/busybox")
            .with("*", "/bin/true");
        assert_eq!(
            m.resolve("autocrane:1.2.3"),
            Some(Path::new("/bin/autocrane"))
        );
        assert_eq!(m.resolve("busybox"), Some(Path::new("/bin/busybox")));
        assert_eq!(m.resolve("busybox:1"), Some(Path::new("/bin/true")));
        assert_eq!(ImageMap::new().resolve("nginx"), None);
    }
}
