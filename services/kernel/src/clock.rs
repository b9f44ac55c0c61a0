//! Time as the kernel reads it — what it stamps on activities and flow versions, and when
//! flow timers fire — as a port, so a test can move it (`ManualClock`).

use futures::FutureExt;
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::sync::watch;

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Completes once `now_ms()` reaches `at_ms` (at once when it has).
    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'static, ()>;
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        i64::try_from(fedsx_runtime::clock::now_ms()).unwrap_or(i64::MAX)
    }

    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'static, ()> {
        let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms()).max(0) as u64);
        tokio::time::sleep(wait).boxed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<i64>,
}

impl ManualClock {
    pub fn starting_at(now_ms: i64) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(now_ms),
        }
    }

    /// Moves the clock `by` forward; sleeps it passed the end of complete.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'static, ()> {
        let mut now = self.now.subscribe();
        async move {
            if now.wait_for(|now| *now >= at_ms).await.is_err() {
                // The clock is gone, so its time never comes.
                std::future::pending::<()>().await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_it() {
        let clock = ManualClock::starting_at(1_000);
        let mut sleep = clock.sleep_until(61_000);
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::from_secs(59));
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::from_secs(1));
        assert!(futures::poll!(&mut sleep).is_ready());
        assert_eq!(clock.now_ms(), 61_000);
        assert!(
            futures::poll!(clock.sleep_until(5)).is_ready(),
            "a time passed is at once"
        );
    }
}
