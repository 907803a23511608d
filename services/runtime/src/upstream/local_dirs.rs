//! Which local directories a server may read for `directory` sources.
//!
//! A directory source names a path on the server's own filesystem, and the VersionWatcher lists
//! it while the DataRepository copies it and serves it to any pod. Without a limit, any client
//! able to call them could make them read — and serve — whatever the process can read (service
//! account tokens, other mounted secrets). So directory sources are off until the operator names
//! the directories they may come from, and a path counts as inside only after its symlinks are
//! resolved.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `--allow-directory` flag of the servers that read directory sources.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LocalDirectoryArgs {
    /// Directory sources may only read under this directory (repeatable; comma-separated in the
    /// environment). Without it, directory sources are refused: a client could otherwise make the
    /// server read and serve any file it can read.
    #[arg(
        long = "allow-directory",
        value_name = "DIR",
        env = "AUTOCRANE_ALLOW_DIRECTORIES",
        value_delimiter = ','
    )]
    pub allow_directories: Vec<PathBuf>,
}

impl LocalDirectoryArgs {
    /// The allow-list these flags describe.
    pub fn allowed(&self) -> AllowedDirectories {
        AllowedDirectories::new(self.allow_directories.iter().cloned())
    }
}

/// Directories (with everything below them) that directory sources may read; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AllowedDirectories {
    roots: Arc<[PathBuf]>,
}

impl AllowedDirectories {
    /// The directories under `roots`; none means directory sources are refused. Roots are
    /// resolved once here (a root that does not exist yet is kept as written).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            roots: roots
                .into_iter()
                .map(|root| std::fs::canonicalize(&root).unwrap_or(root))
                .collect(),
        }
    }

    /// Whether `path` may be read: `Err` says why not, for an INVALID_ARGUMENT or a probe error.
    /// Symlinks are resolved on both sides, so a link under an allowed directory that points
    /// outside it is outside. A path that does not exist yet is judged as written (sources are
    /// validated to be absolute and without `..`); reading it later is checked again.
    pub fn check(&self, path: &Path) -> Result<(), String> {
        if self.roots.is_empty() {
            return Err(
                "directory sources are disabled on this server (start it with --allow-directory DIR)"
                    .into(),
            );
        }
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(())
        } else {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            Err(format!(
                "{} is outside the directories this server may read ({})",
                path.display(),
                roots.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_an_allowed_directory_pass_even_through_symlinks() {
        let base =
            std::env::temp_dir().join(format!("autocrane-local-dirs-{}", std::process::id()));
        let allowed = base.join("data");
        let outside = base.join("secrets");
        std::fs::create_dir_all(allowed.join("app/v1")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
        let dirs = AllowedDirectories::new([allowed.clone()]);

        assert_eq!(dirs.check(&allowed), Ok(()));
        assert_eq!(dirs.check(&allowed.join("app")), Ok(()));
        assert_eq!(dirs.check(&allowed.join("not-yet")), Ok(()));
        let err = dirs.check(&outside).unwrap_err();
        assert!(
            err.contains("is outside the directories this server may read"),
            "{err}"
        );
        assert!(
            dirs.check(&allowed.join("escape")).is_err(),
            "a symlink out of the allowed directory is outside"
        );
        assert!(
            dirs.check(Path::new("/etc")).is_err(),
            "a sibling of the allowed directory is outside"
        );
        // A prefix of a name is not a parent directory.
        assert!(dirs.check(&base.join("data-other")).is_err());
        let none = AllowedDirectories::default().check(&allowed).unwrap_err();
        assert!(none.contains("--allow-directory"), "{none}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
