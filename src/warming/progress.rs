//! Warming's state as `GET /health` shows it ([`Progress`]): the current
//! (or last) round and its counts, and whether a warming loop runs at all
//! ([`Schedule`]), which only a start-up can change: what a reload of
//! `[warming]` does, and when it needs a restart ([`Progress::restart_warning`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use serde_json::json;

use super::Outcome;
use crate::config::WarmingConfig;

const WARMING: u8 = 1;
const DONE: u8 = 2;

/// Whether the warming loop runs. It is started at start-up only, when
/// `[warming]` is configured; a reload changes what its next round does
/// but cannot start it again once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Never started: no `[warming]` at start-up.
    Off,
    /// Running: a round now, or one to come every `interval`.
    Running,
    /// Ended after its start-up round (no `interval`).
    Finished,
    /// Ended because a reload removed `[warming]`.
    Stopped,
}

impl Schedule {
    fn from_u8(v: u8) -> Schedule {
        match v {
            1 => Schedule::Running,
            2 => Schedule::Finished,
            3 => Schedule::Stopped,
            _ => Schedule::Off,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Schedule::Off => 0,
            Schedule::Running => 1,
            Schedule::Finished => 2,
            Schedule::Stopped => 3,
        }
    }
}

/// Warming progress for `GET /health`: the state of the current (or last)
/// round and its item counts, and the loop's [`Schedule`]. Lock-free;
/// cheap to read.
#[derive(Debug, Default)]
pub struct Progress {
    state: AtomicU8,
    done: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    rounds: AtomicU64,
    schedule: AtomicU8,
}

impl Progress {
    /// `{"state": "idle"|"warming"|"done", "done", "total", "errors",
    /// "rounds"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let state = match self.state.load(Ordering::Relaxed) {
            WARMING => "warming",
            DONE => "done",
            _ => "idle",
        };
        json!({
            "state": state,
            "done": self.done.load(Ordering::Relaxed),
            "total": self.total.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "rounds": self.rounds.load(Ordering::Relaxed),
        })
    }

    pub fn schedule(&self) -> Schedule {
        Schedule::from_u8(self.schedule.load(Ordering::Relaxed))
    }

    pub(super) fn set_schedule(&self, s: Schedule) {
        self.schedule.store(s.as_u8(), Ordering::Relaxed);
    }

    /// Whether `GET /health` shows the `warming` block: `[warming]` is in
    /// the running configuration (`configured`) and the block is a loop's
    /// that runs, or ran its start-up round. A section added by a reload,
    /// or added back after a reload removed it, has no loop until a
    /// restart, and one with neither `on_start` nor `interval` never
    /// warms: their block would stay `idle` for ever.
    pub fn shown(&self, configured: bool) -> bool {
        configured
            && match self.schedule() {
                Schedule::Running => true,
                Schedule::Finished => self.rounds.load(Ordering::Relaxed) > 0,
                Schedule::Off | Schedule::Stopped => false,
            }
    }

    /// The warning a reload from `old` to `new` deserves when its
    /// `[warming]` cannot take effect: the section is added (no loop runs
    /// for it until a restart), or changed while no loop runs (it ended
    /// after its start-up round, or an earlier reload removed it). A
    /// running loop reads its configuration at each round, and one whose
    /// section is removed stops, so those need none.
    pub fn restart_warning(
        &self,
        old: Option<&WarmingConfig>,
        new: Option<&WarmingConfig>,
    ) -> Option<&'static str> {
        let new = new?;
        let running = self.schedule() == Schedule::Running;
        match old {
            None if !running => Some("[warming] added: takes effect only after a restart"),
            Some(old) if !running && old != new => Some(
                "[warming] changed while no warming is scheduled (start-up only, or removed by an earlier reload): takes effect only after a restart",
            ),
            _ => None,
        }
    }

    pub(super) fn start(&self) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.state.store(WARMING, Ordering::Relaxed);
    }

    pub(super) fn add_total(&self, n: usize) {
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn finish_item(&self, outcome: Outcome) {
        if outcome == Outcome::Error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn finish(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.state.store(DONE, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn progress_json() {
        let p = Progress::default();
        assert_eq!(p.to_json()["state"], "idle");
        p.start();
        p.add_total(2);
        p.finish_item(Outcome::Stored);
        assert_eq!(p.to_json()["state"], "warming");
        assert_eq!(p.to_json()["done"], 1);
        p.finish_item(Outcome::Error);
        p.finish();
        let j = p.to_json();
        assert_eq!(j["state"], "done");
        assert_eq!(j["total"], 2);
        assert_eq!(j["errors"], 1);
    }

    fn warming(interval: Option<u64>) -> WarmingConfig {
        WarmingConfig {
            on_start: true,
            interval: interval.map(Duration::from_secs),
            urls_file: Some("warm.txt".into()),
            sitemap: None,
            redis_hot: 0,
            concurrency: 4,
            rate_count: 50,
            rate_per: Duration::from_secs(1),
            encodings: Vec::new(),
            host: None,
        }
    }

    /// Adding `[warming]` by a reload started nothing and said nothing,
    /// while `/health` showed an `idle` block that never ran.
    #[test]
    fn a_reload_warns_when_warming_cannot_take_effect() {
        let (hourly, daily) = (warming(Some(3600)), warming(Some(86_400)));
        let p = Progress::default();
        // No [warming] at start-up: adding it needs a restart.
        assert_eq!(
            p.restart_warning(None, Some(&hourly)),
            Some("[warming] added: takes effect only after a restart")
        );
        assert!(!p.shown(true));
        assert_eq!(p.restart_warning(Some(&hourly), Some(&hourly)), None);
        assert!(p.restart_warning(Some(&hourly), Some(&daily)).is_some());
        assert_eq!(p.restart_warning(Some(&hourly), None), None);
        // A running loop takes changes from its next round, and stops
        // when the section is removed.
        p.set_schedule(Schedule::Running);
        assert!(p.shown(true));
        assert!(!p.shown(false));
        assert_eq!(p.restart_warning(Some(&hourly), Some(&daily)), None);
        assert_eq!(p.restart_warning(Some(&hourly), None), None);
        // Removed, the loop stopped: adding it back needs a restart.
        p.set_schedule(Schedule::Stopped);
        assert!(!p.shown(true));
        assert!(p.restart_warning(None, Some(&hourly)).is_some());
        // Start-up only: its round is over, the block shows it, and a
        // new interval cannot start another.
        p.set_schedule(Schedule::Finished);
        assert!(!p.shown(true), "on_start = false: no round ever ran");
        p.start();
        p.finish();
        assert!(p.shown(true));
        assert_eq!(
            p.restart_warning(Some(&warming(None)), Some(&warming(None))),
            None
        );
        assert!(p
            .restart_warning(Some(&warming(None)), Some(&hourly))
            .is_some_and(|w| w.ends_with("takes effect only after a restart")));
    }
}
