//! The consistent hash ring of `balance = "hash"` (ketama-style): every
//! server owns `POINTS_PER_WEIGHT × weight` points placed by hashing its
//! address, and a key goes to the owner of the first point at or after the
//! key's hash. A server's points depend only on its own address, so adding
//! or removing one of N servers moves only the keys on its arcs, about 1/N
//! of them. An ineligible owner (unhealthy, drained) passes its keys to the
//! next eligible point clockwise.

use http::uri::Authority;
use xxhash_rust::xxh3::xxh3_64;

/// Points per unit of weight: enough that shares stay within a few
/// percent of the weights.
const POINTS_PER_WEIGHT: u32 = 160;

/// A sorted ring of `(point, server index)`.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(servers: &[(Authority, u32)]) -> Ring {
        let mut points = Vec::new();
        for (index, (authority, weight)) in servers.iter().enumerate() {
            for i in 0..POINTS_PER_WEIGHT * weight {
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
