//! Markers in the data directory that outlive agent restarts: a data directory that ran as a
//! primary and must be rewound (`pg-diverged`), and a failed rewind against a given leader
//! (`rewind-failed`, so the next copy is a base backup).

use crate::node::Node;

pub fn rewind_failed_marker(node: &Node) -> std::path::PathBuf {
    node.paths.data_dir().join("rewind-failed")
}

pub fn diverged_marker(node: &Node) -> std::path::PathBuf {
    node.paths.data_dir().join("pg-diverged")
}

pub fn mark_diverged(node: &Node, on: bool) {
    let p = diverged_marker(node);
    if on {
        let _ = std::fs::write(
            &p,
            "this data directory ran as a primary and must be rewound before following\n",
        );
    } else {
        let _ = std::fs::remove_file(&p);
    }
}
