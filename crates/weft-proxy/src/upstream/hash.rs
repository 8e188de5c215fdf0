//! Consistent hashing: the same key reaches the same endpoint while the endpoints stay the
//! same, and few keys move when one comes or goes. Ring hash (Envoy's and Istio's default)
//! and Maglev, both built once when a configuration is accepted.

use std::hash::{DefaultHasher, Hash, Hasher};

/// A 64-bit hash of anything hashable, stable within the process.
pub fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A ring with `points_per_endpoint × weight` points for each endpoint, at least
/// `minimum_size` in all: sorted (point, endpoint index).
pub fn ring(endpoints: &[(String, u32)], minimum_size: usize) -> Vec<(u64, usize)> {
    let total_weight: usize = endpoints.iter().map(|(_, w)| *w as usize).sum();
    if total_weight == 0 {
        return Vec::new();
    }
    // Envoy caps the ring at 8M entries; a mesh needs far fewer.
    let per_weight = minimum_size
        .div_ceil(total_weight)
        .clamp(1, 8_388_608 / total_weight.max(1));
    let mut ring: Vec<(u64, usize)> = endpoints
        .iter()
        .enumerate()
        .flat_map(|(index, (name, weight))| {
            (0..per_weight * *weight as usize).map(move |i| (hash_of((name, i)), index))
        })
        .collect();
    ring.sort_unstable();
    ring
}

/// The endpoint index a key lands on in a ring: the first point at or after its hash.
pub fn ring_lookup(ring: &[(u64, usize)], key: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let at = ring.partition_point(|(point, _)| *point < key);
    Some(ring[at % ring.len()].1)
}

/// Maglev's lookup table of `size` slots (a prime; Envoy's default is 65537): each endpoint
/// takes slots in the order of its own permutation, in turn, until the table is full.
pub fn maglev(endpoints: &[(String, u32)], size: usize) -> Vec<(u64, usize)> {
    if endpoints.is_empty() || size == 0 {
        return Vec::new();
    }
    let permutation: Vec<(usize, usize)> = endpoints
        .iter()
        .map(|(name, _)| {
            let offset = (hash_of((name, "offset")) % size as u64) as usize;
            let skip = (hash_of((name, "skip")) % (size as u64 - 1).max(1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; endpoints.len()];
    let mut table: Vec<Option<usize>> = vec![None; size];
    let mut filled = 0;
    'fill: loop {
        for (index, (_, weight)) in endpoints.iter().enumerate() {
            // Heavier endpoints take more turns.
            for _ in 0..(*weight).max(1) {
                let (offset, skip) = permutation[index];
                loop {
                    let slot = (offset + next[index] * skip) % size;
                    next[index] += 1;
                    if table[slot].is_none() {
                        table[slot] = Some(index);
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
    }
    table
        .into_iter()
        .enumerate()
        .filter_map(|(slot, index)| Some((slot as u64, index?)))
        .collect()
}

/// The endpoint index a key lands on in a Maglev table.
pub fn maglev_lookup(table: &[(u64, usize)], key: u64) -> Option<usize> {
    if table.is_empty() {
        return None;
    }
    Some(table[(key % table.len() as u64) as usize].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    fn moved(before: &[usize], after: &[usize]) -> usize {
        before.iter().zip(after).filter(|(a, b)| a != b).count()
    }

    #[test]
    fn both_spread_keys_and_move_few_when_an_endpoint_goes() {
        let keys: Vec<u64> = (0..10_000).map(|k| hash_of(("user", k))).collect();
        for (name, build, lookup) in [
            (
                "ring",
                ring as fn(&[(String, u32)], usize) -> Vec<(u64, usize)>,
                ring_lookup as fn(&[(u64, usize)], u64) -> Option<usize>,
            ),
            ("maglev", maglev, maglev_lookup),
        ] {
            let size = if name == "ring" { 1024 } else { 65537 };
            let five = build(&endpoints(5), size);
            let before: Vec<usize> = keys.iter().map(|k| lookup(&five, *k).unwrap()).collect();
            for endpoint in 0..5 {
                let share = before.iter().filter(|i| **i == endpoint).count();
                assert!(
                    (1000..3000).contains(&share),
                    "{name}: endpoint {endpoint} got {share} of 10000"
                );
            }
            // Drop the last endpoint: keys of the others mostly stay.
            let four = build(&endpoints(4), size);
            let after: Vec<usize> = keys.iter().map(|k| lookup(&four, *k).unwrap()).collect();
            let stayed_elsewhere = before
                .iter()
                .zip(&after)
                .filter(|(b, _)| **b != 4)
                .filter(|(b, a)| b != a)
                .count();
            assert!(
                stayed_elsewhere < 1500,
                "{name}: {stayed_elsewhere} keys of live endpoints moved"
            );
            assert!(
                moved(&before, &after) >= 1000,
                "{name}: the dropped endpoint's keys moved"
            );
        }
    }
}
