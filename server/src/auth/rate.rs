//! Requests per caller, bounded: one caller (a person, a service's key, or
//! a peer address whose credentials fail) cannot take the server's request
//! handling from the others. A token bucket per caller (`governor`): a burst
//! of `max_request_burst_per_caller`, refilled at
//! `max_requests_per_second_per_caller`; past it, 429 with `Retry-After`.
//!
//! Keyed by the authenticated subject, or by `peer:<address>` for requests
//! whose credentials are missing or wrong, so guessing keys is slowed too:
//! once an address has spent its bucket on failures, its requests are
//! refused *before* their credentials are checked until it refills (else a
//! 429 would say "wrong" and a 200 "right" at full speed). IPv6 peers are
//! keyed by their /64 (one host can hold a whole /64). With authentication
//! off (loopback only) there is no caller to tell apart and nothing is
//! limited. Public routes (health, the page) are not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Callers tracked at once; past it, new ones share one bucket (a flood of
/// addresses cannot grow the map without bound).
const MAX_TRACKED: usize = 100_000;
const OVERFLOW_KEY: &str = "overflow";

/// The per-caller limiter; `None` inside when limiting is off.
pub struct CallerLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
    /// Peers whose failures spent their bucket, refused until then.
    blocked: Mutex<HashMap<String, Instant>>,
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
            blocked: Mutex::default(),
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
        let key = if limiter.len() >= MAX_TRACKED {
            OVERFLOW_KEY.to_string()
        } else {
            caller.to_string()
        };
        limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// A failed authentication from `peer`: counted, and when its bucket is
    /// spent the peer is refused until it refills (`Err(wait)`).
    pub fn failed(&self, peer: &str) -> Result<(), Duration> {
        self.check(peer).inspect_err(|wait| {
            let mut blocked = self.blocked.lock().expect("blocked lock");
            if blocked.len() < MAX_TRACKED {
                blocked.insert(peer.to_string(), Instant::now() + *wait);
            }
        })
    }

    /// `Err(wait)` while `peer` is refused for failing too often.
    pub fn blocked(&self, peer: &str) -> Result<(), Duration> {
        let mut blocked = self.blocked.lock().expect("blocked lock");
        match blocked.get(peer) {
            Some(until) if *until > Instant::now() => Err(*until - Instant::now()),
            Some(_) => {
                blocked.remove(peer);
                Ok(())
            }
            None => Ok(()),
        }
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
        let now = Instant::now();
        self.blocked
            .lock()
            .expect("blocked lock")
            .retain(|_, until| *until > now);
    }
}

/// The key of a peer address: the address, or for IPv6 its /64.
pub fn peer_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("peer:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V6(v6)) => format!("peer:{}", v6.to_ipv4_mapped().expect("mapped")),
        Some(ip) => format!("peer:{ip}"),
        None => "peer:unknown".to_string(),
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

    #[test]
    fn a_peer_that_spent_its_bucket_on_failures_is_refused_until_it_refills() {
        let limits = CallerLimits::new(10, 3);
        for _ in 0..3 {
            limits.failed("peer:x").unwrap();
            limits.blocked("peer:x").unwrap();
        }
        assert!(limits.failed("peer:x").is_err());
        assert!(
            limits.blocked("peer:x").is_err(),
            "refused before any check"
        );
        assert!(limits.blocked("peer:y").is_ok());
        std::thread::sleep(Duration::from_millis(150));
        assert!(limits.blocked("peer:x").is_ok());
    }

    #[test]
    fn ipv6_peers_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(Some(a)), peer_key(Some(b)));
        assert_ne!(peer_key(Some(a)), peer_key(Some(c)));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(peer_key(Some(mapped)), "peer:10.1.2.3");
        assert_eq!(peer_key(Some("10.1.2.3".parse().unwrap())), "peer:10.1.2.3");
    }
}
