//! Server pushes as the caller sees them, and the duplicate filter for messages.
//!
//! A message can reach a device twice: as a live `Deliver` and again in a
//! catch-up `SyncPage` (or an explicit sync) that raced it. [`SeqTracker`]
//! drops the second copy. Pure data: no I/O here.

use std::collections::HashMap;

use crate::protocol::{
    ConversationId, GoingAway, Message, PresenceEvent, Receipt, Seq, SyncEnd, TypingEvent,
};

/// One thing the server pushed (request id 0).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new message, from a `Deliver` or a server-initiated `SyncPage`.
    Message(Message),
    Receipt(Receipt),
    Typing(TypingEvent),
    Presence(PresenceEvent),
    /// The server is about to close the connection.
    GoingAway(GoingAway),
    /// A server-initiated catch-up finished.
    SyncEnd(SyncEnd),
}

/// Highest seq handed to the caller, per conversation. Anything at or below it
/// is a duplicate: sequence numbers only grow, and acks are cumulative, so a
/// lower seq arriving late is one the caller has already seen (or covered).
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    highest: HashMap<ConversationId, Seq>,
}

impl SeqTracker {
    /// Records `seq` and returns true if it is new (above the highest seen).
    pub fn accept(&mut self, conversation_id: ConversationId, seq: Seq) -> bool {
        let highest = self.highest.entry(conversation_id).or_insert(0);
        if seq <= *highest {
            return false;
        }
        *highest = seq;
        true
    }

    /// Raises the mark without the novelty check (after a sync returned `seq`).
    pub fn observe(&mut self, conversation_id: ConversationId, seq: Seq) {
        let highest = self.highest.entry(conversation_id).or_insert(0);
        *highest = (*highest).max(seq);
    }

    /// The highest seq handed out in a conversation (0: none).
    pub fn highest(&self, conversation_id: ConversationId) -> Seq {
        self.highest.get(&conversation_id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_stale_seqs_are_dropped() {
        let mut t = SeqTracker::default();
        assert!(t.accept(1, 1));
        assert!(t.accept(1, 2));
        assert!(!t.accept(1, 2), "same seq twice");
        assert!(!t.accept(1, 1), "older seq after a newer one");
        assert!(t.accept(2, 1), "conversations are independent");
        assert!(t.accept(1, 5), "gaps are fine");
        assert_eq!(t.highest(1), 5);
        assert_eq!(t.highest(3), 0);
    }

    #[test]
    fn observe_never_lowers_the_mark() {
        let mut t = SeqTracker::default();
        t.observe(7, 10);
        t.observe(7, 4);
        assert_eq!(t.highest(7), 10);
        assert!(!t.accept(7, 10));
        assert!(t.accept(7, 11));
    }

    #[test]
    fn seq_zero_is_never_new() {
        // Seqs start at 1; a 0 would be a server bug, not a message to show.
        let mut t = SeqTracker::default();
        assert!(!t.accept(1, 0));
    }
}
