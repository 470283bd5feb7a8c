//! Where OpenSSL's reads and writes really happen: the internal function its public wrappers
//! call.
//!
//! OpenSSL (1.1.1 on) implements `SSL_read`/`SSL_read_ex` over one internal function,
//! `ssl_read_internal(ssl, buf, num, size_t *readbytes)`, returning 1 with the count stored
//! (and likewise `SSL_write`/`SSL_write_ex` over `ssl_write_internal`). Probing that function
//! instead of the wrappers takes both forms with one pair of probes, with the `_ex` forms'
//! meaning (return 1, count through the fourth argument). It is also far cheaper here: a
//! uprobe's trap is priced by the instruction under it, and the wrappers open with
//! `sub $imm,%rsp`, which the kernel single-steps out of line (17.8 us per pair measured on the
//! bench's VM), where the internal functions open with `push`, which it emulates (about 0.5).
//!
//! The internal functions are not exported, so they are found by the call: the `_ex` wrapper
//! is a thin one (its first instruction after a bare prologue is `call rel32`), and the plain
//! wrapper must call the same address. A library built another way (the wrapper inlined, a
//! tail jump, another TLS library with OpenSSL's names) does not match, and its public
//! functions are probed as before.

/// The target of `code`'s first `call rel32` when only prologue instructions come before it
/// (`endbr64`, pushes, `mov %rsp,%rbp`, `sub $imm8,%rsp`); `at` is `code[0]`'s address.
fn thin_wrapper_call(code: &[u8], at: u64) -> Option<u64> {
    let mut i = 0;
    // A prologue is a few instructions: more means this is not a thin wrapper.
    for _ in 0..8 {
        i += match code.get(i..)? {
            [0xe8, rel @ ..] => return call_target(rel, at.wrapping_add(i as u64)),
            [0xf3, 0x0f, 0x1e, 0xfa, ..] => 4, // endbr64
            [0x50..=0x57, ..] => 1,            // push %rax..%rdi
            [0x41, 0x50..=0x57, ..] => 2,      // push %r8..%r15
            [0x48, 0x89, 0xe5, ..] => 3,       // mov %rsp,%rbp
            [0x48, 0x83, 0xec, _, ..] => 4,    // sub $imm8,%rsp
            _ => return None,
        };
    }
    None
}

/// The address a `call rel32` at `call_at` reaches, from the four bytes after its opcode.
fn call_target(rel: &[u8], call_at: u64) -> Option<u64> {
    let rel = i32::from_le_bytes(rel.get(..4)?.try_into().ok()?);
    Some(call_at.wrapping_add(5).wrapping_add_signed(rel as i64))
}

/// Whether `code` (at address `at`) holds a `call rel32` to `target` at any byte. Without an
/// instruction decoder a match could in principle be inside another instruction; the odds
/// that one lands on the exact address the other wrapper calls are nil.
fn calls(code: &[u8], at: u64, target: u64) -> bool {
    (0..code.len()).any(|i| code[i] == 0xe8 && call_target(&code[i + 1..], at.wrapping_add(i as u64)) == Some(target))
}

/// The function both wrappers call: the `_ex` form's first call (it must be a thin wrapper),
/// which the plain form's code must call too.
pub fn shared_callee(ex: (&[u8], u64), plain: (&[u8], u64)) -> Option<u64> {
    let target = thin_wrapper_call(ex.0, ex.1)?;
    calls(plain.0, plain.1, target).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's libssl.so.3 (OpenSSL 3.0.22): `SSL_read_ex` at 0x35500 and `SSL_read` at
    /// 0x35470, both calling `ssl_read_internal` at 0x352d0.
    const READ_EX: &[u8] = &[0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2];
    const READ: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48, 0x89, 0x44, 0x24, 0x08,
        0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2, 0xe8, 0x3d, 0xfe, 0xff, 0xff,
    ];

    #[test]
    fn openssl_wrappers_lead_to_their_shared_callee() {
        assert_eq!(thin_wrapper_call(READ_EX, 0x35500), Some(0x352d0));
        assert!(calls(READ, 0x35470, 0x352d0));
        assert_eq!(shared_callee((READ_EX, 0x35500), (READ, 0x35470)), Some(0x352d0));
    }

    #[test]
    fn prologues_before_the_call_are_skipped() {
        // endbr64; push %rbp; mov %rsp,%rbp; push %r12; call +0x10
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x41, 0x54, 0xe8, 0x10, 0, 0, 0];
        assert_eq!(thin_wrapper_call(&code, 0x1000), Some(0x1000 + 10 + 5 + 0x10));
    }

    #[test]
    fn anything_but_a_thin_wrapper_or_a_shared_call_is_refused() {
        // The wrapper inlined: its body starts with a load, not a call.
        assert_eq!(thin_wrapper_call(&[0x48, 0x8b, 0x47, 0x30, 0xe8, 0, 0, 0, 0], 0), None);
        // A tail jump (`jmp rel32`) is not followed.
        assert_eq!(thin_wrapper_call(&[0x48, 0x83, 0xec, 0x08, 0xe9, 0, 0, 0, 0], 0), None);
        // Cut short inside the call.
        assert_eq!(thin_wrapper_call(&[0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7], 0), None);
        // Only prologue bytes: no call within reach.
        assert_eq!(thin_wrapper_call(&[0x55; 32], 0), None);
        // The plain form calls something else.
        assert_eq!(shared_callee((READ_EX, 0x35500), (READ, 0x35480)), None);
    }
}
