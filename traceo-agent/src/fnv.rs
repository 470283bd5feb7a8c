//! FNV-1a, 64 bits: a digest stable across builds and hosts (unlike `DefaultHasher`), for
//! keys that must agree between agents (`shared_state`) or between an event and the request
//! it names (`sentry::request_shape`).

/// The starting state (the FNV-1a 64-bit offset basis).
pub const START: u64 = 0xcbf2_9ce4_8422_2325;

/// The state after one more byte.
pub fn step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
}

/// The state after `bytes`, from `h`.
pub fn extend(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| step(h, b))
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    extend(START, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(extend(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
    }
}
