//! Load balancing: which target of an upstream takes the next request.
//!
//! * `round_robin` follows a precomputed smooth weighted schedule (nginx's algorithm), so
//!   weights interleave (`a b a c a b a`) instead of bursting (`a a a a b b c`).
//! * `least_request` picks the target with the fewest requests in flight per unit of weight.
//! * `p2c_ewma` draws two targets at random and keeps the cheaper by peak-EWMA latency times
//!   load (Finagle, linkerd): cheap to compute, and it steers away from a slow target within a
//!   few requests without herding everyone onto the single best one.
//! * `consistent_hash` places targets on a hash ring with virtual nodes; a key maps to the next
//!   point clockwise, so adding or removing a target moves only about 1/N of the keys.

use std::net::IpAddr;

use http::request::Parts;
use xxhash_rust::xxh3::xxh3_64;

use super::Target;
use crate::config::spec::{Balance, HashKey, TargetSpec};

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 160;
/// Above this many slots a weighted schedule falls back to cumulative weights.
const MAX_SCHEDULE: u64 = 65_536;

#[derive(Debug)]
pub enum Balancer {
    RoundRobin {
        schedule: Vec<usize>,
        cumulative: Vec<u64>,
    },
    LeastRequest,
    P2cEwma,
    ConsistentHash {
        ring: Vec<(u64, usize)>,
        key: HashKey,
    },
}

/// What a balancer may look at to choose.
pub struct PickContext<'a> {
    pub parts: &'a Parts,
    pub client_ip: IpAddr,
    /// Per-worker counter that drives round robin without sharing a cache line across cores.
    pub sequence: u64,
}

impl Balancer {
    pub fn new(balance: &Balance, targets: &[TargetSpec]) -> Balancer {
        match balance {
            Balance::RoundRobin => {
                let weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight)).collect();
                Balancer::RoundRobin {
                    schedule: smooth_schedule(&weights),
                    cumulative: weights
                        .iter()
                        .scan(0, |acc, w| {
                            *acc += w;
                            Some(*acc)
                        })
                        .collect(),
                }
            }
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::P2cEwma => Balancer::P2cEwma,
            Balance::ConsistentHash(key) => Balancer::ConsistentHash {
                ring: build_ring(targets),
                key: key.clone(),
            },
        }
    }

    /// The index of the chosen target among those `eligible` accepts (breaker closed, not
    /// already tried), or `None` when no target is eligible.
    pub fn pick(
        &self,
        targets: &[Target],
        ctx: &PickContext,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = targets.len();
        if n <= 1 {
            return (n == 1 && eligible(0)).then_some(0);
        }
        match self {
            Balancer::RoundRobin { schedule, cumulative } => {
                if !schedule.is_empty() {
                    let len = schedule.len() as u64;
                    return (0..len)
                        .filter_map(|offset| schedule.get(((ctx.sequence + offset) % len) as usize).copied())
                        .find(|i| eligible(*i));
                }
                let total = cumulative.last().copied().unwrap_or(1).max(1);
                let first = cumulative.partition_point(|c| *c <= ctx.sequence % total);
                (0..n).map(|offset| (first + offset) % n).find(|i| eligible(*i))
            }
            Balancer::LeastRequest => least_loaded(targets, ctx.sequence, eligible),
            Balancer::P2cEwma => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                if eligible(a) && eligible(b) {
                    let cost = |i: usize| targets.get(i).map_or(f64::MAX, Target::cost);
                    return Some(if cost(b) < cost(a) { b } else { a });
                }
                // Some targets are out: the cheapest of the rest.
                (0..n).filter(|i| eligible(*i)).min_by(|x, y| {
                    let cost = |i: usize| targets.get(i).map_or(f64::MAX, Target::cost);
                    cost(*x).total_cmp(&cost(*y))
                })
            }
            Balancer::ConsistentHash { ring, key } => match hash_key(key, ctx) {
                Some(hash) => ring_lookup(ring, hash, eligible),
                // No key on this request: spread it like round robin would.
                None => (0..n)
                    .map(|offset| ((ctx.sequence + offset as u64) % n as u64) as usize)
                    .find(|i| eligible(*i)),
            },
        }
    }
}

/// Fewest in flight per unit of weight; ties go round robin from `start`.
fn least_loaded(targets: &[Target], start: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let n = targets.len();
    let offset = (start % n as u64) as usize;
    (0..n)
        .map(|i| (i + offset) % n)
        .filter(|i| eligible(*i))
        .min_by(|&a, &b| {
            let load = |i: usize| {
                targets
                    .get(i)
                    .map_or(f64::MAX, |t| t.inflight() as f64 / f64::from(t.weight))
            };
            load(a).total_cmp(&load(b))
        })
}

/// nginx's smooth weighted round robin, unrolled into one full cycle.
fn smooth_schedule(weights: &[u64]) -> Vec<usize> {
    let gcd = weights.iter().copied().fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = weights.iter().map(|w| (w / gcd) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total as u64 > MAX_SCHEDULE {
        return Vec::new();
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .map_or(0, |(i, _)| i);
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn build_ring(targets: &[TargetSpec]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        for point in 0..target.weight * RING_POINTS_PER_WEIGHT {
            let label = format!("{}#{point}", target.addr);
            ring.push((xxh3_64(label.as_bytes()), index));
        }
    }
    ring.sort_unstable();
    ring
}

/// The first eligible target clockwise from `hash`: when a target is out, its keys move to
/// the next target on the ring and nobody else's keys move.
fn ring_lookup(ring: &[(u64, usize)], hash: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
    let start = ring.partition_point(|(point, _)| *point < hash);
    (0..ring.len())
        .filter_map(|offset| ring.get((start + offset) % ring.len()))
        .map(|(_, index)| *index)
        .find(|i| eligible(*i))
}

fn hash_key(key: &HashKey, ctx: &PickContext) -> Option<u64> {
    match key {
        HashKey::ClientIp => Some(match ctx.client_ip {
            IpAddr::V4(ip) => xxh3_64(&ip.octets()),
            IpAddr::V6(ip) => xxh3_64(&ip.octets()),
        }),
        HashKey::Header(name) => ctx.parts.headers.get(name).map(|v| xxh3_64(v.as_bytes())),
        HashKey::Cookie(name) => cookie(&ctx.parts.headers, name).map(|v| xxh3_64(v.as_bytes())),
    }
}

/// The value of cookie `name` from the `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    fn specs(weights: &[u32]) -> Vec<TargetSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| TargetSpec {
                addr: format!("10.0.0.{i}:80").into(),
                authority: format!("10.0.0.{i}:80").parse().unwrap(),
                weight: *w,
            })
            .collect()
    }

    fn targets(specs: &[TargetSpec]) -> Vec<Target> {
        specs.iter().map(|s| Target::new(s, None)).collect()
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        let specs = specs(&[3, 1]);
        let ts = targets(&specs);
        let b = Balancer::new(&Balance::RoundRobin, &specs);
        let p = parts(&[]);
        let mut counts = [0; 2];
        for sequence in 0..400 {
            let ctx = PickContext {
                parts: &p,
                client_ip: [127, 0, 0, 1].into(),
                sequence,
            };
            counts[b.pick(&ts, &ctx, &|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn least_request_avoids_busy_targets() {
        let specs = specs(&[1, 1, 1]);
        let ts = targets(&specs);
        let _busy0 = ts[0].start_request();
        let _busy0b = ts[0].start_request();
        let _busy2 = ts[2].start_request();
        let b = Balancer::new(&Balance::LeastRequest, &specs);
        let p = parts(&[]);
        for sequence in 0..10 {
            let ctx = PickContext {
                parts: &p,
                client_ip: [127, 0, 0, 1].into(),
                sequence,
            };
            assert_eq!(b.pick(&ts, &ctx, &|_| true), Some(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_ewma_shifts_traffic_from_a_slow_target() {
        let specs = specs(&[1, 1]);
        let ts = targets(&specs);
        // Target 1 answers in 200ms, target 0 in 2ms.
        ts[0].observe_latency(Duration::from_millis(2));
        ts[1].observe_latency(Duration::from_millis(200));
        let b = Balancer::new(&Balance::P2cEwma, &specs);
        let p = parts(&[]);
        let mut counts = [0; 2];
        for sequence in 0..200 {
            let ctx = PickContext {
                parts: &p,
                client_ip: [127, 0, 0, 1].into(),
                sequence,
            };
            counts[b.pick(&ts, &ctx, &|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 0], "with two targets p2c compares both every time");

        // Without new samples the estimate decays, so a penalised target is tried again...
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(ts[1].ewma_ms() < 1.0, "decayed to {}", ts[1].ewma_ms());
        // ...and when the other target turns slow, traffic moves back.
        ts[0].observe_latency(Duration::from_millis(50));
        ts[1].observe_latency(Duration::from_millis(1));
        let ctx = PickContext {
            parts: &p,
            client_ip: [127, 0, 0, 1].into(),
            sequence: 0,
        };
        assert_eq!(b.pick(&ts, &ctx, &|_| true), Some(1));
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_few_keys() {
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let four = specs(&[1, 1, 1, 1]);
        let five = specs(&[1, 1, 1, 1, 1]);
        let (t4, t5) = (targets(&four), targets(&five));
        let b4 = Balancer::new(&Balance::ConsistentHash(key.clone()), &four);
        let b5 = Balancer::new(&Balance::ConsistentHash(key), &five);
        let mut moved = 0;
        let mut spread: HashMap<usize, usize> = HashMap::new();
        let n = 10_000;
        for user in 0..n {
            let p = parts(&[("x-user", &format!("user-{user}"))]);
            let ctx = PickContext {
                parts: &p,
                client_ip: [127, 0, 0, 1].into(),
                sequence: user,
            };
            let before = b4.pick(&t4, &ctx, &|_| true).unwrap();
            assert_eq!(
                b4.pick(
                    &t4,
                    &PickContext {
                        sequence: user + 1,
                        ..ctx
                    },
                    &|_| true
                ),
                Some(before)
            );
            let after = b5
                .pick(
                    &t5,
                    &PickContext {
                        parts: &p,
                        client_ip: [127, 0, 0, 1].into(),
                        sequence: 0,
                    },
                    &|_| true,
                )
                .unwrap();
            *spread.entry(before).or_default() += 1;
            if after != before {
                assert_eq!(after, 4, "keys only move to the new target");
                moved += 1;
            }
        }
        // Ideal is n/5 = 2000; allow for ring variance.
        assert!((1400..=2600).contains(&moved), "moved {moved} of {n}");
        for (_, count) in spread {
            assert!((1750..=3250).contains(&count), "uneven spread {count}");
        }
    }

    #[test]
    fn every_policy_skips_ineligible_targets() {
        let specs = specs(&[1, 1, 1]);
        let ts = targets(&specs);
        let p = parts(&[("x-user", "u1")]);
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        for balance in [
            Balance::RoundRobin,
            Balance::LeastRequest,
            Balance::P2cEwma,
            Balance::ConsistentHash(key),
        ] {
            let b = Balancer::new(&balance, &specs);
            for sequence in 0..50 {
                let ctx = PickContext {
                    parts: &p,
                    client_ip: [127, 0, 0, 1].into(),
                    sequence,
                };
                assert_ne!(b.pick(&ts, &ctx, &|i| i != 1), Some(1), "{balance:?}");
                assert_eq!(b.pick(&ts, &ctx, &|i| i == 2), Some(2), "{balance:?}");
                assert_eq!(b.pick(&ts, &ctx, &|_| false), None, "{balance:?}");
            }
        }
    }

    #[test]
    fn cookie_and_ip_keys() {
        let p = parts(&[("cookie", "a=1; sid=abc; b=2")]);
        assert_eq!(cookie(&p.headers, "sid"), Some("abc"));
        assert_eq!(cookie(&p.headers, "zzz"), None);
        let specs = specs(&[1, 1, 1]);
        let ts = targets(&specs);
        let b = Balancer::new(&Balance::ConsistentHash(HashKey::ClientIp), &specs);
        let ip: IpAddr = [127, 0, 0, 9].into();
        let first = b.pick(
            &ts,
            &PickContext {
                parts: &p,
                client_ip: ip,
                sequence: 0,
            },
            &|_| true,
        );
        for sequence in 1..50 {
            assert_eq!(
                b.pick(
                    &ts,
                    &PickContext {
                        parts: &p,
                        client_ip: ip,
                        sequence
                    },
                    &|_| true
                ),
                first
            );
        }
        let _ = Arc::new(());
    }
}
