//! The delays of every "try again later" loop (JetStream not ready yet, the
//! master not answering an enlist, NATS not taking spooled results): one
//! exponential schedule from `backon`, with a reset after a success and a
//! wait that gives way to shutdown.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Doubling delays from `first` up to `max`, forever.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder =
            ExponentialBuilder::default().with_min_delay(first).with_max_delay(max).with_factor(2.0).without_max_times();
        Self { delays: builder.build(), builder, max }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// Sleeps the next delay. Returns `false`, at once, when `stop` is
    /// cancelled first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let first: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(first, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_way_to_shutdown() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!b.wait(&stop).await);
        assert!(b.wait(&CancellationToken::new()).await, "an uncancelled wait sleeps and returns true");
    }
}
