//! Percentiles and process resource usage for the benchmark tables.

/// Nearest-rank percentile of `values` (0 < p ≤ 100); `None` for an empty set.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// CPU time (user+system, seconds) of one process. The benchmark compares the HA agent
/// process alone (Patroni's python process vs. `larder agent`), not its children.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 14 and 15 (utime, stime) are indices 11 and 12 after the comm
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let hz = clock_ticks();
    Some((utime + stime) / hz)
}

pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Samples one process over `window`: returns (CPU % of one core, RSS bytes at the end).
pub fn idle_usage(pid: i32, window: std::time::Duration) -> Option<(f64, u64)> {
    let c0 = cpu_seconds(pid)?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(window);
    let c1 = cpu_seconds(pid)?;
    let rss = rss_bytes(pid)?;
    Some((100.0 * (c1 - c0) / t0.elapsed().as_secs_f64(), rss))
}

/// [`idle_usage`] summed over several processes (one agent made of several processes).
pub fn idle_usage_sum(pids: &[i32], window: std::time::Duration) -> Option<(f64, u64)> {
    let c0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<Option<f64>>()?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(window);
    let c1: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<Option<f64>>()?;
    let rss: u64 = pids.iter().map(|p| rss_bytes(*p)).sum::<Option<u64>>()?;
    Some((100.0 * (c1 - c0) / t0.elapsed().as_secs_f64(), rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(cpu_seconds(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
