//! This build's identity: the release plus a checksum of the executable, so two builds of the
//! same release (an upgrade to a patched build, a test's older commit) are told apart in
//! `cluster-status` and by `upgrade`, which must know whether the agent runs the binary that
//! is installed now.

use std::sync::OnceLock;

/// `RELEASE+CHECKSUM` (8 hex digits of the CRC-32 of the running executable); just the release
/// when the executable cannot be read.
pub fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        // /proc/self/exe is the file this process was started from, even after a package
        // upgrade replaced the path.
        match std::fs::read("/proc/self/exe") {
            Ok(bytes) => format!(
                "{}+{:08x}",
                larder_core::version::VERSION,
                crc32fast::hash(&bytes)
            ),
            Err(_) => larder_core::version::VERSION.to_string(),
        }
    })
}

/// The same identity for an executable on disk (what `upgrade` will start).
pub fn version_of(exe: &std::path::Path) -> std::io::Result<String> {
    let bytes = std::fs::read(exe)?;
    Ok(format!(
        "{}+{:08x}",
        larder_core::version::VERSION,
        crc32fast::hash(&bytes)
    ))
}
