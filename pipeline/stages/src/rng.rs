//! SplitMix64 and the few floating-point functions the synthetic generator needs.
//!
//! Both are written out here instead of taken from a crate or the platform's libm:
//! the synthetic corpus's bytes are a function of every random draw and every
//! rounding, and artifact bytes must never change because a dependency changed its
//! RNG algorithm or seeding, or because another machine's libm rounds `exp`, `ln` or
//! `powf` differently in the last bit. Everything below uses only IEEE 754 basic
//! operations (`+ - * /`), which are correctly rounded everywhere.

/// Weyl sequence increment of SplitMix64 (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and good enough for text.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator for item `index` of stream `stream` under `seed`, independent of
    /// every other (seed, stream, index), so items can be generated in any order.
    pub(crate) fn for_item(seed: u64, stream: u64, index: u64) -> SplitMix64 {
        let base = mix64(seed ^ mix64(stream.wrapping_add(GOLDEN_GAMMA)));
        SplitMix64::new(mix64(base ^ index.wrapping_mul(GOLDEN_GAMMA)))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-40 for our `n`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

/// The SplitMix64 output function (a 64-bit finalizer).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const LN_2: f64 = std::f64::consts::LN_2;

/// Natural logarithm of a finite `x > 0` (relative error about 1e-16).
pub(crate) fn ln(x: f64) -> f64 {
    debug_assert!(x > 0.0 && x.is_finite());
    // x = m * 2^e with m in [sqrt(1/2), sqrt(2)), so the series below converges fast.
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln(m) = 2 atanh(t) = 2 (t + t^3/3 + t^5/5 + ...), |t| < 0.172.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    for k in 0..12 {
        sum += term / f64::from(2 * k + 1);
        term *= t2;
    }
    e as f64 * LN_2 + 2.0 * sum
}

/// `e^x` for `|x| < 700` (relative error about 1e-15).
pub(crate) fn exp(x: f64) -> f64 {
    debug_assert!(x.abs() < 700.0);
    // x = k ln 2 + r with |r| <= ln(2)/2; e^x = 2^k e^r.
    let k = (x / LN_2).round();
    let r = x - k * LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..20 {
        term *= r / f64::from(n);
        sum += term;
    }
    sum * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

/// `x^y` for finite `x > 0` and moderate results.
pub(crate) fn pow(x: f64, y: f64) -> f64 {
    exp(y * ln(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation.
        let mut rng = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn item_streams_are_distinct_and_repeatable() {
        let a = SplitMix64::for_item(0, 1, 5).next_u64();
        assert_eq!(a, SplitMix64::for_item(0, 1, 5).next_u64());
        assert_ne!(a, SplitMix64::for_item(0, 1, 6).next_u64());
        assert_ne!(a, SplitMix64::for_item(0, 2, 5).next_u64());
        assert_ne!(a, SplitMix64::for_item(1, 1, 5).next_u64());
    }

    #[test]
    fn below_and_f64_stay_in_range() {
        let mut rng = SplitMix64::new(9);
        let mut seen = [false; 7];
        for _ in 0..10_000 {
            seen[rng.below(7) as usize] = true;
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn math_agrees_with_libm() {
        for x in [1e-6, 0.3, 0.5, 1.0, 2.0, 10.0, 12345.678, 1e6] {
            let rel = (ln(x) - x.ln()).abs() / x.ln().abs().max(1.0);
            assert!(rel < 1e-14, "ln({x}) = {} vs {}", ln(x), x.ln());
        }
        for x in [-40.0, -3.2, -0.5, 0.0, 0.7, 5.0, 41.5] {
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < 1e-14, "exp({x}) = {} vs {}", exp(x), x.exp());
        }
        assert!((pow(1000.0, 1.1) - 1000f64.powf(1.1)).abs() < 1e-9);
    }
}
