//! Collector returning the total hit count and one page of ids in `_id` order.
//!
//! Chef sorts every search by id and pages with `from`/`size` (1000 rows by default), including
//! deep pages of `*:*`. tantivy's `order_by_string_fast_field` turns each segment's top
//! `from+size` ordinals into strings, so a page at offset 99,000 converts ~100,000 ids per
//! segment. Instead, [`IdRanks`] maps each segment's `_id` dictionary ordinals to their rank in
//! the merged id order of all segments of one searcher generation (built once per generation
//! by one k-way merge of the segment dictionaries, then cached). A search then only records the
//! global rank of each match, sets them in a bitset, skips `from` set bits with popcounts, and
//! converts just the `size` ids of the page to strings (one sequential dictionary pass per
//! segment).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::StrColumn;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// The merged `_id` order of the segments of one searcher generation.
pub struct IdRanks {
    /// `SearcherGeneration::generation_id` this was built for.
    pub generation: u64,
    /// Per segment (in searcher order): global rank of each `_id` dictionary ordinal.
    ranks: Vec<Vec<u32>>,
    /// Per rank: a segment and ordinal holding that id (to turn a rank back into a string).
    owners: Vec<(u32, u32)>,
    columns: Vec<Option<StrColumn>>,
}

impl IdRanks {
    /// Merges the `_id` dictionaries of `searcher`'s segments. An id present in several
    /// segments (a live copy and deleted ones) gets one rank.
    pub fn build(searcher: &tantivy::Searcher) -> tantivy::Result<IdRanks> {
        let columns: Vec<Option<StrColumn>> = searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().str("_id"))
            .collect::<tantivy::Result<_>>()?;
        let mut streams = Vec::with_capacity(columns.len());
        let mut ranks: Vec<Vec<u32>> = Vec::with_capacity(columns.len());
        let mut heap: BinaryHeap<Reverse<(Vec<u8>, u32)>> = BinaryHeap::new();
        for (seg, col) in columns.iter().enumerate() {
            let n = col.as_ref().map_or(0, |c| c.dictionary().num_terms());
            ranks.push(vec![0; n]);
            let mut stream = match col {
                Some(c) => Some(c.dictionary().stream()?),
                None => None,
            };
            if let Some(s) = stream.as_mut() {
                if s.advance() {
                    heap.push(Reverse((s.key().to_vec(), seg as u32)));
                }
            }
            streams.push(stream);
        }
        let mut owners: Vec<(u32, u32)> = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        while let Some(Reverse((key, seg))) = heap.pop() {
            let s = streams[seg as usize]
                .as_mut()
                .expect("stream of a pushed key");
            let ord = s.term_ord() as u32;
            if last.as_deref() != Some(&key[..]) {
                owners.push((seg, ord));
            }
            ranks[seg as usize][ord as usize] = (owners.len() - 1) as u32;
            if s.advance() {
                heap.push(Reverse((s.key().to_vec(), seg)));
            }
            last = Some(key);
        }
        Ok(IdRanks {
            generation: searcher.generation().generation_id(),
            ranks,
            owners,
            columns,
        })
    }

    /// Ids of the given ranks, in the same order.
    fn ids(&self, ranks: &[u32]) -> Vec<String> {
        let mut by_segment: Vec<Vec<(u64, usize)>> = vec![Vec::new(); self.columns.len()];
        for (i, r) in ranks.iter().enumerate() {
            let (seg, ord) = self.owners[*r as usize];
            by_segment[seg as usize].push((ord as u64, i));
        }
        let mut out = vec![String::new(); ranks.len()];
        for (seg, mut wanted) in by_segment.into_iter().enumerate() {
            let Some(col) = self.columns[seg].as_ref() else {
                continue;
            };
            if wanted.is_empty() {
                continue;
            }
            wanted.sort_unstable();
            let ords: Vec<u64> = wanted.iter().map(|(o, _)| *o).collect();
            let mut k = 0;
            // One forward pass over the dictionary for all wanted ordinals.
            let _ = col.dictionary().sorted_ords_to_term_cb(&ords, |bytes| {
                out[wanted[k].1] = String::from_utf8_lossy(bytes).into_owned();
                k += 1;
            });
        }
        out
    }
}

/// Collects `(total, ids[from..from+size])` ordered by the `_id` fast field.
pub struct IdPage {
    pub from: usize,
    pub size: usize,
    pub descending: bool,
    /// Built for the searcher this collector runs on.
    pub ranks: Arc<IdRanks>,
}

pub struct IdPageSegment {
    column: Option<StrColumn>,
    ranks: Arc<IdRanks>,
    segment: usize,
    hits: Vec<u32>,
    /// Matches without an `_id` value (none in practice; counted, never returned).
    unkeyed: usize,
    buf: Vec<Option<u64>>,
}

impl Collector for IdPage {
    type Fruit = (usize, Vec<String>);
    type Child = IdPageSegment;

    fn for_segment(
        &self,
        ord: SegmentOrdinal,
        _segment: &SegmentReader,
    ) -> tantivy::Result<IdPageSegment> {
        Ok(IdPageSegment {
            column: self.ranks.columns[ord as usize].clone(),
            ranks: self.ranks.clone(),
            segment: ord as usize,
            hits: Vec::new(),
            unkeyed: 0,
            buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<(usize, Vec<u32>)>) -> tantivy::Result<Self::Fruit> {
        let total = fruits.iter().map(|(n, _)| n).sum();
        let mut bits = vec![0u64; self.ranks.owners.len().div_ceil(64)];
        for (_, hits) in &fruits {
            for r in hits {
                bits[(*r / 64) as usize] |= 1u64 << (r % 64);
            }
        }
        let picked = select(&bits, self.from, self.size, self.descending);
        Ok((total, self.ranks.ids(&picked)))
    }
}

impl SegmentCollector for IdPageSegment {
    type Fruit = (usize, Vec<u32>);

    fn collect(&mut self, doc: DocId, _score: Score) {
        match self.column.as_ref().and_then(|c| c.ords().first(doc)) {
            Some(o) => self.hits.push(self.ranks.ranks[self.segment][o as usize]),
            None => self.unkeyed += 1,
        }
    }

    /// Blocks of matches (segments without deletions): one batched ordinal lookup per block.
    fn collect_block(&mut self, docs: &[DocId]) {
        let Some(column) = self.column.as_ref() else {
            self.unkeyed += docs.len();
            return;
        };
        self.buf.clear();
        self.buf.resize(docs.len(), None);
        column.ords().first_vals(docs, &mut self.buf);
        let ranks = &self.ranks.ranks[self.segment];
        for o in &self.buf {
            match o {
                Some(o) => self.hits.push(ranks[*o as usize]),
                None => self.unkeyed += 1,
            }
        }
    }

    fn harvest(self) -> (usize, Vec<u32>) {
        (self.hits.len() + self.unkeyed, self.hits)
    }
}

/// Positions of set bits `from..from+size` in ascending (or descending) bit order.
fn select(bits: &[u64], from: usize, size: usize, descending: bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(size.min(1 << 16));
    let mut skip = from;
    let mut visit = |w: usize, mut word: u64, out: &mut Vec<u32>| -> bool {
        let n = word.count_ones() as usize;
        if skip >= n {
            skip -= n;
            return out.len() < size;
        }
        while word != 0 && out.len() < size {
            let bit = if descending {
                63 - word.leading_zeros()
            } else {
                word.trailing_zeros()
            };
            word &= !(1u64 << bit);
            if skip > 0 {
                skip -= 1;
            } else {
                out.push((w * 64) as u32 + bit);
            }
        }
        out.len() < size
    };
    if size == 0 {
        return out;
    }
    if descending {
        for w in (0..bits.len()).rev() {
            if bits[w] != 0 && !visit(w, bits[w], &mut out) {
                break;
            }
        }
    } else {
        for (w, word) in bits.iter().enumerate() {
            if *word != 0 && !visit(w, *word, &mut out) {
                break;
            }
        }
    }
    out
}
