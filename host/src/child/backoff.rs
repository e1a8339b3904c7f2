use std::time::{Duration, Instant};

/// Crash-loop protection: after consecutive unexpected exits, a new child may only be spawned
/// once a growing delay has passed (first restart is immediate).
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    last_failure: Option<Instant>,
    max: Duration,
}

/// A child that lived this long resets the failure count.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const BASE: Duration = Duration::from_millis(500);

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            failures: 0,
            last_failure: None,
            max,
        }
    }

    pub fn record_exit(&mut self, crashed: bool, lived: Duration) {
        if !crashed || lived >= HEALTHY_AFTER {
            self.failures = 0;
            self.last_failure = None;
        } else {
            self.failures += 1;
            self.last_failure = Some(Instant::now());
        }
    }

    /// How long until a spawn is allowed; zero when it is allowed now.
    pub fn wait(&self) -> Duration {
        let (Some(at), n) = (self.last_failure, self.failures) else {
            return Duration::ZERO;
        };
        if n <= 1 {
            return Duration::ZERO;
        }
        let delay = BASE.saturating_mul(1 << (n - 2).min(16)).min(self.max);
        delay.saturating_sub(at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(4));
        b.record_exit(true, Duration::ZERO);
        assert_eq!(b.wait(), Duration::ZERO, "first restart is immediate");
        b.record_exit(true, Duration::ZERO);
        assert!(b.wait() > Duration::from_millis(400));
        for _ in 0..10 {
            b.record_exit(true, Duration::ZERO);
        }
        assert!(b.wait() <= Duration::from_secs(4));
        b.record_exit(true, Duration::from_secs(60));
        assert_eq!(b.wait(), Duration::ZERO);
    }
}
