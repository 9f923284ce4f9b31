//! Abuse limits: open connections per address and in all, and broadcasts per second per address.
//!
//! Addresses are grouped the way one user holds them: an IPv4 address alone, an IPv6 address by
//! its /64 prefix (one host is usually handed a whole /64), so that hopping within a prefix does
//! not multiply anyone's allowance or the size of these tables.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The address group a limit is counted against.
pub(crate) type IpKey = IpAddr;

/// IPv4 (also when mapped into IPv6) as is; IPv6 by its /64 prefix.
pub(crate) fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The address a request is counted against: the connection's peer, or with `trust_forwarded_for`
/// the last address of `X-Forwarded-For` (the one the trusted proxy appended), when there is one.
pub(crate) fn client_key(
    headers: &axum::http::HeaderMap,
    peer: IpAddr,
    trust_forwarded_for: bool,
) -> IpKey {
    if trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .last()
            .and_then(|last| last.trim().parse::<IpAddr>().ok());
        if let Some(client) = forwarded {
            return ip_key(client);
        }
    }
    ip_key(peer)
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    PerIp,
    Total,
}

/// The limits of one hub.
pub(crate) struct Limits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpKey, usize>>,
    broadcasts: Option<DefaultKeyedRateLimiter<IpKey>>,
    clock: DefaultClock,
}

impl Limits {
    /// Zero means "no limit" for each of them.
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        broadcasts_per_sec: u32,
        burst: u32,
    ) -> Self {
        let broadcasts = NonZeroU32::new(broadcasts_per_sec).map(|rate| {
            let burst = NonZeroU32::new(burst.max(broadcasts_per_sec)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Limits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            broadcasts,
            clock: DefaultClock::default(),
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused. The count is released
    /// when the returned guard is dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, Refusal> {
        let key = ip_key(ip);
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_total != 0 && total > self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(key).or_insert(0);
        if self.max_per_ip != 0 && *count >= self.max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(ConnectionGuard {
            limits: self.clone(),
            key,
        })
    }

    /// Takes one broadcast from `key`'s allowance, or says how long until there is one.
    pub(crate) fn check_broadcast(&self, key: IpKey) -> Result<(), Duration> {
        match &self.broadcasts {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(&key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets the rate state of addresses that have been quiet long enough to be back at a full
    /// allowance, so the table holds only recent senders.
    pub(crate) fn sweep(&self) {
        if let Some(limiter) = &self.broadcasts {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Open connections in all.
    pub(crate) fn open_connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One admitted connection; dropping it releases the count.
pub(crate) struct ConnectionGuard {
    limits: Arc<Limits>,
    key: IpKey,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.key);
            }
        }
    }
}

/// Limits on the request target, taken from the hub's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathLimits {
    pub max_target_bytes: usize,
    pub max_name_bytes: usize,
    pub max_channels: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_unwrapped() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        headers.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        assert_eq!(client_key(&headers, peer, false), peer);
        assert_eq!(
            client_key(&headers, peer, true),
            "3.3.3.3".parse::<IpAddr>().unwrap()
        );
        let mut junk = axum::http::HeaderMap::new();
        junk.append("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(client_key(&junk, peer, true), peer);
        assert_eq!(client_key(&axum::http::HeaderMap::new(), peer, true), peer);
    }

    #[test]
    fn per_ip_and_total_limits() {
        let limits = Arc::new(Limits::new(3, 2, 0, 0));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let _b = limits.admit(ip).unwrap();
        assert_eq!(limits.admit(ip).err(), Some(Refusal::PerIp));
        let _c = limits.admit(other).unwrap();
        assert_eq!(limits.admit(other).err(), Some(Refusal::Total));
        drop(a);
        let _d = limits.admit(ip).unwrap();
        assert_eq!(limits.open_connections(), 3);
    }

    #[test]
    fn broadcast_rate_is_a_token_bucket() {
        let limits = Limits::new(0, 0, 10, 20);
        let ip = ip_key("127.0.0.1".parse().unwrap());
        for _ in 0..20 {
            limits.check_broadcast(ip).unwrap();
        }
        let wait = limits.check_broadcast(ip).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limits
            .check_broadcast(ip_key("127.0.0.2".parse().unwrap()))
            .is_ok());
        assert!(Limits::new(0, 0, 0, 0).check_broadcast(ip).is_ok());
    }
}
