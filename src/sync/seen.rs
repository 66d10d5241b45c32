//! The ids a listing contained, for the deletion sweep. Pure.

/// The ids a listing contained, for the deletion sweep: a Bloom filter (4 hashes) of at most
/// 8 MiB, sized to the account: 640 bits per expected id, so an account of a few hundred users
/// takes a few kilobytes and memory never grows with account size beyond the cap. A false
/// positive can only make an id look seen, which leaves a vanished user undeleted for that run
/// — never a live user deleted. Each run seeds the hashes differently, so such a user is caught
/// by a later run. The odds per vanished user: about 1e-9 up to 100,000 users, 1e-5 at
/// 1,000,000, 5 % at 10,000,000 (`len()` tells when an account outgrows it).
#[derive(Debug, Clone)]
pub struct SeenIds {
    bits: Vec<u64>,
    mask: u64,
    seed: u64,
    inserted: usize,
}

const SEEN_MAX_BITS_LOG2: u32 = 26;
const SEEN_MIN_BITS_LOG2: u32 = 16;
const SEEN_BITS_PER_ID: u64 = 640;
const SEEN_HASHES: u64 = 4;

impl SeenIds {
    /// An empty set at full size (8 MiB), hashes seeded with `seed` (the run id).
    pub fn new(seed: u64) -> SeenIds {
        Self::sized(seed, u64::MAX)
    }

    /// An empty set for about `expected` ids.
    pub fn sized(seed: u64, expected: u64) -> SeenIds {
        let want = expected.saturating_mul(SEEN_BITS_PER_ID).max(1);
        let log2 = (64 - (want - 1).leading_zeros()).clamp(SEEN_MIN_BITS_LOG2, SEEN_MAX_BITS_LOG2);
        SeenIds {
            bits: vec![0; 1 << (log2 - 6)],
            mask: (1u64 << log2) - 1,
            seed,
            inserted: 0,
        }
    }

    /// The filter's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// The filter's bit positions for `id` (a free function of the seed, so that `insert` can
    /// set bits while iterating without collecting them first).
    fn positions(seed: u64, mask: u64, id: &str) -> impl Iterator<Item = usize> {
        let h = xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), seed);
        let (h1, h2) = (h as u64, ((h >> 64) as u64) | 1);
        (0..SEEN_HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    pub fn insert(&mut self, id: &str) {
        for p in Self::positions(self.seed, self.mask, id) {
            self.bits[p >> 6] |= 1 << (p & 63);
        }
        self.inserted += 1;
    }

    pub fn contains(&self, id: &str) -> bool {
        Self::positions(self.seed, self.mask, id).all(|p| self.bits[p >> 6] & (1 << (p & 63)) != 0)
    }

    /// Insertions so far (duplicates included).
    pub fn len(&self) -> usize {
        self.inserted
    }

    pub fn is_empty(&self) -> bool {
        self.inserted == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_never_forget_and_rarely_imagine() {
        let mut seen = SeenIds::new(7);
        for i in 0..200_000 {
            seen.insert(&i.to_string());
        }
        assert!(
            (0..200_000).all(|i| seen.contains(&i.to_string())),
            "no false negatives"
        );
        let false_positives = (200_000..400_000)
            .filter(|i| seen.contains(&i.to_string()))
            .count();
        assert!(false_positives <= 2, "{false_positives}");
        // Another run's seed gives other positions.
        let other = SeenIds::new(8);
        assert!(!other.contains("1"));
    }

    #[test]
    fn seen_ids_are_sized_to_the_account_within_bounds() {
        assert_eq!(SeenIds::sized(1, 0).bytes(), 8 << 10, "at least 64 Kibit");
        assert_eq!(SeenIds::sized(1, 300).bytes(), 32 << 10);
        assert_eq!(SeenIds::sized(1, 100_000).bytes(), 8 << 20);
        assert_eq!(SeenIds::sized(1, 10_000_000).bytes(), 8 << 20, "capped");
        // A small filter filled as sized still rarely imagines.
        let mut seen = SeenIds::sized(3, 1_000);
        for i in 0..1_000 {
            seen.insert(&format!("u{i}"));
        }
        assert!((0..1_000).all(|i| seen.contains(&format!("u{i}"))));
        let fp = (0..100_000)
            .filter(|i| seen.contains(&format!("v{i}")))
            .count();
        assert!(fp <= 1, "{fp}");
    }
}
