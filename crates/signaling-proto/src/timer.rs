//! The timers of a state machine, each one a variant of the machine's own
//! timer enum (as quinn-proto's `TimerTable`), so that a new kind of timer
//! is a new variant, not a new mechanism.
//!
//! A [`TimerTable`] holds at most one deadline per timer value; setting a
//! timer again moves it. Both machines expose [`TimerTable::next_deadline`]
//! as their `poll_timeout` and drain [`TimerTable::expire`] in their
//! `handle_timeout`, earliest first.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines keyed by timer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TimerTable<T> {
    by_deadline: BTreeSet<(Instant, T)>,
    by_timer: HashMap<T, Instant>,
}

impl<T> Default for TimerTable<T> {
    fn default() -> Self {
        Self {
            by_deadline: BTreeSet::new(),
            by_timer: HashMap::new(),
        }
    }
}

impl<T: Ord + Hash + Clone> TimerTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `timer` for `deadline`, replacing any deadline it had.
    pub fn set(&mut self, timer: T, deadline: Instant) {
        if let Some(old) = self.by_timer.insert(timer.clone(), deadline) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
        self.by_deadline.insert((deadline, timer));
    }

    /// Disarms `timer`; its deadline, if it was armed.
    pub fn cancel(&mut self, timer: &T) -> Option<Instant> {
        let deadline = self.by_timer.remove(timer)?;
        self.by_deadline.remove(&(deadline, timer.clone()));
        Some(deadline)
    }

    /// When `timer` fires, if it is armed.
    pub fn deadline(&self, timer: &T) -> Option<Instant> {
        self.by_timer.get(timer).copied()
    }

    /// The earliest deadline of all.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    /// Takes the earliest timer whose deadline is at or before `now`, with
    /// that deadline.
    pub fn expire(&mut self, now: Instant) -> Option<(T, Instant)> {
        let (deadline, _) = self.by_deadline.first()?;
        if *deadline > now {
            return None;
        }
        let (deadline, timer) = self.by_deadline.pop_first()?;
        self.by_timer.remove(&timer);
        Some((timer, deadline))
    }

    /// Disarms every timer.
    pub fn clear(&mut self) {
        self.by_deadline.clear();
        self.by_timer.clear();
    }

    /// How many timers are armed.
    pub fn len(&self) -> usize {
        self.by_timer.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.by_timer.is_empty()
    }

    /// Every armed timer with its deadline, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (Instant, &T)> {
        self.by_deadline
            .iter()
            .map(|(deadline, timer)| (*deadline, timer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum Timer {
        A,
        B(u32),
    }

    #[test]
    fn fires_earliest_first_and_moves_on_reset() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut table = TimerTable::new();
        table.set(Timer::B(1), at(30));
        table.set(Timer::A, at(20));
        table.set(Timer::B(2), at(10));
        table.set(Timer::B(2), at(40));
        assert_eq!(table.len(), 3);
        assert_eq!(table.next_deadline(), Some(at(20)));
        assert_eq!(table.expire(at(19)), None);
        assert_eq!(table.expire(at(35)), Some((Timer::A, at(20))));
        assert_eq!(table.expire(at(35)), Some((Timer::B(1), at(30))));
        assert_eq!(table.expire(at(35)), None);
        assert_eq!(table.deadline(&Timer::B(2)), Some(at(40)));
        assert_eq!(table.cancel(&Timer::B(2)), Some(at(40)));
        assert_eq!(table.cancel(&Timer::B(2)), None);
        assert!(table.is_empty());
        assert_eq!(table.next_deadline(), None);
    }
}
