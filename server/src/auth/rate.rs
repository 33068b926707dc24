//! Requests per caller, bounded: one caller (a person, a service's key, or
//! a peer address whose credentials fail) cannot take the server's request
//! handling from the others. A token bucket per caller (`governor`): a burst
//! of `max_request_burst_per_caller`, refilled at
//! `max_requests_per_second_per_caller`; past it, 429 with `Retry-After`.
//!
//! Keyed by the authenticated subject, or by `peer:<address>` for requests
//! whose credentials are missing or wrong (so guessing keys is slowed too).
//! With authentication off (loopback only) there is no caller to tell apart
//! and nothing is limited. Public routes (health, the page) are not limited.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The per-caller limiter; `None` inside when limiting is off.
pub struct CallerLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
}

impl CallerLimits {
    /// `per_second` 0 turns limiting off; `burst` is at least 1.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            per_second,
        }
    }

    pub fn off() -> Self {
        Self::new(0, 1)
    }

    /// `Err(wait)`: `caller` is over its rate; it may retry after `wait`.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&caller.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Forgets callers whose buckets are full again (bounds the map).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_burst_waits_and_others_do_not() {
        let limits = CallerLimits::new(10, 5);
        for _ in 0..5 {
            limits.check("a").unwrap();
        }
        let wait = limits.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        limits.check("b").unwrap();
        std::thread::sleep(Duration::from_millis(120));
        limits.check("a").unwrap();
        assert!(CallerLimits::off().check("a").is_ok());
    }
}
