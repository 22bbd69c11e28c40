//! Recent activity: a bounded, in-memory log of the operator-visible events
//! the dashboard lists under "Recent activity" — purges, configuration
//! reloads (applied or refused) and alerts.
//!
//! Usage, from anywhere that holds the [`crate::proxy::Shared`] (or a clone
//! of its [`Activity`] handle):
//!
//! ```
//! use strata::activity::{Activity, Kind};
//! let activity = Activity::new();
//! activity.record(Kind::Alert, "upstream 10.0.0.7:80 is down");
//! assert_eq!(activity.recent()[0].kind, Kind::Alert);
//! ```
//!
//! The newest [`CAPACITY`] entries are kept; older ones are dropped. This
//! is not the log (tracing has every event, with fields): it is what an
//! operator glancing at the dashboard should see. Recording takes a short
//! `std::sync::Mutex` (never held across an `.await`, a few hundred
//! nanoseconds) and is never on the request path. Messages must not carry
//! secrets (tokens, webhook secrets); they are shown on the dashboard to
//! whoever may read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Entries kept; older ones are dropped.
pub const CAPACITY: usize = 50;

/// Longest message kept, in bytes (longer ones are cut at a character
/// boundary and end with `…`).
pub const MAX_MESSAGE: usize = 300;

/// What happened; serialised as its [`Kind::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A `POST /purge` removed entries.
    Purge,
    /// A SIGHUP reload was applied.
    Reload,
    /// A SIGHUP reload was refused; the old configuration keeps serving.
    ReloadFailed,
    /// An alert fired (see the alerts module).
    Alert,
}

impl Kind {
    /// `purge`, `reload`, `reload_failed`, `alert`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Purge => "purge",
            Kind::Reload => "reload",
            Kind::ReloadFailed => "reload_failed",
            Kind::Alert => "alert",
        }
    }
}

/// One recorded event. JSON: `{"seq": 7, "at_ms": 1764441000123, "kind":
/// "purge", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Increases by one per recorded event since start (lets a client tell
    /// new entries from ones it has shown).
    pub seq: u64,
    /// When it was recorded: milliseconds since the Unix epoch (UTC).
    pub at_ms: u64,
    pub kind: Kind,
    pub message: String,
}

/// Cheap-clone handle to the ring of recent entries.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Mutex<Ring>>,
}

#[derive(Default)]
struct Ring {
    next_seq: u64,
    entries: VecDeque<Entry>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity::default()
    }

    /// Records an event now. The message is a short human sentence
    /// (truncated to [`MAX_MESSAGE`] bytes).
    pub fn record(&self, kind: Kind, message: impl Into<String>) {
        let mut message = message.into();
        truncate(&mut message);
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // A panic while holding this lock cannot leave the ring
        // inconsistent (push/pop only), so a poisoned lock is used as is.
        let mut ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ring.next_seq += 1;
        let seq = ring.next_seq;
        if ring.entries.len() == CAPACITY {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Entry {
            seq,
            at_ms,
            kind,
            message,
        });
    }

    /// The kept entries, newest first.
    pub fn recent(&self) -> Vec<Entry> {
        let ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ring.entries.iter().rev().cloned().collect()
    }
}

fn truncate(message: &mut String) {
    if message.len() <= MAX_MESSAGE {
        return;
    }
    let mut cut = MAX_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_first_and_bounded() {
        let a = Activity::new();
        for i in 0..(CAPACITY + 5) {
            a.record(Kind::Purge, format!("purge {i}"));
        }
        a.record(Kind::ReloadFailed, "bad file");
        let recent = a.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].kind, Kind::ReloadFailed);
        assert_eq!(recent[0].seq, CAPACITY as u64 + 6);
        assert_eq!(recent[1].message, format!("purge {}", CAPACITY + 4));
        assert_eq!(recent[CAPACITY - 1].message, "purge 6");
        let json = serde_json::to_value(&recent[0]).unwrap();
        assert_eq!(json["kind"], "reload_failed");
        assert!(json["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let a = Activity::new();
        a.record(Kind::Alert, "é".repeat(400));
        let m = &a.recent()[0].message;
        assert!(m.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(m.ends_with('…'));
    }
}
