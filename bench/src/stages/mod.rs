//! The stages that reach 100,000 targets: virtual targets on the agent's
//! Direct Get path ([`crate::virtual_targets`]), each group of figures on
//! its own nats-server and master so a server's footprint is its own.

mod fleet;
mod job_start;
mod raw;
mod scale;

use std::time::Duration;

use crate::Row;

/// Sizes of the stages at scale.
pub struct Sizes {
    /// Fleet sizes, grown in this order: enlist (and fan-out) at each.
    pub targets: Vec<usize>,
    /// Every target polls once within this window.
    pub poll_window: Duration,
    /// `job start` reply measured to this many targets.
    pub start_sizes: Vec<usize>,
    /// `job start --all --wait` on this many targets.
    pub wait_targets: usize,
    pub rtt_samples: usize,
    /// How long the master sits idle after enlisting before its RSS is
    /// read again: past one expiry sweep (every 60 s), which reads every
    /// manifest's summary.
    pub idle: Duration,
}

impl Sizes {
    /// `tiny`, `quick` or the full sizes; `targets` replaces the fleet sizes
    /// (and caps the `job start` sizes, adding `targets` itself).
    pub fn new(tiny: bool, quick: bool, targets: Option<usize>) -> Sizes {
        let mut s = if tiny {
            Sizes {
                targets: vec![20],
                poll_window: Duration::from_secs(2),
                start_sizes: vec![1, 10],
                wait_targets: 10,
                rtt_samples: 50,
                idle: Duration::ZERO,
            }
        } else if quick {
            Sizes {
                targets: vec![1000],
                poll_window: Duration::from_secs(6),
                start_sizes: vec![1, 10, 50, 1000],
                wait_targets: 1000,
                rtt_samples: 500,
                idle: Duration::ZERO,
            }
        } else {
            Sizes {
                targets: vec![10_000, 100_000],
                poll_window: Duration::from_secs(60),
                start_sizes: vec![1, 10, 50, 1000],
                wait_targets: 1000,
                rtt_samples: 2000,
                idle: Duration::from_secs(65),
            }
        };
        if let Some(n) = targets {
            s.targets = vec![n];
            s.start_sizes.retain(|&k| k < n);
            s.start_sizes.push(n);
            s.wait_targets = n;
        }
        s
    }
}

/// Which figures to measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    pub enlist: bool,
    pub fan_out: bool,
    /// Force-poll of a virtual target, and every target polling.
    pub polling: bool,
    /// `target list` and `status`.
    pub listing: bool,
    pub job_start: bool,
    pub start_wait: bool,
}

/// Measures what `want` asks for.
pub async fn run(want: Want, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    if want.enlist || want.fan_out || want.polling || want.listing {
        scale::run(want, sizes, rows).await?;
    }
    if want.job_start || want.start_wait {
        job_start::run(want, sizes, rows).await?;
    }
    Ok(())
}
