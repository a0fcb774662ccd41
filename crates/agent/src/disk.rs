//! Free-space checks for `status` and the optional fatal system check.

use std::path::Path;

/// Free megabytes on the filesystem holding `path` (the nearest existing ancestor).
pub fn free_mb(path: &Path) -> Option<u64> {
    free_bytes(path).map(|b| b / (1024 * 1024))
}

/// Free bytes (for unprivileged users) on the filesystem holding `path`, or its nearest
/// existing ancestor.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let st = nix::sys::statvfs::statvfs(p).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}
