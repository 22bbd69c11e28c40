//! The consistent hash ring of `balance = "hash"` (ketama-style): every
//! server owns `POINTS_PER_WEIGHT × weight` points (weights divided by
//! their greatest common divisor, the ring bounded: [`point_counts`])
//! placed by hashing its address, and a key goes to the owner of the first point at or after the
//! key's hash. A server's points depend only on its own address, so adding
//! or removing one of N servers moves only the keys on its arcs, about 1/N
//! of them. An ineligible owner (unhealthy, drained) passes its keys to the
//! next eligible point clockwise.

use http::uri::Authority;
use xxhash_rust::xxh3::xxh3_64;

/// Points per unit of weight: enough that shares stay within a few
/// percent of the weights.
const POINTS_PER_WEIGHT: u32 = 160;

/// At most this many points in a ring (16 bytes each: 4 MiB). Weights are
/// first divided by their greatest common divisor (weights of 1000 spread
/// keys exactly as weights of 1); a ring still larger gives each server a
/// proportional share of this many. 64 servers of weight 1000 took 160
/// million points, 174 MB, and a reload built a second ring beside it.
const MAX_POINTS: u64 = 1 << 18;

/// The number of points of each server: `POINTS_PER_WEIGHT` per unit of
/// its weight divided by the weights' greatest common divisor, scaled
/// down (at least 1 each) to stay within [`MAX_POINTS`].
fn point_counts(weights: &[u32]) -> Vec<u64> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let counts: Vec<u64> = weights
        .iter()
        .map(|w| u64::from(w / divisor) * u64::from(POINTS_PER_WEIGHT))
        .collect();
    let total: u64 = counts.iter().sum();
    if total <= MAX_POINTS {
        return counts;
    }
    counts
        .iter()
        .map(|c| (c.saturating_mul(MAX_POINTS) / total).max(1))
        .collect()
}

/// A sorted ring of `(point, server index)`.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(servers: &[(Authority, u32)]) -> Ring {
        let weights: Vec<u32> = servers.iter().map(|(_, w)| *w).collect();
        let counts = point_counts(&weights);
        let mut points = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (index, ((authority, _), count)) in servers.iter().zip(counts).enumerate() {
            for i in 0..count {
                let label = format!("{authority}#{i}");
                points.push((xxh3_64(label.as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The hash of a key (the same function the points use).
    pub fn hash(key: &[u8]) -> u64 {
        xxh3_64(key)
    }

    /// The first server clockwise from `hash` that `eligible` accepts.
    pub fn find(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        let start = self.points.partition_point(|p| p.0 < hash);
        let mut tried = 0u64; // bitset of rejected servers (first 64)
        for i in 0..n {
            let server = self.points[(start + i) % n].1;
            if server < 64 && tried & (1 << server) != 0 {
                continue;
            }
            if eligible(server) {
                return Some(server);
            }
            if server < 64 {
                tried |= 1 << server;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<(Authority, u32)> {
        (0..n)
            .map(|i| (format!("10.0.0.{i}:80").parse().unwrap(), 1))
            .collect()
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let five = servers(5);
        let ring5 = Ring::new(&five);
        let ring4 = Ring::new(&five[..4]);
        let keys = 10_000;
        let mut moved = 0;
        let mut counts = [0usize; 5];
        for k in 0..keys {
            let h = Ring::hash(format!("/item/{k}").as_bytes());
            let a = ring5.find(h, |_| true).unwrap();
            let b = ring4.find(h, |_| true).unwrap();
            counts[a] += 1;
            if a != b {
                // Only keys of the removed server may move.
                assert_eq!(a, 4, "key {k} moved from a server that stayed");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.12..0.28).contains(&share), "moved {share}");
        for c in counts {
            assert!((1400..2600).contains(&c), "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn weights_share_their_divisor_and_the_ring_is_bounded() {
        assert_eq!(point_counts(&[1000, 1000]), [160, 160]);
        assert_eq!(point_counts(&[3, 6]), [160, 320]);
        assert_eq!(point_counts(&[1, 1]), [160, 160]);
        // 64 servers of weights 999 and 1000: no common divisor; scaled.
        let weights: Vec<u32> = (0..64).map(|i| 999 + (i % 2)).collect();
        let counts = point_counts(&weights);
        assert!(counts.iter().sum::<u64>() <= MAX_POINTS);
        assert!(counts[0] < counts[1] && counts[0] > 1000, "{counts:?}");
        assert_eq!(point_counts(&[1, 1_000_000])[0], 1, "at least one point");
        let ring = Ring::new(
            &weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("10.0.0.{i}:80").parse().unwrap(), *w))
                .collect::<Vec<_>>(),
        );
        assert!(ring.points.len() as u64 <= MAX_POINTS);
    }

    #[test]
    fn ineligible_owner_passes_to_the_next() {
        let ring = Ring::new(&servers(3));
        let h = Ring::hash(b"/a");
        let owner = ring.find(h, |_| true).unwrap();
        let next = ring.find(h, |s| s != owner).unwrap();
        assert_ne!(owner, next);
        assert_eq!(ring.find(h, |_| false), None);
        // Stable.
        assert_eq!(ring.find(h, |_| true), Some(owner));
    }
}
