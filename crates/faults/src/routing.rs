//! haproxy's own view of the backends: every `Server BACKEND/NAME is UP|DOWN` transition it
//! logs (it evaluates each server's checks independently — held `/leader` checks included —
//! so this is exactly what it routes by), recorded into the history as `haproxy` events, and
//! the intervals in which it held two servers of one backend UP at once.
//!
//! Such an interval is not split brain by itself (a fenced old leader refuses writes; the
//! checker's timeline/probe rule decides safety), but during it haproxy may send new
//! connections to either node: it is reported with its length, never hidden below a tolerance.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::history::{Entry, Recorder};

/// Event kind in the history.
pub const EVENT: &str = "haproxy";

/// One `Server B/N is UP|DOWN` line of haproxy's log, as (backend, server, up).
pub fn parse_transition(line: &str) -> Option<(String, String, bool)> {
    let rest = &line[line.find("Server ")? + "Server ".len()..];
    let (id, tail) = rest.split_once(' ')?;
    let (backend, server) = id.split_once('/')?;
    let up = if tail.starts_with("is UP") {
        true
    } else if tail.starts_with("is DOWN") {
        false
    } else {
        return None;
    };
    Some((backend.to_string(), server.to_string(), up))
}

/// Servers of `backend` UP after the transitions in `log_text`, haproxy starting with every
/// server of `servers` UP (its initial state before the first check).
pub fn state_after(log_text: &str, backend: &str, servers: &[String]) -> BTreeSet<String> {
    let mut up: BTreeSet<String> = servers.iter().cloned().collect();
    for (b, s, is_up) in log_text.lines().filter_map(parse_transition) {
        if b == backend {
            if is_up {
                up.insert(s);
            } else {
                up.remove(&s);
            }
        }
    }
    up
}

/// Waits until haproxy's first checks leave at most one server of `backend` UP (it starts
/// with all of them UP), so the recorded history begins from a true state. Returns that state
/// and how much of the log it is based on (where [`watch`] goes on).
pub fn wait_settled(
    log: &Path,
    backend: &str,
    servers: &[String],
    deadline: Duration,
) -> Result<(BTreeSet<String>, u64)> {
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(log).unwrap_or_default();
        // Only whole lines: a transition half written is read again by `watch`.
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&bytes[..whole]);
        let up = state_after(&text, backend, servers);
        if up.len() <= 1 {
            return Ok((up, whole as u64));
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                what: format!(
                    "haproxy's first checks to leave one {backend} server UP (UP: {up:?}; log {})",
                    log.display()
                ),
                secs: deadline.as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Records the settled state, then every transition haproxy logs after `offset`, until
/// `stop`. Lines are stamped when read (every 10 ms): the resolution of the intervals.
pub fn watch(
    log: PathBuf,
    rec: Recorder,
    backend: String,
    (initial, mut offset): (BTreeSet<String>, u64),
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::open(&log).map_err(|e| Error::io(&log, e))?;
        let names: Vec<&str> = initial.iter().map(String::as_str).collect();
        rec.event(EVENT, format!("{backend} UP: {}", names.join(",")));
        let mut pending = String::new();
        while !stop.load(Ordering::Relaxed) {
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_to_end(&mut buf))
                .map_err(|e| Error::io(&log, e))?;
            offset += buf.len() as u64;
            pending.push_str(&String::from_utf8_lossy(&buf));
            while let Some(nl) = pending.find('\n') {
                let line: String = pending.drain(..=nl).collect();
                if let Some((b, s, up)) = parse_transition(&line) {
                    if b == backend {
                        rec.event(EVENT, format!("{b}/{s} {}", if up { "UP" } else { "DOWN" }));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })
}

/// An interval in which haproxy held several servers UP at once.
#[derive(Debug, Clone, PartialEq)]
pub struct DualUp {
    pub servers: Vec<String>,
    pub from_us: u64,
    pub to_us: u64,
}

/// Replays the `haproxy` events of a history: every interval with two or more servers UP (an
/// interval still open at the end closes at `end_us`).
pub fn dual_up_intervals(entries: &[Entry], end_us: u64) -> Vec<DualUp> {
    let mut up: BTreeMap<String, ()> = BTreeMap::new();
    let mut open: Option<(u64, BTreeSet<String>)> = None;
    let mut out = Vec::new();
    for e in entries {
        let Entry::Event(ev) = e else { continue };
        if ev.what != EVENT {
            continue;
        }
        if let Some((_, list)) = ev.text.split_once(" UP: ") {
            up = list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| (s.to_string(), ()))
                .collect();
        } else if let Some((id, change)) = ev.text.rsplit_once(' ') {
            let server = id.split_once('/').map_or(id, |(_, s)| s).to_string();
            match change {
                "UP" => {
                    up.insert(server, ());
                }
                "DOWN" => {
                    up.remove(&server);
                }
                _ => continue,
            }
        }
        let now: BTreeSet<String> = up.keys().cloned().collect();
        match (&mut open, now.len() >= 2) {
            (None, true) => open = Some((ev.at_us, now)),
            (Some((_, seen)), true) => seen.extend(now),
            (Some(_), false) => {
                let (from, seen) = open.take().unwrap();
                out.push(DualUp {
                    servers: seen.into_iter().collect(),
                    from_us: from,
                    to_us: ev.at_us,
                });
            }
            (None, false) => {}
        }
    }
    if let Some((from, seen)) = open {
        out.push(DualUp {
            servers: seen.into_iter().collect(),
            from_us: from,
            to_us: end_us.max(from),
        });
    }
    out
}

/// One line per interval, for the run's summary.
pub fn describe(intervals: &[DualUp]) -> String {
    if intervals.is_empty() {
        return "haproxy never held two servers UP at once".into();
    }
    let longest = intervals
        .iter()
        .map(|d| d.to_us - d.from_us)
        .max()
        .unwrap_or(0);
    let mut s = format!(
        "haproxy held two servers UP at once {} time(s), longest {:.3}s:",
        intervals.len(),
        longest as f64 / 1e6
    );
    for d in intervals {
        s.push_str(&format!(
            "\n  {:.3}s–{:.3}s ({:.3}s): {}",
            d.from_us as f64 / 1e6,
            d.to_us as f64 / 1e6,
            (d.to_us - d.from_us) as f64 / 1e6,
            d.servers.join(" + ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Event;

    #[test]
    fn parses_haproxy_transitions() {
        let down = "[WARNING]  (21476) : Server chef_backend_postgresql/n2 is DOWN, reason: Layer7 wrong status, code: 503";
        assert_eq!(
            parse_transition(down),
            Some(("chef_backend_postgresql".into(), "n2".into(), false))
        );
        let up = "[WARNING]  (7) : Server b/n1 is UP, reason: Layer7 check passed, code: 200";
        assert_eq!(parse_transition(up), Some(("b".into(), "n1".into(), true)));
        assert_eq!(
            parse_transition("[ALERT] backend 'b' has no server available!"),
            None
        );
        let servers: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let text = format!(
            "{down}\n[WARNING] (1) : Server chef_backend_postgresql/n3 is DOWN, reason: x\n"
        );
        let up_now = state_after(&text, "chef_backend_postgresql", &servers);
        assert_eq!(
            up_now.into_iter().collect::<Vec<_>>(),
            vec!["n1".to_string()]
        );
    }

    fn ev(at_us: u64, text: &str) -> Entry {
        Entry::Event(Event {
            at_us,
            what: EVENT.into(),
            text: text.into(),
        })
    }

    #[test]
    fn finds_every_dual_up_interval_however_short() {
        let b = "chef_backend_postgresql";
        let h = vec![
            ev(0, &format!("{b} UP: n1")),
            ev(1_000, &format!("{b}/n2 UP")),
            ev(1_040, &format!("{b}/n1 DOWN")),
            ev(5_000, &format!("{b}/n2 DOWN")),
            ev(9_000, &format!("{b}/n3 UP")),
            ev(9_500, &format!("{b}/n1 UP")),
        ];
        let d = dual_up_intervals(&h, 20_000);
        assert_eq!(
            d,
            vec![
                DualUp {
                    servers: vec!["n1".into(), "n2".into()],
                    from_us: 1_000,
                    to_us: 1_040
                },
                DualUp {
                    servers: vec!["n1".into(), "n3".into()],
                    from_us: 9_500,
                    to_us: 20_000
                },
            ]
        );
        assert!(describe(&d).contains("2 time(s)"));
        assert!(describe(&[]).contains("never"));
    }
}
