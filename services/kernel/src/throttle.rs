//! At most one go per key per interval: how often the kernel refetches a peer's document
//! whose key id did not match, and tells delivery a node is up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Throttle {
    interval: Duration,
    /// Keys remembered at most; past it all are forgotten (each may go once more).
    max_keys: usize,
    last: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    pub(crate) fn new(interval: Duration, max_keys: usize) -> Throttle {
        Throttle {
            interval,
            max_keys,
            last: Mutex::default(),
        }
    }

    /// Whether `key` may go now: not within the interval since its last go. A go counts
    /// whether or not what it was for succeeded.
    pub(crate) fn allow(&self, key: &str) -> bool {
        let mut last = self.last.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        if last.get(key).is_some_and(|at| now.duration_since(*at) < self.interval) {
            return false;
        }
        if last.len() >= self.max_keys {
            last.clear();
        }
        last.insert(key.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_goes_once_per_interval_and_keys_do_not_hold_each_other() {
        let throttle = Throttle::new(Duration::from_millis(50), 100);
        assert!(throttle.allow("a"));
        assert!(!throttle.allow("a"));
        assert!(throttle.allow("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(throttle.allow("a"));
        assert!(!throttle.allow("a"));
    }

    #[test]
    fn past_its_bound_it_forgets_every_key() {
        let throttle = Throttle::new(Duration::from_secs(60), 2);
        assert!(throttle.allow("a"));
        assert!(throttle.allow("b"));
        // "c" finds two remembered: all are forgotten, so "a" may go again.
        assert!(throttle.allow("c"));
        assert!(throttle.allow("a"));
    }
}
