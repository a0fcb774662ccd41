//! Log generations: which part of an index's applied changes survives a change of primary.
//!
//! Positions are only unique within one history of the log. A primary that goes down can take
//! with it changes it committed locally but never replicated (a bulk in flight when it was
//! fenced, recovered by its own crash recovery). The new primary draws positions from its own
//! copy of the sequence, so its first changes can reuse the lost ones' positions. An index
//! that applied the lost changes (the old primary's, when its PostgreSQL is rewound or rebuilt
//! onto the new history) would then skip the new primary's changes at those positions for
//! good, and keep documents that exist nowhere else; the log's epoch cannot tell, since it is
//! replicated with everything else.
//!
//! So every primary records, under the writer lock and in the same transaction as its first
//! change, a generation row `(timeline, fork_pos)`: the PostgreSQL timeline it writes on and
//! the highest position it inherited. Every position of that history above `fork_pos` was
//! written on that timeline or a later one. An index records the newest generation it has
//! seen with its applied position; if the log now holds a newer generation that forked below
//! the applied position, the index may hold changes outside the log's history and is rebuilt.

/// One row of `search_generations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub timeline: i32,
    pub fork_pos: i64,
}

/// Creates the table (run on the primary with the rest of the schema).
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS search_generations (
    timeline int PRIMARY KEY, fork_pos bigint NOT NULL)";

/// A common table expression that records the primary's current timeline with the highest
/// committed position, unless it is recorded already. It runs in the statement that gives a
/// write its final positions, after the writer lock: the statement's snapshot then holds every
/// committed change, and not the writer's own (its rows still have provisional, negative
/// positions in that snapshot). The timeline comes from the WAL insert position: the
/// checkpoint's timeline lags after a promotion until the next checkpoint.
pub const RECORD_CTE: &str = "recorded AS (
    INSERT INTO search_generations (timeline, fork_pos)
    SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,
           (SELECT coalesce(max(pos), 0) FROM search_log WHERE pos > 0)
    ON CONFLICT (timeline) DO NOTHING)";

/// The newest generation, as a scalar subquery for the tailer's fetch (0 when none).
pub const NEWEST: &str = "(SELECT coalesce(max(timeline), 0) FROM search_generations)";

/// True when an index that applied the log up to `applied`, having last seen generation
/// `seen`, may hold changes that are not in a log with `generations`: a newer generation
/// forked below what the index applied. (Changes at or below the fork are common to both
/// histories.)
pub fn must_rebuild(applied: i64, seen: i32, generations: &[Generation]) -> bool {
    generations
        .iter()
        .any(|g| g.timeline > seen && g.fork_pos < applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(timeline: i32, fork_pos: i64) -> Generation {
        Generation { timeline, fork_pos }
    }

    #[test]
    fn an_index_ahead_of_a_newer_fork_is_rebuilt() {
        // The old primary applied its own lost changes up to 120; the new primary (timeline
        // 3) inherited only up to 100.
        assert!(must_rebuild(120, 2, &[g(1, 0), g(2, 40), g(3, 100)]));
    }

    #[test]
    fn a_follower_that_applied_only_the_common_history_is_kept() {
        assert!(!must_rebuild(100, 2, &[g(1, 0), g(2, 40), g(3, 100)]));
        assert!(!must_rebuild(90, 2, &[g(1, 0), g(2, 40), g(3, 100)]));
    }

    #[test]
    fn generations_already_seen_do_not_count() {
        // Applied 150 on timeline 3 itself: its own changes above its fork are in the log.
        assert!(!must_rebuild(150, 3, &[g(1, 0), g(2, 40), g(3, 100)]));
    }

    #[test]
    fn a_fork_several_generations_later_still_counts() {
        // Timeline 3 was skipped by this index (no change written on it reached it); 4 forked
        // below what it applied.
        assert!(must_rebuild(120, 2, &[g(2, 40), g(3, 100), g(4, 110)]));
        assert!(!must_rebuild(100, 2, &[g(2, 40), g(3, 100), g(4, 110)]));
    }

    #[test]
    fn an_index_from_before_generations_existed_is_kept_when_the_first_is_above_it() {
        // An upgraded cluster: indexes carry generation 0, the first row records everything.
        assert!(!must_rebuild(5000, 0, &[g(7, 5000)]));
        assert!(!must_rebuild(0, 0, &[]));
    }
}
