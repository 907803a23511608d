//! Test data: incompressible bytes without a random-number dependency, and tar archives written
//! raw (no path sanitising), so tests can build hostile ones.

use std::io::Write;

/// Deterministic pseudo-random bytes (incompressible content, the same for the same seed).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `&[&str]` → `Vec<String>` (command lines).
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// One entry of [`raw_tar`].
#[derive(Clone, Debug)]
pub struct RawEntry {
    /// The path, written as is.
    pub path: String,
    /// A regular file's content.
    pub content: Vec<u8>,
    /// A symlink's target (then the entry is a symlink).
    pub link: Option<String>,
}

/// A regular file entry.
pub fn file(path: &str, content: &[u8]) -> RawEntry {
    RawEntry {
        path: path.into(),
        content: content.to_vec(),
        link: None,
    }
}

/// A symlink entry.
pub fn symlink(path: &str, target: &str) -> RawEntry {
    RawEntry {
        path: path.into(),
        content: Vec::new(),
        link: Some(target.into()),
    }
}

/// A tar archive of `entries`; paths and link targets are written raw.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_old();
        let name = entry.path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_mode(0o644);
        header.set_mtime(0);
        match &entry.link {
            Some(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            }
            None => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.content.len() as u64);
                header.set_cksum();
                builder.append(&header, entry.content.as_slice()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
