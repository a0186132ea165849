//! The arithmetic of a backward history read: which stream sequences each
//! window covers.
//!
//! `history --limit N` wants the N runs recorded last, so it reads the
//! stream's tail: 8·N records first, each next window eight times wider and
//! ending where the previous one began, until the reader has N runs or the
//! stream's first sequence is reached. The windows are disjoint and, read in
//! order, cover the tail without a gap, so every record of a run that has
//! any record in what was read has been seen too (a run's later records are
//! nearer the end).

/// Records per wanted run in the first window (a run has a start and an end
/// record, and some windows hold other jobs' or targets' records).
pub const FIRST_FACTOR: u64 = 8;

/// How much wider each next window is.
pub const GROWTH: u64 = 8;

/// One window: stream sequences `from..=up_to`; `up_to` is `None` for the
/// first window, which reads to the `last` the windows were made for (the
/// last record on the read's filter when it began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: u64,
    pub up_to: Option<u64>,
}

/// The windows of one read, newest first.
#[derive(Debug, Clone)]
pub struct Windows {
    first: u64,
    next: Option<Window>,
    width: u64,
}

impl Windows {
    /// The windows over sequences `first..=last` (the first and last record
    /// on the read's filter), for
    /// `limit` runs. No window when the stream is empty (`last < first`) or
    /// nothing is wanted.
    pub fn new(first: u64, last: u64, limit: usize) -> Windows {
        let first = first.max(1);
        let width = (limit as u64).saturating_mul(FIRST_FACTOR).max(1);
        let next = (limit > 0 && last >= first).then(|| Window { from: start(first, last, width), up_to: None });
        Windows { first, next, width }
    }
}

/// The first sequence of a window of `width` ending at `last`, never before
/// `first`.
fn start(first: u64, last: u64, width: u64) -> u64 {
    last.saturating_sub(width - 1).max(first)
}

impl Iterator for Windows {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        let w = self.next.take()?;
        if w.from > self.first {
            self.width = self.width.saturating_mul(GROWTH);
            let last = w.from - 1;
            self.next = Some(Window { from: start(self.first, last, self.width), up_to: Some(last) });
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_grow_eightfold_backwards_without_gaps_or_overlaps() {
        let all: Vec<Window> = Windows::new(1, 1_000_000, 20).collect();
        assert_eq!(all[0], Window { from: 1_000_000 - 159, up_to: None });
        assert_eq!(all[1], Window { from: 1_000_000 - 160 - 1279, up_to: Some(1_000_000 - 160) });
        assert_eq!(all[2].up_to, Some(all[1].from - 1));
        assert_eq!(all.last().unwrap().from, 1, "the last window reaches the first sequence");
        for pair in all.windows(2) {
            assert_eq!(pair[1].up_to, Some(pair[0].from - 1), "{pair:?}");
            assert!(pair[1].from <= pair[1].up_to.unwrap());
        }
        assert_eq!(all.len(), 6, "160, 1,280, 10,240, 81,920, 655,360, then the rest");
    }

    #[test]
    fn a_stream_that_no_longer_starts_at_one() {
        // Aged-out records: the stream holds 500..=600.
        let all: Vec<Window> = Windows::new(500, 600, 5).collect();
        assert_eq!(all, vec![Window { from: 561, up_to: None }, Window { from: 500, up_to: Some(560) }]);
        // A first window wider than the stream is the whole stream.
        assert_eq!(Windows::new(500, 600, 1_000).collect::<Vec<_>>(), vec![Window { from: 500, up_to: None }]);
        // One message.
        assert_eq!(Windows::new(7, 7, 1).collect::<Vec<_>>(), vec![Window { from: 7, up_to: None }]);
    }

    #[test]
    fn nothing_to_read() {
        assert_eq!(Windows::new(1, 0, 20).count(), 0, "an empty stream");
        assert_eq!(Windows::new(0, 0, 20).count(), 0, "an empty stream that never held anything");
        assert_eq!(Windows::new(1, 100, 0).count(), 0, "--limit 0");
    }

    #[test]
    fn huge_limits_and_sequences_do_not_overflow() {
        let all: Vec<Window> = Windows::new(1, u64::MAX, usize::MAX).collect();
        assert_eq!(all, vec![Window { from: 1, up_to: None }]);
        let all: Vec<Window> = Windows::new(1, u64::MAX, 1).collect();
        assert_eq!(all.last().unwrap().from, 1);
        assert!(all.len() < 30);
    }
}
