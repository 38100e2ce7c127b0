//! Rate limits, like API Gateway's usage plans: a rate and a burst for a
//! route as a whole, and for each client address on its own. Over either,
//! the request is a 429 with `Retry-After`, answered before its body is
//! read, and nothing is stored.
//!
//! The limits are governor's GCRA buckets: `burst` requests may come at
//! once, then one more every `per / rate`. A client is checked against its
//! own bucket first, so one client over its limit does not use up the
//! route's. The per-client buckets live in memory, per gateway process
//! (with N replicas, a client may send N times its limit), at most
//! `max_clients` of them ([`store`]: the least recently seen client is
//! dropped for a new one); buckets of clients that went quiet are dropped
//! every [`SWEEP_EVERY`] too. An IPv6 client is its `/ipv6_prefix` (a
//! /64 by default: what one subscriber or one host gets), so a client
//! cannot pick a fresh address per request to get a fresh bucket.

pub mod store;

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Weak},
    time::Duration,
};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{keyed::DefaultKeyedStateStore, InMemoryState, NotKeyed},
    Quota, RateLimiter,
};

use self::store::BoundedStore;
use serde::{Deserialize, Serialize};

use crate::{config::ConfigError, error::ApiError};

/// How often quiet clients' buckets are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The longest a bucket may take to refill from empty (see `quota`).
const MAX_REFILL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `rate` requests every `per` (default 1 s), and up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub rate: u32,
    pub burst: u32,
    #[serde(default = "one_second", with = "humantime_serde")]
    pub per: Duration,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// `[ingest.throttle]`, or a route's own `throttle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// All requests to the route, together.
    pub route: Option<RateConfig>,
    /// Each client address (see [`crate::client_ip`]) on its own.
    pub per_ip: Option<RateConfig>,
    /// Each API key on its own, on routes that require one
    /// ([`crate::api_key`]).
    pub per_key: Option<RateConfig>,
    /// Clients tracked at once for `per_ip`; beyond it the least recently
    /// seen is dropped (and starts again with a full burst).
    pub max_clients: usize,
    /// An IPv6 client is its network of this many bits: one bucket per
    /// /64 by default.
    pub ipv6_prefix: u8,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self { route: None, per_ip: None, per_key: None, max_clients: 100_000, ipv6_prefix: 64 }
    }
}

impl ThrottleConfig {
    /// Checks every limit; errors name their key under `key`. For
    /// `ingest.throttle`, which is checked even when every route sets its own.
    pub fn check(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_clients == 0 {
            return Err(ConfigError {
                key: format!("{key}.max_clients"),
                message: "must be at least 1".into(),
            });
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Err(ConfigError {
                key: format!("{key}.ipv6_prefix"),
                message: "must be 1 to 128".into(),
            });
        }
        self.quotas(key).map(drop)
    }

    /// The route's, the client's and the key's quota, in that order.
    fn quotas(&self, key: &str) -> Result<[Option<Quota>; 3], ConfigError> {
        let quota = |rate: &Option<RateConfig>, field: &str| {
            rate.as_ref().map(|r| r.quota(&format!("{key}.{field}"))).transpose()
        };
        Ok([quota(&self.route, "route")?, quota(&self.per_ip, "per_ip")?, quota(&self.per_key, "per_key")?])
    }
}

impl RateConfig {
    fn quota(&self, key: &str) -> Result<Quota, ConfigError> {
        let bad = |field: &str, message: &str| ConfigError {
            key: format!("{key}.{field}"),
            message: message.to_owned(),
        };
        let rate = NonZeroU32::new(self.rate).ok_or_else(|| bad("rate", "must be at least 1"))?;
        let burst = NonZeroU32::new(self.burst).ok_or_else(|| bad("burst", "must be at least 1"))?;
        let every = self.per / rate.get();
        // governor keeps `every × burst` in u64 nanoseconds and adds it to
        // its clock: beyond that it overflows (a panic in debug builds, a
        // wrapped limit in release). No real limit needs ten years to refill.
        if every.checked_mul(burst.get()).is_none_or(|refill| refill > MAX_REFILL) {
            return Err(bad("per", "a full bucket (burst × per ÷ rate) must refill within 10 years"));
        }
        Quota::with_period(every)
            .map(|q| q.allow_burst(burst))
            .ok_or_else(|| bad("per", "must be long enough for one request every nanosecond or more"))
    }
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<K, C> = RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

type Bounded<K, C> = RateLimiter<K, BoundedStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A route's limits, compiled.
pub struct Throttle<C: Clock = DefaultClock> {
    route: Option<Direct<C>>,
    per_ip: Option<Bounded<IpAddr, C>>,
    per_key: Option<Keyed<usize, C>>,
    ipv6_prefix: u8,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Throttle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("route", &self.route.is_some())
            .field("per_ip", &self.per_ip.is_some())
            .field("per_key", &self.per_key.is_some())
            .finish()
    }
}

impl Throttle {
    /// `None` when `cfg` sets no limit. Errors name their key under `key`.
    pub fn compile(cfg: &ThrottleConfig, key: &str) -> Result<Option<Self>, ConfigError> {
        Self::with_clock(cfg, key, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    /// As [`Throttle::compile`], on `clock` (tests use a fake one).
    pub fn with_clock(cfg: &ThrottleConfig, key: &str, clock: C) -> Result<Option<Self>, ConfigError> {
        cfg.check(key)?;
        let [route, per_ip, per_key] = cfg.quotas(key)?;
        if route.is_none() && per_ip.is_none() && per_key.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            route: route.map(|q| RateLimiter::direct_with_clock(q, clock.clone())),
            per_ip: per_ip.map(|q| RateLimiter::new(q, BoundedStore::new(cfg.max_clients), clock.clone())),
            per_key: per_key.map(|q| RateLimiter::dashmap_with_clock(q, clock.clone())),
            ipv6_prefix: cfg.ipv6_prefix,
            clock,
        }))
    }

    /// Takes one request from the client's bucket, then the API key's
    /// (`key`: its position), then the route's.
    pub fn check(&self, client: Option<IpAddr>, key: Option<usize>) -> Result<(), ApiError> {
        self.check_client(client)?;
        self.check_key_and_route(key)
    }

    /// The client's bucket alone: checked before the API key, so a client
    /// guessing keys is limited too.
    pub fn check_client(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        if let (Some(limiter), Some(ip)) = (&self.per_ip, client) {
            let client = crate::client_ip::group(ip, self.ipv6_prefix);
            limiter.check_key(&client).map_err(|not_until| self.throttled("client", not_until))?;
        }
        Ok(())
    }

    /// The API key's bucket, then the route's.
    pub fn check_key_and_route(&self, key: Option<usize>) -> Result<(), ApiError> {
        if let (Some(limiter), Some(key)) = (&self.per_key, key) {
            limiter.check_key(&key).map_err(|not_until| self.throttled("API key", not_until))?;
        }
        if let Some(limiter) = &self.route {
            limiter.check().map_err(|not_until| self.throttled("route", not_until))?;
        }
        Ok(())
    }

    fn throttled(&self, scope: &'static str, not_until: governor::NotUntil<C::Instant>) -> ApiError {
        let wait = not_until.wait_time_from(self.clock.now());
        // Whole seconds, rounded up: a client that waits this long gets in.
        let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::Throttled { scope, retry_after_secs: retry_after_secs.max(1) }
    }

    /// Drops the buckets of clients that are back to a full burst (they
    /// would start from the same state anyway).
    pub fn sweep(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_key {
            limiter.retain_recent();
        }
    }

    /// Client buckets held now.
    pub fn clients(&self) -> usize {
        self.per_ip.as_ref().map_or(0, Bounded::len)
    }
}

/// Client buckets held, by route: bounded by `max_clients`.
pub const CLIENTS: &str = "spillway_throttle_clients";

/// Sweeps `throttle` every [`SWEEP_EVERY`] until it is dropped, and sets
/// the route's [`CLIENTS`] gauge.
pub fn spawn_sweeper(throttle: &Arc<Throttle>, route: &str) {
    let weak: Weak<Throttle> = Arc::downgrade(throttle);
    let gauge = metrics::gauge!(CLIENTS, "route" => route.to_owned());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(t) = weak.upgrade() else { break };
            t.sweep();
            gauge.set(t.clients() as f64);
        }
    });
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn rate(rate: u32, burst: u32, per: Duration) -> Option<RateConfig> {
        Some(RateConfig { rate, burst, per })
    }

    fn throttle(cfg: ThrottleConfig) -> (Throttle<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let t =
            Throttle::with_clock(&cfg, "ingest.throttle", clock.clone()).expect("compiles").expect("limits");
        (t, clock)
    }

    fn retry_after(r: Result<(), ApiError>) -> (&'static str, u64) {
        match r {
            Err(ApiError::Throttled { scope, retry_after_secs }) => (scope, retry_after_secs),
            other => panic!("expected a 429, got {other:?}"),
        }
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2)));

    #[test]
    fn a_burst_then_one_per_period() {
        let (t, clock) =
            throttle(ThrottleConfig { route: rate(1, 3, Duration::from_secs(10)), ..Default::default() });
        for _ in 0..3 {
            t.check(A, None).expect("within the burst");
        }
        assert_eq!(retry_after(t.check(A, None)), ("route", 10));
        clock.advance(Duration::from_millis(9_500));
        assert_eq!(retry_after(t.check(B, None)), ("route", 1), "half a second is one whole second to wait");
        clock.advance(Duration::from_millis(500));
        t.check(B, None).expect("one more after the period");
        assert!(t.check(B, None).is_err());
    }

    #[test]
    fn each_client_has_its_own_bucket_and_is_checked_first() {
        let (t, _clock) = throttle(ThrottleConfig {
            route: rate(100, 3, Duration::from_secs(1)),
            per_ip: rate(1, 2, Duration::from_secs(60)),
            ..Default::default()
        });
        t.check(A, None).expect("1");
        t.check(A, None).expect("2");
        assert_eq!(retry_after(t.check(A, None)), ("client", 60));
        // A's refused request did not take from the route's bucket: B gets
        // the third and last request of the route's burst.
        t.check(B, None).expect("B's first");
        assert_eq!(retry_after(t.check(B, None)).0, "route");
        assert_eq!(t.clients(), 2);
    }

    #[test]
    fn each_api_key_has_its_own_bucket() {
        let (t, _clock) =
            throttle(ThrottleConfig { per_key: rate(1, 1, Duration::from_secs(60)), ..Default::default() });
        t.check(A, Some(0)).expect("key 0");
        assert_eq!(retry_after(t.check(B, Some(0))), ("API key", 60), "another client with the same key");
        t.check(A, Some(1)).expect("key 1 has its own bucket");
        t.check(A, None).expect("no key: no per-key limit");
    }

    #[test]
    fn quiet_clients_are_swept() {
        let (t, clock) =
            throttle(ThrottleConfig { per_ip: rate(1, 1, Duration::from_secs(1)), ..Default::default() });
        t.check(A, None).expect("A");
        t.check(B, None).expect("B");
        assert_eq!(t.clients(), 2);
        clock.advance(Duration::from_secs(5));
        t.sweep();
        assert_eq!(t.clients(), 0);
        t.check(None, None).expect("no address: only the route's limit, and there is none");
    }

    /// Every address of one IPv6 /64 is one client; another /64 is
    /// another. IPv4 addresses stay apart.
    #[test]
    fn an_ipv6_client_is_its_network() {
        let (t, _clock) =
            throttle(ThrottleConfig { per_ip: rate(1, 2, Duration::from_secs(60)), ..Default::default() });
        let v6 = |s: &str| Some(s.parse::<IpAddr>().expect("v6"));
        t.check(v6("2001:db8:1:2::1"), None).expect("1");
        t.check(v6("2001:db8:1:2:ffff::9"), None).expect("2, same /64");
        assert_eq!(
            retry_after(t.check(v6("2001:db8:1:2:abcd::77"), None)).0,
            "client",
            "a fresh address, same /64"
        );
        t.check(v6("2001:db8:1:3::1"), None).expect("another /64");
        assert_eq!(t.clients(), 2);
    }

    /// However many addresses come, no more than `max_clients` buckets
    /// are held; the least recently seen go first.
    #[test]
    fn tracked_clients_are_capped_least_recently_seen_first() {
        let (t, _clock) = throttle(ThrottleConfig {
            per_ip: rate(1, 1, Duration::from_secs(3600)),
            max_clients: 64,
            ..Default::default()
        });
        let ip = |n: u32| Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)));
        for n in 0..10_000 {
            t.check(ip(n), None).expect("a new client has a full bucket");
        }
        assert!(t.clients() <= 64, "{} buckets held", t.clients());
        // The most recent client is still tracked (and limited)…
        assert_eq!(retry_after(t.check(ip(9_999), None)).0, "client");
        // …the first one was dropped and starts again.
        t.check(ip(0), None).expect("evicted, so a fresh bucket");
    }

    #[test]
    fn no_limit_is_no_throttle_and_bad_values_name_their_key() {
        assert!(Throttle::compile(&ThrottleConfig::default(), "k").expect("compiles").is_none());
        for (cfg, key) in [
            (
                ThrottleConfig { route: rate(0, 1, Duration::from_secs(1)), ..Default::default() },
                "k.route.rate",
            ),
            (
                ThrottleConfig { per_ip: rate(1, 0, Duration::from_secs(1)), ..Default::default() },
                "k.per_ip.burst",
            ),
            (ThrottleConfig { route: rate(1, 1, Duration::ZERO), ..Default::default() }, "k.route.per"),
            (
                ThrottleConfig { per_key: rate(1, 0, Duration::from_secs(1)), ..Default::default() },
                "k.per_key.burst",
            ),
            // Found by the settings property test: governor's arithmetic
            // overflowed (a panic) on a long period times a large burst.
            (
                ThrottleConfig { route: rate(1, u32::MAX, Duration::from_secs(3600)), ..Default::default() },
                "k.route.per",
            ),
            (
                ThrottleConfig { per_ip: rate(1, 2, Duration::from_secs(u64::MAX)), ..Default::default() },
                "k.per_ip.per",
            ),
            (ThrottleConfig { max_clients: 0, ..Default::default() }, "k.max_clients"),
            (ThrottleConfig { ipv6_prefix: 129, ..Default::default() }, "k.ipv6_prefix"),
        ] {
            assert_eq!(Throttle::compile(&cfg, "k").expect_err("refused").key, key);
        }
    }
}
