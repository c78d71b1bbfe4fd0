//! Sessions pinned to their connection, counted by reason.

use super::ClusterMetrics;

/// Why sessions are pinned, as `sqlswitch_session_pins_total` labels them (the text a session
/// ended over it is told); the last counts any other.
pub const PIN_REASONS: [&str; 11] = [
    "a temporary table",
    "LISTEN",
    "an advisory lock",
    "a GET_LOCK() lock",
    "LOCK TABLES",
    "a cursor WITH HOLD",
    "a connection option (COM_SET_OPTION)",
    "session state set inside a transaction",
    "session state that sqlswitch cannot replay",
    "more session state than sqlswitch replays",
    "other",
];

impl ClusterMetrics {
    /// Counts a session pinned for `reason` (one of [`PIN_REASONS`], else `other`), and one
    /// more pinned session open.
    pub fn count_pin(&self, reason: &str) {
        let counter = self.pins.iter().find(|(r, _)| *r == reason).or(self.pins.last());
        if let Some((_, counter)) = counter {
            counter.increment(1);
        }
        self.pinned.increment(1.0);
    }
}
