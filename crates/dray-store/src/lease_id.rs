//! Lease ids that cannot be guessed: drawn from the operating system's CSPRNG (`getrandom`), a
//! block at a time. A lease id is a bearer credential for one attempt (whoever holds it can
//! complete, fail or heartbeat the job), so it must not be predictable from ids seen before, as
//! the output of a fast statistical generator is.

use dray_core::LeaseId;

/// Ids drawn per read of the OS generator: one system call per 256 leases.
const BLOCK_IDS: usize = 256;

/// A source of lease ids. Not shared between threads: each store holds one behind its own lock.
pub struct LeaseIds {
    source: Source,
}

// One per store, held in place behind its lock: boxing the block would add an indirection to
// every lease for no saving.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// The OS CSPRNG, read a block at a time.
    Os { block: [u64; BLOCK_IDS], next: usize },
    /// A fixed sequence from a seed (splitmix64), for deterministic simulation tests only:
    /// predictable, so never in production.
    Seeded(u64),
}

impl std::fmt::Debug for LeaseIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source {
            Source::Os { .. } => f.write_str("LeaseIds(os)"),
            Source::Seeded(_) => f.write_str("LeaseIds(seeded)"),
        }
    }
}

impl Default for LeaseIds {
    /// Ids from the OS CSPRNG.
    fn default() -> LeaseIds {
        LeaseIds { source: Source::Os { block: [0; BLOCK_IDS], next: BLOCK_IDS } }
    }
}

impl LeaseIds {
    /// A predictable sequence for tests that replay a run exactly (fault sweeps, simulation).
    pub fn seeded(seed: u64) -> LeaseIds {
        LeaseIds { source: Source::Seeded(seed) }
    }

    /// Moves a seeded sequence on by `epoch`, so a store reopened with the same seed does not
    /// hand out the ids of its previous run again. OS ids need nothing.
    pub fn mix(&mut self, epoch: u64) {
        if let Source::Seeded(state) = &mut self.source {
            *state ^= epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        }
    }

    /// The next id. Panics only if the operating system has no random source at all, which no
    /// platform Dray runs on lacks (Linux's `getrandom(2)` blocks until seeded, then never fails).
    // Not an `Iterator`: the sequence never ends, and callers want an id, not an `Option`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> LeaseId {
        match &mut self.source {
            Source::Os { block, next } => {
                if *next == BLOCK_IDS {
                    let mut bytes = [0u8; BLOCK_IDS * 8];
                    getrandom::fill(&mut bytes).expect("the operating system's random number generator is unavailable");
                    for (id, chunk) in block.iter_mut().zip(bytes.chunks_exact(8)) {
                        *id = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                    }
                    *next = 0;
                }
                let id = block[*next];
                *next += 1;
                LeaseId(id)
            }
            Source::Seeded(state) => {
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                LeaseId(z ^ (z >> 31))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_across_blocks_and_sources() {
        let mut a = LeaseIds::default();
        let mut b = LeaseIds::default();
        let ids: std::collections::HashSet<u64> = (0..3 * BLOCK_IDS).map(|_| a.next().0).collect();
        let (mut s1, mut s2) = (LeaseIds::seeded(7), LeaseIds::seeded(7));
        assert_eq!(s1.next(), s2.next(), "a seeded sequence replays");
        s2.mix(1);
        assert_ne!(s1.next(), s2.next(), "another epoch, another sequence");
        assert_eq!(ids.len(), 3 * BLOCK_IDS, "no repeats across refills");
        assert!(!ids.contains(&b.next().0), "two sources do not share a sequence");
        // Uses all 64 bits: the high half is not constant.
        let high: std::collections::HashSet<u64> = ids.iter().map(|id| id >> 32).collect();
        assert!(high.len() > BLOCK_IDS, "{}", high.len());
    }
}
