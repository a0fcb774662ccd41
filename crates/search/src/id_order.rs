//! Collector returning the total hit count and one page of ids in `_id` order.
//!
//! Chef sorts every search by id and pages with `from`/`size` (1000 rows by default). tantivy's
//! `order_by_string_fast_field` turns each segment's top `from+size` ordinals into strings with
//! one random dictionary lookup each (decompressing a block every time), which made a 1000-row
//! page cost tens of ms. Here each segment keeps the ordinals of its matches (plain u64s), sorts
//! them, and converts only its best `from+size` with one sequential dictionary pass; the
//! per-segment sorted lists are then merged as strings.

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::StrColumn;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Collects `(total, ids[from..from+size])` ordered by the `_id` fast field.
pub struct IdPage {
    pub from: usize,
    pub size: usize,
    pub descending: bool,
}

pub struct IdPageSegment {
    column: Option<StrColumn>,
    ords: Vec<u64>,
    /// Matches without an `_id` value (none in practice; counted, never returned).
    unkeyed: usize,
    keep: usize,
    descending: bool,
}

impl Collector for IdPage {
    type Fruit = (usize, Vec<String>);
    type Child = IdPageSegment;

    fn for_segment(
        &self,
        _ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<IdPageSegment> {
        Ok(IdPageSegment {
            column: segment.fast_fields().str("_id")?,
            ords: Vec::new(),
            unkeyed: 0,
            keep: self.from + self.size,
            descending: self.descending,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<(usize, Vec<String>)>,
    ) -> tantivy::Result<(usize, Vec<String>)> {
        let total = fruits.iter().map(|(n, _)| n).sum();
        let mut all: Vec<String> = if fruits.len() == 1 {
            fruits
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .unwrap_or_default()
        } else {
            let mut v: Vec<String> = fruits.into_iter().flat_map(|(_, v)| v).collect();
            v.sort_unstable();
            if self.descending {
                v.reverse();
            }
            v
        };
        let end = (self.from + self.size).min(all.len());
        let start = self.from.min(end);
        all.truncate(end);
        Ok((total, all.split_off(start)))
    }
}

impl SegmentCollector for IdPageSegment {
    type Fruit = (usize, Vec<String>);

    fn collect(&mut self, doc: DocId, _score: Score) {
        match self.column.as_ref().and_then(|c| c.ords().first(doc)) {
            Some(o) => self.ords.push(o),
            None => self.unkeyed += 1,
        }
    }

    fn harvest(mut self) -> (usize, Vec<String>) {
        let total = self.ords.len() + self.unkeyed;
        let Some(column) = self.column else {
            return (total, Vec::new());
        };
        let keep = self.keep.min(self.ords.len());
        if self.descending {
            if keep < self.ords.len() {
                self.ords.select_nth_unstable_by(keep, |a, b| b.cmp(a));
                self.ords.truncate(keep);
            }
        } else if keep < self.ords.len() {
            self.ords.select_nth_unstable(keep);
            self.ords.truncate(keep);
        }
        self.ords.sort_unstable();
        let mut ids = Vec::with_capacity(self.ords.len());
        // One forward pass over the dictionary for all kept ordinals.
        let _ = column
            .dictionary()
            .sorted_ords_to_term_cb(&self.ords, |bytes| {
                ids.push(String::from_utf8_lossy(bytes).into_owned());
            });
        if self.descending {
            ids.reverse();
        }
        (total, ids)
    }
}
