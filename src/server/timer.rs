//! A hashed timer wheel of one-second slots for connection deadlines.
//!
//! A connection is filed in the slot of its deadline. Activity does not move
//! it: when its slot comes round, the shard checks the real deadline and
//! either expires the connection or files it again. So a tick costs the
//! entries of one slot, each connection is touched about once per timeout
//! period whatever the traffic, and the cost per tick does not grow with the
//! number of idle connections beyond that. Each entry is 8 bytes.

/// Slots in the wheel (see `limits::TIMER_WHEEL_SLOTS`).
const SLOTS: usize = crate::limits::TIMER_WHEEL_SLOTS;

pub struct TimerWheel {
    slots: Vec<Vec<u64>>,
    /// The tick (seconds since the shard started) the wheel has reached.
    now_tick: u64,
}

impl Default for TimerWheel {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerWheel {
    pub fn new() -> TimerWheel {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now_tick: 0,
        }
    }

    /// Files `token` to be looked at on `deadline_tick` (or the next tick if
    /// that has passed).
    pub fn schedule(&mut self, token: u64, deadline_tick: u64) {
        let tick = deadline_tick.clamp(self.now_tick + 1, self.now_tick + SLOTS as u64 - 1);
        self.slots[(tick % SLOTS as u64) as usize].push(token);
    }

    /// Advances to `tick` and returns the tokens filed in the slots passed.
    pub fn advance(&mut self, tick: u64, due: &mut Vec<u64>) {
        // After a long stall, one full turn visits every slot once.
        let start = self.now_tick.max(tick.saturating_sub(SLOTS as u64));
        for t in start + 1..=tick {
            due.append(&mut self.slots[(t % SLOTS as u64) as usize]);
        }
        self.now_tick = self.now_tick.max(tick);
    }

    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut wheel = TimerWheel::new();
        wheel.schedule(7, 3);
        let mut due = Vec::new();
        wheel.advance(2, &mut due);
        assert!(due.is_empty());
        wheel.advance(3, &mut due);
        assert_eq!(due, vec![7]);
    }

    #[test]
    fn far_deadlines_come_back_for_a_recheck() {
        let mut wheel = TimerWheel::new();
        wheel.schedule(1, 10_000);
        let mut due = Vec::new();
        wheel.advance(SLOTS as u64 - 2, &mut due);
        assert!(due.is_empty());
        wheel.advance(SLOTS as u64 - 1, &mut due);
        assert_eq!(due, vec![1]);
    }

    #[test]
    fn past_deadlines_fire_next_tick() {
        let mut wheel = TimerWheel::new();
        let mut due = Vec::new();
        wheel.advance(50, &mut due);
        wheel.schedule(9, 10);
        wheel.advance(51, &mut due);
        assert_eq!(due, vec![9]);
    }
}
