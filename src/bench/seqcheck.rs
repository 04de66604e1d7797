//! The correctness checks: what the server returned must be what was sent.
//!
//! A fast wrong server is not a result, so every scenario records, per
//! receiving connection and conversation, the seqs it was given (by
//! `send_ack`, `deliver` or `sync_page`) in arrival order, and checks at the
//! end that nothing was lost, duplicated or reordered, and that the messages
//! a receiver got are exactly the ones the sender had acknowledged, carrying
//! the same client message ids. Pure data: no I/O, no clocks.

use crate::protocol::Seq;

/// How one arrival compares with what came before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Higher than every seq so far: the normal case.
    InOrder,
    /// A seq that already arrived.
    Duplicate,
    /// A new seq lower than one that already arrived.
    OutOfOrder,
}

/// The seqs one connection received in one conversation, in arrival order.
#[derive(Clone, Debug, Default)]
pub struct SeqStream {
    /// Every in-order arrival (each higher than all before it), as runs
    /// of consecutive seqs: `runs` closed, ascending, then `open`. A
    /// healthy conversation is one run, so the common arrival only moves
    /// `open.1` inside the connection's own record; a list of every seq was
    /// 3 % of the generator's CPU (growth and cache misses on its tail).
    runs: Vec<(Seq, Seq)>,
    /// The newest run, (first, last); empty while `open.1 == 0` (seq 0 is
    /// never stored: seqs start at 1).
    open: (Seq, Seq),
    /// Seqs that arrived after a higher one (each one is a failure).
    late: Vec<Seq>,
    /// Order-independent digest of (seq, client message id) pairs, so two
    /// sides can be compared without keeping every id.
    fingerprint: u64,
    duplicates: u64,
}

impl SeqStream {
    /// Records one arrival of `seq` carrying `client_message_id`.
    pub fn push(&mut self, seq: Seq, client_message_id: u64) -> Arrival {
        let last = self.open.1;
        if seq > last {
            if last > 0 && seq == last + 1 {
                self.open.1 = seq;
            } else {
                if last > 0 {
                    self.runs.push(self.open);
                }
                self.open = (seq, seq);
            }
            self.fingerprint = self
                .fingerprint
                .wrapping_add(pair_digest(seq, client_message_id));
            return Arrival::InOrder;
        }
        if self.in_order_contains(seq) || self.late.contains(&seq) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.late.push(seq);
        self.fingerprint = self
            .fingerprint
            .wrapping_add(pair_digest(seq, client_message_id));
        Arrival::OutOfOrder
    }

    /// The in-order runs, ascending, the open one last.
    fn in_order_runs(&self) -> impl Iterator<Item = (Seq, Seq)> + '_ {
        let open = (self.open.1 > 0).then_some(self.open);
        self.runs.iter().copied().chain(open)
    }

    fn in_order_contains(&self, seq: Seq) -> bool {
        if self.open.1 > 0 && (self.open.0..=self.open.1).contains(&seq) {
            return true;
        }
        // Runs are disjoint and ascending: the candidate is the last one
        // starting at or below `seq`.
        let after = self.runs.partition_point(|(first, _)| *first <= seq);
        after > 0
            && self
                .runs
                .get(after - 1)
                .is_some_and(|(_, last)| seq <= *last)
    }

    /// Distinct seqs received.
    pub fn len(&self) -> usize {
        self.in_order_runs()
            .map(|(first, last)| (last - first + 1) as usize)
            .sum::<usize>()
            + self.late.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn out_of_order(&self) -> u64 {
        self.late.len() as u64
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The highest seq received (0: none).
    pub fn highest(&self) -> Seq {
        self.open.1
    }

    /// Every distinct seq received, ascending.
    pub fn sorted(&self) -> Vec<Seq> {
        let mut all: Vec<Seq> = self
            .in_order_runs()
            .flat_map(|(first, last)| first..=last)
            .collect();
        if !self.late.is_empty() {
            all.extend_from_slice(&self.late);
            all.sort_unstable();
        }
        all
    }

    /// Problems within this stream alone (duplicates, reordering), phrased
    /// for a report: `what` names the stream.
    pub fn problems(&self, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.duplicates > 0 {
            out.push(format!("{what}: {} duplicate seqs", self.duplicates));
        }
        if !self.late.is_empty() {
            out.push(format!(
                "{what}: {} seqs arrived after a higher seq (first: {})",
                self.late.len(),
                self.late[0]
            ));
        }
        out
    }
}

/// A digest of one (seq, client message id) pair: splitmix64 of both, so
/// that swapping two messages' ids changes the sum.
fn pair_digest(seq: Seq, client_message_id: u64) -> u64 {
    let mut z = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ client_message_id.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// At most this many example seqs are named in one problem line.
const EXAMPLES_MAX: usize = 5;

/// Compares what a sender had acknowledged with what a receiver got: every
/// acked message must arrive, nothing else may, and the client message ids
/// must agree. Returns problem lines (empty when they match).
pub fn compare(what: &str, acked: &SeqStream, received: &SeqStream) -> Vec<String> {
    let sent = acked.sorted();
    let got = received.sorted();
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let (mut missing_count, mut extra_count) = (0usize, 0usize);
    let (mut i, mut j) = (0, 0);
    while i < sent.len() || j < got.len() {
        match (sent.get(i), got.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                missing_count += 1;
                if missing.len() < EXAMPLES_MAX {
                    missing.push(*a);
                }
                i += 1;
            }
            (Some(a), None) => {
                missing_count += 1;
                if missing.len() < EXAMPLES_MAX {
                    missing.push(*a);
                }
                i += 1;
            }
            (_, Some(b)) => {
                extra_count += 1;
                if extra.len() < EXAMPLES_MAX {
                    extra.push(*b);
                }
                j += 1;
            }
            (None, None) => break,
        }
    }
    let mut out = Vec::new();
    if missing_count > 0 {
        out.push(format!(
            "{what}: {missing_count} acked messages never arrived (seqs {missing:?}...)"
        ));
    }
    if extra_count > 0 {
        out.push(format!(
            "{what}: {extra_count} messages arrived that were never acked to the sender (seqs {extra:?}...)"
        ));
    }
    if out.is_empty() && acked.fingerprint() != received.fingerprint() {
        out.push(format!(
            "{what}: same seqs, but the client message ids differ (a message arrived under another seq)"
        ));
    }
    out
}

/// The seqs acked to all senders of one conversation during a run must
/// tile one contiguous range: no seq given twice, none skipped. Returns the
/// range, or a problem line. (The range need not start at 1: earlier runs
/// may have used the conversation.)
pub fn check_contiguous(what: &str, streams: &[&SeqStream]) -> Result<Option<(Seq, Seq)>, String> {
    let mut all: Vec<Seq> = streams.iter().flat_map(|s| s.sorted()).collect();
    if all.is_empty() {
        return Ok(None);
    }
    all.sort_unstable();
    let mut given_twice = Vec::new();
    let mut gaps = Vec::new();
    let (mut twice_count, mut gap_count) = (0usize, 0u64);
    for pair in all.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a == b {
            twice_count += 1;
            if given_twice.len() < EXAMPLES_MAX {
                given_twice.push(a);
            }
        } else if b > a + 1 {
            gap_count += b - a - 1;
            if gaps.len() < EXAMPLES_MAX {
                gaps.push((a + 1, b - 1));
            }
        }
    }
    let mut problems = Vec::new();
    if twice_count > 0 {
        problems.push(format!(
            "{twice_count} seqs acked twice (e.g. {given_twice:?})"
        ));
    }
    if gap_count > 0 {
        problems.push(format!("{gap_count} seqs skipped (ranges {gaps:?})"));
    }
    if problems.is_empty() {
        let first = all[0];
        let last = all[all.len() - 1];
        Ok(Some((first, last)))
    } else {
        Err(format!("{what}: {}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The runs answer exactly as the list of every in-order seq they
        /// replaced: arrivals mostly consecutive, with gaps, repeats and
        /// late ones mixed in.
        #[test]
        fn runs_match_a_list_of_every_seq(
            steps in proptest::collection::vec((0u8..10, 0u64..6), 0..200)
        ) {
            let mut runs = SeqStream::default();
            let mut list: Vec<Seq> = Vec::new();
            let mut late: Vec<Seq> = Vec::new();
            let mut next: Seq = 1;
            for (kind, jump) in steps {
                // 0..6: the next seq; 6, 7: a gap; 8, 9: an earlier seq.
                let seq = match kind {
                    0..=5 => next,
                    6 | 7 => next + jump,
                    _ => next.saturating_sub(jump + 1),
                };
                let highest = list.last().copied().unwrap_or(0);
                let expected = if seq > highest {
                    list.push(seq);
                    Arrival::InOrder
                } else if list.binary_search(&seq).is_ok() || late.contains(&seq) {
                    Arrival::Duplicate
                } else {
                    late.push(seq);
                    Arrival::OutOfOrder
                };
                prop_assert_eq!(runs.push(seq, seq * 7), expected, "seq {}", seq);
                next = next.max(seq + 1);
            }
            let mut all = list.clone();
            all.extend_from_slice(&late);
            all.sort_unstable();
            prop_assert_eq!(runs.sorted(), all.clone());
            prop_assert_eq!(runs.len(), all.len());
            prop_assert_eq!(runs.highest(), list.last().copied().unwrap_or(0));
            prop_assert_eq!(runs.out_of_order(), late.len() as u64);
        }
    }

    fn stream(pairs: &[(Seq, u64)]) -> SeqStream {
        let mut s = SeqStream::default();
        for &(seq, id) in pairs {
            s.push(seq, id);
        }
        s
    }

    #[test]
    fn arrivals_are_classified() {
        let mut s = SeqStream::default();
        assert_eq!(s.push(3, 30), Arrival::InOrder);
        assert_eq!(s.push(5, 50), Arrival::InOrder);
        assert_eq!(s.push(5, 50), Arrival::Duplicate);
        assert_eq!(s.push(4, 40), Arrival::OutOfOrder);
        assert_eq!(s.push(4, 40), Arrival::Duplicate);
        assert_eq!(s.push(3, 30), Arrival::Duplicate);
        assert_eq!(s.len(), 3);
        assert_eq!(s.duplicates(), 3);
        assert_eq!(s.out_of_order(), 1);
        assert_eq!(s.sorted(), [3, 4, 5]);
        assert_eq!(s.highest(), 5);
        assert_eq!(s.problems("x").len(), 2);
        assert!(stream(&[(1, 1), (2, 2)]).problems("x").is_empty());
    }

    #[test]
    fn seq_zero_is_never_in_order() {
        let mut s = SeqStream::default();
        assert_eq!(s.push(0, 1), Arrival::OutOfOrder);
    }

    #[test]
    fn matching_streams_compare_clean_whatever_the_order() {
        let acked = stream(&[(1, 10), (2, 20), (3, 30)]);
        let received = stream(&[(1, 10), (3, 30)]);
        let mut late = received.clone();
        late.push(2, 20);
        assert!(compare("a->b", &acked, &late).is_empty());
        let problems = compare("a->b", &acked, &received);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("1 acked messages never arrived"),
            "{problems:?}"
        );
    }

    #[test]
    fn phantom_messages_and_swapped_ids_are_caught() {
        let acked = stream(&[(1, 10), (2, 20)]);
        let extra = stream(&[(1, 10), (2, 20), (9, 90)]);
        let problems = compare("a->b", &acked, &extra);
        assert!(problems[0].contains("never acked"), "{problems:?}");
        let swapped = stream(&[(1, 20), (2, 10)]);
        let problems = compare("a->b", &acked, &swapped);
        assert!(
            problems[0].contains("client message ids differ"),
            "{problems:?}"
        );
    }

    #[test]
    fn contiguity_over_two_senders() {
        let a = stream(&[(11, 0), (13, 0), (14, 0)]);
        let b = stream(&[(12, 0), (15, 0)]);
        assert_eq!(check_contiguous("c", &[&a, &b]), Ok(Some((11, 15))));
        assert_eq!(check_contiguous("c", &[]), Ok(None));
        let gap = stream(&[(16, 0), (19, 0)]);
        let e = check_contiguous("c", &[&a, &b, &gap]).unwrap_err();
        assert!(e.contains("2 seqs skipped"), "{e}");
        let twice = stream(&[(12, 0)]);
        let e = check_contiguous("c", &[&a, &b, &twice]).unwrap_err();
        assert!(e.contains("1 seqs acked twice"), "{e}");
    }
}
