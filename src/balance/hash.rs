//! A stable hash for the hash-based strategies.
//!
//! `std`'s `DefaultHasher` may change between Rust releases and is randomly keyed per process, so
//! several Fulcrum instances would disagree on where a client goes. FNV-1a 64 (Fowler, Noll, Vo)
//! is fixed by its specification; its output is passed through SplitMix64's finalizer so that the
//! high bits (which pick the backend) depend on every input bit.

use crate::rng::mix;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The hash the strategies use: FNV-1a 64, then SplitMix64's finalizer.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    mix(fnv1a64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Vectors from the FNV specification's test suite.
        for (input, want) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            assert_eq!(fnv1a64(input), want, "{input:?}");
        }
        assert_eq!(stable_hash(b"10.0.0.1"), stable_hash(b"10.0.0.1"));
        assert_ne!(stable_hash(b"10.0.0.1"), stable_hash(b"10.0.0.2"));
    }
}
