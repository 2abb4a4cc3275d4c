//! The unit tests' pseudo-random numbers: xorshift64, seeded, so a failing
//! case comes back the same on every run (no dependency for four lines).

/// Marsaglia's xorshift64 (13, 7, 17): any non-zero seed.
pub(crate) struct XorShift(pub u64);

impl XorShift {
    /// The next number; the sequence never reaches 0.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
