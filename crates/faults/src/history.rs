//! The history of a run: every operation the clients and the sampler attempted, and every
//! fault and heal, as JSON lines. Times are microseconds since the run's start on a
//! monotonic clock, so the checker's "before/after" comparisons cannot be fooled by NTP.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the client knows about an operation's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: COMMIT returned success. Must survive every fault.
    Ok,
    /// Definitely not applied: refused before it could commit (connect failed, read-only
    /// replica, constraint error).
    Failed,
    /// May or may not have been applied: timeout or connection lost after sending.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Insert through haproxy, as an application would.
    Write,
    /// Direct insert on one node's PostgreSQL, bypassing haproxy (split-brain probe).
    Probe,
    /// `GET` of the health endpoint of one node (status in `status`).
    Health,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub kind: OpKind,
    /// Unique value inserted (writes, probes); 0 for health samples.
    pub id: i64,
    /// Client number, or node index for probes and health samples.
    pub process: u32,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
    /// Server address that answered (`inet_server_addr()`), for acknowledged writes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
    /// PostgreSQL timeline of the writer at commit: the "term" of its leadership.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeline: Option<u32>,
    /// HTTP status for health samples.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_us: u64,
    /// "fault", "heal", "note", "check"
    pub what: String,
    pub text: String,
}

/// What a search-workload request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchKind {
    /// `POST /_bulk` of index and delete actions.
    Bulk,
    /// `GET /chef/_search` with a Chef-shaped body.
    Query,
}

/// One request of the search workload (`search.rs`), through haproxy's 9200.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchOp {
    pub kind: SearchKind,
    pub start_us: u64,
    pub end_us: u64,
    /// `Ok`: HTTP 200. `Failed`: definitely not applied (nothing sent; refused as a
    /// follower; authentication). `Unknown`: anything else after sending.
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// Document ids the bulk indexed.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub written: Vec<String>,
    /// Document ids the bulk deleted.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub deleted: Vec<String>,
    /// Items of a 200 bulk that answered another status than 2xx: (id, status).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub item_errors: Vec<(String, u16)>,
    /// `hits.total` of a search.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Entry {
    Op(Op),
    Event(Event),
    Search(SearchOp),
}

impl Entry {
    /// When the entry ended (ops, search requests) or happened (events).
    pub fn end_us(&self) -> u64 {
        match self {
            Entry::Op(o) => o.end_us,
            Entry::Event(e) => e.at_us,
            Entry::Search(s) => s.end_us,
        }
    }
}

/// Shared, append-only recorder. Cloned into every client task; lines are flushed as they are
/// written so a crashed run still leaves a readable history.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    start: Instant,
}

struct Inner {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Recorder {
    pub fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Recorder {
            inner: Arc::new(Mutex::new(Inner {
                file: std::io::BufWriter::new(f),
                path: path.to_path_buf(),
                entries: Vec::new(),
            })),
            start: Instant::now(),
        })
    }

    /// Microseconds since the recorder was created.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn op(&self, op: Op) {
        self.push(Entry::Op(op));
    }

    pub fn search(&self, op: SearchOp) {
        self.push(Entry::Search(op));
    }

    pub fn event(&self, what: &str, text: impl Into<String>) {
        let e = Event {
            at_us: self.now_us(),
            what: what.to_string(),
            text: text.into(),
        };
        self.push(Entry::Event(e));
    }

    fn push(&self, e: Entry) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(line) = serde_json::to_string(&e) {
            // A full disk of the *suite's* machine would lose lines; the in-memory copy is
            // still checked, so ignore the write error here.
            let _ = writeln!(g.file, "{line}");
            let _ = g.file.flush();
        }
        g.entries.push(e);
    }

    /// Snapshot of everything recorded so far, in recording order.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clone()
    }

    pub fn path(&self) -> PathBuf {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .path
            .clone()
    }
}

/// Reads a history file back (for `larder-faults check HISTORY`).
pub fn load(path: &Path) -> Result<Vec<Entry>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Entry = serde_json::from_str(&line).map_err(|e| Error::History {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", n + 1),
        })?;
        out.push(e);
    }
    Ok(out)
}

/// Formats entries as one line each, for failure reports.
pub fn format_entries(entries: &[&Entry]) -> String {
    entries
        .iter()
        .map(|e| match e {
            Entry::Op(o) => format!(
                "  {:>10.3}s..{:>10.3}s {:?} p{} id={} {:?}{}{}{}{}",
                o.start_us as f64 / 1e6,
                o.end_us as f64 / 1e6,
                o.kind,
                o.process,
                o.id,
                o.outcome,
                o.node
                    .as_deref()
                    .map(|n| format!(" node={n}"))
                    .unwrap_or_default(),
                o.timeline.map(|t| format!(" tl={t}")).unwrap_or_default(),
                o.status.map(|s| format!(" http={s}")).unwrap_or_default(),
                o.error
                    .as_deref()
                    .map(|e| format!(" err={e}"))
                    .unwrap_or_default(),
            ),
            Entry::Event(ev) => format!(
                "  {:>10.3}s {:<6} {}",
                ev.at_us as f64 / 1e6,
                ev.what,
                ev.text
            ),
            Entry::Search(s) => format!(
                "  {:>10.3}s..{:>10.3}s Search{:?} {:?}{}{}{}{}{}",
                s.start_us as f64 / 1e6,
                s.end_us as f64 / 1e6,
                s.kind,
                s.outcome,
                s.status.map(|c| format!(" http={c}")).unwrap_or_default(),
                if s.written.is_empty() {
                    String::new()
                } else {
                    format!(
                        " indexed {} ({}..{})",
                        s.written.len(),
                        s.written[0],
                        s.written[s.written.len() - 1]
                    )
                },
                if s.deleted.is_empty() {
                    String::new()
                } else {
                    format!(" deleted {}", s.deleted.join(","))
                },
                s.hits.map(|h| format!(" hits={h}")).unwrap_or_default(),
                s.error
                    .as_deref()
                    .map(|e| format!(" err={e}"))
                    .unwrap_or_default(),
            ),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
