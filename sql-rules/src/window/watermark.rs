//! Stream time: how far event time has got, per partition and for the
//! stream, and when a silent partition may stop holding it back.
//!
//! This module owns the per-partition clocks (the latest event time each
//! partition has delivered), idleness and the quiet close. It knows nothing
//! of rows, rules or windows: the engine reports deliveries and the passing
//! of processing time, and asks for the stream time. Processing time comes
//! in as data (`now_ms` arguments); there is no clock here.
//!
//! The rules, precisely (all times in milliseconds):
//!
//! * A partition's *event time* is the latest event time it has delivered.
//!   The stream time is the minimum over partitions that are not idle.
//! * A partition is *behind* while another partition has delivered a later
//!   event time than its own. Its idle count starts at the first delivery
//!   (of another partition) that leaves it behind, or at its own delivery if
//!   it is still behind afterwards. It becomes *idle* at a [`tick`] at least
//!   `idle_timeout_ms` after that, if it has delivered nothing in between.
//!   Silence alone never makes a partition idle: a partition nobody has
//!   passed holds the stream time where it is.
//! * A quiet stream starts over: the first delivery after no partition has
//!   delivered anything for `idle_timeout_ms` makes every partition hold the
//!   stream time back again, each with a fresh count. So when traffic
//!   resumes partition by partition, the first partition's burst cannot
//!   carry the stream time past partitions that have not been read yet.
//! * An idle partition holds the stream time back again as soon as it
//!   delivers an event.
//! * Quiet close: at a [`tick`], when no partition has delivered anything
//!   for `quiet_close_ms`, processing time minus `quiet_close_ms` may serve
//!   as stream time ([`quiet_floor`]). The caller ticks only when every
//!   partition has delivered everything available (the Kafka source's
//!   caught-up signal), so a consumer working through a backlog never has
//!   windows closed by processing time.
//!
//! [`tick`]: StreamClock::tick
//! [`quiet_floor`]: StreamClock::quiet_floor

use std::collections::HashMap;

/// One partition's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionClock {
    /// Latest event time delivered; `i64::MIN` before the first event.
    pub max_event_ms: i64,
    /// Processing time since which the partition has been behind another
    /// partition without delivering anything; `None` while it is not behind.
    pub behind_since_ms: Option<i64>,
    /// Stopped holding the stream time back (see the module docs).
    pub idle: bool,
}

impl PartitionClock {
    fn new() -> Self {
        Self {
            max_event_ms: i64::MIN,
            behind_since_ms: None,
            idle: false,
        }
    }
}

/// The per-partition clocks of one stream.
#[derive(Debug, Clone)]
pub struct StreamClock {
    idle_timeout_ms: i64,
    /// `None`: the quiet close is off.
    quiet_close_ms: Option<i64>,
    partitions: HashMap<i32, PartitionClock>,
    /// Processing time of the latest delivery from any partition.
    last_delivery_ms: Option<i64>,
}

impl StreamClock {
    pub fn new(idle_timeout_ms: i64, quiet_close_ms: Option<i64>) -> Self {
        Self {
            idle_timeout_ms,
            quiet_close_ms,
            partitions: HashMap::new(),
            last_delivery_ms: None,
        }
    }

    /// Partitions this instance owns: each holds the stream time back
    /// until it delivers, or until it is idle.
    pub fn assign(&mut self, partitions: &[i32]) {
        for &p in partitions {
            self.partitions.entry(p).or_insert_with(PartitionClock::new);
        }
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// The latest event time `partition` has delivered (`i64::MIN` if none).
    pub fn max_event(&self, partition: i32) -> i64 {
        self.partitions
            .get(&partition)
            .map_or(i64::MIN, |c| c.max_event_ms)
    }

    /// `partition` delivered events at processing time `now_ms`; the latest
    /// of them (duplicates left out) is `max_event_ms`, `i64::MIN` if none
    /// counts. Costs one pass over the partitions, once per batch.
    pub fn deliver(&mut self, partition: i32, max_event_ms: i64, now_ms: i64) {
        let quiet_before = self
            .last_delivery_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= self.idle_timeout_ms);
        self.last_delivery_ms = Some(now_ms);
        if quiet_before {
            // Nothing moved for a whole idle timeout: silence says nothing
            // about who is behind. Everyone holds the stream time back again.
            for clock in self.partitions.values_mut() {
                clock.idle = false;
                clock.behind_since_ms = None;
            }
        }
        let clock = self
            .partitions
            .entry(partition)
            .or_insert_with(PartitionClock::new);
        clock.idle = false;
        clock.max_event_ms = clock.max_event_ms.max(max_event_ms);
        // Its own delivery restarts its count.
        clock.behind_since_ms = None;
        let lead = self
            .partitions
            .values()
            .map(|c| c.max_event_ms)
            .max()
            .unwrap_or(i64::MIN);
        for clock in self.partitions.values_mut() {
            if clock.max_event_ms < lead {
                clock.behind_since_ms.get_or_insert(now_ms);
            } else {
                clock.behind_since_ms = None;
            }
        }
    }

    /// Processing time has passed and every partition has delivered all it
    /// has: partitions behind for the idle timeout become idle.
    pub fn tick(&mut self, now_ms: i64) {
        for clock in self.partitions.values_mut() {
            if let Some(since) = clock.behind_since_ms {
                if now_ms.saturating_sub(since) >= self.idle_timeout_ms {
                    clock.idle = true;
                }
            }
        }
    }

    /// The minimum event time over partitions that are not idle; if every
    /// partition is idle (possible only after the leader was revoked), the
    /// maximum. `None` without partitions; `Some(i64::MIN)` before the
    /// first event.
    pub fn stream_time(&self) -> Option<i64> {
        let active = self
            .partitions
            .values()
            .filter(|c| !c.idle)
            .map(|c| c.max_event_ms)
            .min();
        active.or_else(|| self.latest_event())
    }

    /// The latest event time any partition has delivered.
    pub fn latest_event(&self) -> Option<i64> {
        self.partitions.values().map(|c| c.max_event_ms).max()
    }

    /// At a tick at `now_ms`: the stream time processing time allows when
    /// no partition has delivered anything for `quiet_close_ms`: the
    /// stream's own clock (the latest event time plus the processing time
    /// since the last delivery, never ahead of `now_ms`) minus
    /// `quiet_close_ms`. For a live stream that is `now_ms -
    /// quiet_close_ms`; a producer re-sending old readings that pauses
    /// only gets the length of its pause. `None` while events are flowing,
    /// before the first event, or with the quiet close off. The engine caps
    /// it per rule at the windows that hold data, so it never closes a
    /// window no event has reached.
    pub fn quiet_floor(&self, now_ms: i64) -> Option<i64> {
        let quiet_close = self.quiet_close_ms?;
        let last = self.last_delivery_ms?;
        let latest = self.latest_event().filter(|t| *t > i64::MIN)?;
        let quiet_for = now_ms.saturating_sub(last);
        (quiet_for >= quiet_close).then(|| {
            latest
                .saturating_add(quiet_for)
                .min(now_ms)
                .saturating_sub(quiet_close)
        })
    }

    /// The clocks, for snapshots.
    pub fn partitions(&self) -> impl Iterator<Item = (i32, &PartitionClock)> {
        self.partitions.iter().map(|(p, c)| (*p, c))
    }

    /// Restores a partition's clock from a snapshot. Processing-time counts
    /// are not kept across a restart: they start over from the next
    /// delivery, so a restart never makes a partition idle sooner.
    pub fn restore(&mut self, partition: i32, max_event_ms: i64, idle: bool) {
        self.partitions.insert(
            partition,
            PartitionClock {
                max_event_ms,
                behind_since_ms: None,
                idle,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: i64 = 10_000;

    fn clock(partitions: &[i32]) -> StreamClock {
        let mut c = StreamClock::new(IDLE, Some(5_000));
        c.assign(partitions);
        c
    }

    #[test]
    fn a_partition_that_never_delivers_holds_the_stream_back_until_passed_and_timed_out() {
        let mut c = clock(&[0, 1]);
        c.tick(1_000_000);
        assert_eq!(
            c.stream_time(),
            Some(i64::MIN),
            "silence alone is not idleness"
        );
        c.deliver(0, 5_000, 1_000_000);
        c.tick(1_000_000 + IDLE - 1);
        assert_eq!(c.stream_time(), Some(i64::MIN));
        c.tick(1_000_000 + IDLE);
        assert_eq!(
            c.stream_time(),
            Some(5_000),
            "passed and silent for the timeout"
        );
    }

    #[test]
    fn a_stream_quiet_as_a_whole_starts_over_when_traffic_resumes() {
        let mut c = clock(&[0, 1]);
        c.deliver(0, 100_000, 0);
        c.deliver(1, 99_000, 0);
        // Partition 1 is 1 s behind and silent: idle after the timeout.
        c.tick(IDLE);
        assert_eq!(c.stream_time(), Some(100_000));
        // An hour later partition 0 resumes first, with a burst far ahead.
        c.deliver(0, 3_700_000, 3_600_000);
        assert_eq!(
            c.stream_time(),
            Some(99_000),
            "partition 1 holds the stream back again after a quiet stream"
        );
        c.tick(3_600_000 + IDLE - 1);
        assert_eq!(c.stream_time(), Some(99_000));
        c.deliver(1, 3_700_500, 3_600_000 + IDLE - 1);
        assert_eq!(c.stream_time(), Some(3_700_000));
    }

    #[test]
    fn a_partition_that_keeps_delivering_is_never_idle_even_when_behind() {
        let mut c = clock(&[0, 1]);
        for s in 0..100 {
            let now = s * 1_000;
            c.deliver(0, now + 500, now);
            c.deliver(1, now, now);
            c.tick(now + 999);
        }
        assert_eq!(c.stream_time(), Some(99_000));
    }

    #[test]
    fn an_idle_partition_holds_the_stream_back_again_once_it_delivers() {
        let mut c = clock(&[0, 1]);
        c.deliver(0, 50_000, 0);
        c.deliver(0, 60_000, 5_000);
        c.tick(IDLE);
        assert_eq!(c.stream_time(), Some(60_000));
        c.deliver(1, 20_000, IDLE + 1);
        assert_eq!(c.stream_time(), Some(20_000));
    }

    #[test]
    fn the_quiet_floor_needs_a_quiet_stream_and_an_event() {
        let mut c = clock(&[0]);
        assert_eq!(c.quiet_floor(1_000_000), None, "nothing delivered yet");
        // A live stream: the floor follows the server clock.
        c.deliver(0, 99_950, 100_000);
        assert_eq!(c.quiet_floor(104_999), None);
        assert_eq!(c.quiet_floor(105_000), Some(99_950));
        assert_eq!(c.quiet_floor(200_000), Some(194_950));
        // Old readings re-sent: the floor moves only by the pause.
        let mut old = clock(&[0]);
        old.deliver(0, 1_000, 100_000);
        assert_eq!(old.quiet_floor(106_000), Some(2_000));
        // Readings ahead of the server clock: never past the clock.
        let mut ahead = clock(&[0]);
        ahead.deliver(0, 400_000, 100_000);
        assert_eq!(ahead.quiet_floor(106_000), Some(101_000));
        let off = StreamClock::new(IDLE, None);
        assert_eq!(off.quiet_floor(i64::MAX), None);
    }
}
