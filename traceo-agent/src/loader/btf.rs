//! Minimal reader of the kernel's raw BTF (`/sys/kernel/btf/vmlinux`).
//!
//! traceo's programs walk kernel structs with `bpf_probe_read_kernel`, and member offsets differ
//! between kernel builds. Rather than depend on a CO-RE toolchain, the agent resolves the few
//! offsets it needs here and hands them to the programs as frozen constants.

use anyhow::{Context, Result, anyhow, bail, ensure};
use std::ops::Range;

const SYS_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Bounds every walk (modifier chains, anonymous nesting, arrays) so that a cyclic, corrupt blob
/// yields an error instead of a stack overflow or an endless loop.
const MAX_DEPTH: u32 = 32;

// BTF kinds (include/uapi/linux/btf.h) this reader looks at by name.
const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const TYPEDEF: u8 = 8;

/// One `struct btf_type` record; `data` is where its kind-specific data starts in the blob.
#[derive(Clone, Copy, Default)]
struct Type {
    kind: u8,
    kind_flag: bool,
    vlen: u32,
    name_off: u32,
    size_or_type: u32,
    data: usize,
}

/// Parsed BTF: the blob plus an index of its type records (type id = index; 0 is `void`).
pub struct Btf {
    blob: Vec<u8>,
    strs: Range<usize>,
    types: Vec<Type>,
}

/// Location of a member relative to the start of the outermost struct, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

impl Btf {
    /// Reads the running kernel's BTF, the only source of its struct layouts.
    pub fn from_sys_fs() -> Result<Btf> {
        if !std::path::Path::new(SYS_PATH).exists() {
            bail!("{SYS_PATH} is absent: the kernel lacks BTF (CONFIG_DEBUG_INFO_BTF)");
        }
        let bytes = std::fs::read(SYS_PATH);
        let bytes = bytes.with_context(|| format!("reading {SYS_PATH}"))?;
        Self::parse(&bytes).with_context(|| format!("parsing {SYS_PATH}"))
    }

    /// Parses a raw little-endian BTF blob; every length is checked, so bad input errors.
    pub fn parse(bytes: &[u8]) -> Result<Btf> {
        let mut btf = Btf { blob: bytes.to_vec(), strs: 0..0, types: vec![Type::default()] };
        let [magic, hdr_len, type_off, type_len, str_off, str_len] = btf.words(0)?;
        ensure!(magic & 0xffff == 0xeb9f, "not a little-endian BTF blob");
        ensure!(magic >> 16 & 0xff == 1, "unsupported BTF version");
        ensure!(hdr_len >= 24, "bad BTF header length {hdr_len}");
        let section = |off: u32, len: u32| -> Result<Range<usize>> {
            let start = u64::from(hdr_len) + u64::from(off);
            let end = start + u64::from(len);
            ensure!(end <= bytes.len() as u64, "BTF section beyond blob end");
            Ok(start as usize..end as usize)
        };
        let types = section(type_off, type_len)?;
        btf.strs = section(str_off, str_len)?;
        let mut pos = types.start;
        while pos < types.end {
            let id = btf.types.len();
            let [name_off, info, size_or_type] = btf.words(pos)?;
            let (kind, vlen) = ((info >> 24 & 0x1f) as u8, info & 0xffff);
            let extra = match kind {
                INT | 14 | 17 => 4, // + VAR, DECL_TAG
                ARRAY => 12,
                STRUCT | UNION | 15 | 19 => 12 * vlen as usize, // + DATASEC, ENUM64
                6 | 13 => 8 * vlen as usize,                    // ENUM, FUNC_PROTO
                PTR | 7..=12 | 16 | 18 => 0,                    // FWD, modifiers, FUNC, FLOAT, TYPE_TAG
                _ => bail!("BTF type {id}: unknown kind {kind}"),
            };
            let data = pos + 12;
            pos = data + extra;
            ensure!(pos <= types.end, "BTF type {id} (kind {kind}) truncated");
            btf.types.push(Type { kind, kind_flag: info >> 31 == 1, vlen, name_off, size_or_type, data });
        }
        Ok(btf)
    }

    /// Resolves `path` (dot-separated, anonymous struct/union members skipped) inside struct
    /// `struct_name`. Bitfields and sub-byte offsets are refused: programs read whole bytes.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member> {
        let found = self.lookup(struct_name, path);
        found.map_err(|e| anyhow!("BTF: struct {struct_name}, member path {path:?}: {e:#}"))
    }

    fn lookup(&self, struct_name: &str, path: &str) -> Result<Member> {
        let is_it = |t: &Type| t.kind == STRUCT && self.name(t.name_off).ok() == Some(struct_name);
        let sid = self.types.iter().position(is_it);
        let mut cur = sid.with_context(|| format!("no struct {struct_name} in BTF"))? as u32;
        let mut bits = 0;
        for comp in path.split('.') {
            ensure!(!comp.is_empty(), "empty path component");
            let parent = self.name(self.strip(cur)?.name_off).unwrap_or_default();
            let hit = self.find(cur, comp, 0)?;
            let (off, bitfield, ty) = hit.with_context(|| format!("no {comp:?} in {parent:?}"))?;
            let int_bitfield = self.is_int_bitfield(ty)?;
            ensure!(bitfield == 0 && !int_bitfield, "{comp:?} is a bitfield");
            ensure!(off % 8 == 0, "{comp:?} not byte-aligned: bit {off}");
            (bits, cur) = (bits + off, ty);
        }
        let offset = u32::try_from(bits / 8).context("offset overflows u32")?;
        let size = self.size_of(cur, 0)?;
        Ok(Member { offset, size })
    }

    /// `N` consecutive little-endian u32 at byte `at`, or an error if the blob ends first.
    fn words<const N: usize>(&self, at: usize) -> Result<[u32; N]> {
        let mut w = [0; N];
        for (i, v) in w.iter_mut().enumerate() {
            let b = self.blob.get(at + 4 * i..at + 4 * i + 4);
            let b = b.with_context(|| format!("BTF truncated at byte {}", at + 4 * i))?;
            *v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(w)
    }

    fn name(&self, off: u32) -> Result<&str> {
        let tail = self.blob.get(self.strs.start + off as usize..self.strs.end);
        let end = tail.and_then(|t| t.iter().position(|&c| c == 0));
        let name = tail.zip(end).map(|(t, end)| &t[..end]);
        let name = name.with_context(|| format!("bad BTF name offset {off}"))?;
        std::str::from_utf8(name).with_context(|| format!("BTF name at {off} is not UTF-8"))
    }

    /// Type `id` with typedef/const/volatile/restrict/type_tag skipped: they do not change layout.
    fn strip(&self, mut id: u32) -> Result<Type> {
        for _ in 0..MAX_DEPTH {
            let t = self.types.get(id as usize);
            let t = *t.with_context(|| format!("BTF type id {id} out of range"))?;
            match t.kind {
                TYPEDEF..=11 | 18 => id = t.size_or_type,
                _ => return Ok(t),
            }
        }
        bail!("BTF modifier chain too long (cycle?) at type {id}")
    }

    /// Member `name` of struct/union `sid`, also inside anonymous struct/union members (whose
    /// offsets add up): (bit offset, bitfield size, type id).
    fn find(&self, sid: u32, name: &str, depth: u32) -> Result<Option<(u64, u32, u32)>> {
        ensure!(depth < MAX_DEPTH, "anonymous nesting too deep");
        let t = self.strip(sid)?;
        ensure!(matches!(t.kind, STRUCT | UNION), "{name:?} in a non-struct");
        for i in 0..t.vlen as usize {
            let [name_off, ty, off] = self.words(t.data + 12 * i)?;
            let bitfield = if t.kind_flag { off >> 24 } else { 0 };
            let bits = u64::from(if t.kind_flag { off & 0xff_ffff } else { off });
            if name_off != 0 && self.name(name_off)? == name {
                return Ok(Some((bits, bitfield, ty)));
            } else if name_off == 0
                && matches!(self.strip(ty)?.kind, STRUCT | UNION)
                && let Some((inner, bitfield, ty)) = self.find(ty, name, depth + 1)?
            {
                return Ok(Some((bits + inner, bitfield, ty)));
            }
        }
        Ok(None)
    }

    /// Old-style (no kind_flag) bitfields are INTs with a partial bit width or a bit offset.
    fn is_int_bitfield(&self, id: u32) -> Result<bool> {
        let t = self.strip(id)?;
        if t.kind != INT {
            return Ok(false);
        }
        let [enc] = self.words(t.data)?;
        let bits = u64::from(t.size_or_type) * 8;
        Ok(enc >> 16 & 0xff != 0 || u64::from(enc & 0xff) != bits)
    }

    fn size_of(&self, id: u32, depth: u32) -> Result<u32> {
        ensure!(depth < MAX_DEPTH, "array nesting too deep (cycle?)");
        let t = self.strip(id)?;
        match t.kind {
            INT | STRUCT | UNION | 6 | 16 | 19 => Ok(t.size_or_type), // + ENUM, FLOAT, ENUM64
            PTR => Ok(8),                                             // traceo only runs on 64-bit kernels
            ARRAY => {
                let [elem, _, n] = self.words(t.data)?;
                let size = self.size_of(elem, depth + 1)?.checked_mul(n);
                size.with_context(|| format!("array type {id} too large"))
            }
            k => bail!("BTF type {id} (kind {k}) has no size"),
        }
    }
}

/// The offsets traceo's kernel programs need, each checked against its expected size so that a
/// layout change the programs were not written for fails at load instead of reading junk.
pub fn kernel_offsets(btf: &Btf) -> Result<traceo_ebpf_common::KernelOffsets> {
    let f = |field: &str, spec: &str, size: u32| -> Result<u64> {
        let (st, path) = spec.split_once('.').unwrap_or_default();
        let m = btf.member(st, path)?;
        let got = m.size;
        ensure!(got == size, "{field}: {spec} has {got} bytes, not {size}");
        Ok(m.offset.into())
    };
    Ok(traceo_ebpf_common::KernelOffsets {
        task_files: f("task_files", "task_struct.files", 8)?,
        files_fdt: f("files_fdt", "files_struct.fdt", 8)?,
        fdt_max_fds: f("fdt_max_fds", "fdtable.max_fds", 4)?,
        fdt_fd: f("fdt_fd", "fdtable.fd", 8)?,
        file_private_data: f("file_private_data", "file.private_data", 8)?,
        file_inode: f("file_inode", "file.f_inode", 8)?,
        inode_mode: f("inode_mode", "inode.i_mode", 2)?,
        inode_ino: f("inode_ino", "inode.i_ino", 8)?,
        socket_sk: f("socket_sk", "socket.sk", 8)?,
        sk_family: f("sk_family", "sock.__sk_common.skc_family", 2)?,
        sk_daddr: f("sk_daddr", "sock.__sk_common.skc_daddr", 4)?,
        sk_rcv_saddr: f("sk_rcv_saddr", "sock.__sk_common.skc_rcv_saddr", 4)?,
        sk_dport: f("sk_dport", "sock.__sk_common.skc_dport", 2)?,
        sk_num: f("sk_num", "sock.__sk_common.skc_num", 2)?,
        sk_v6_daddr: f("sk_v6_daddr", "sock.__sk_common.skc_v6_daddr", 16)?,
        sk_v6_rcv_saddr: f("sk_v6_rcv_saddr", "sock.__sk_common.skc_v6_rcv_saddr", 16)?,
        sk_type: f("sk_type", "sock.sk_type", 2)?,
        task_fsbase: f("task_fsbase", "task_struct.thread.fsbase", 8)?,
        tcp_write_seq: f("tcp_write_seq", "tcp_sock.write_seq", 4)?,
        tcp_copied_seq: f("tcp_copied_seq", "tcp_sock.copied_seq", 4)?,
        // Optional: a bitfield before 5.6 (no MPTCP then, so the check is not needed).
        sk_protocol: f("sk_protocol", "sock.sk_protocol", 2).unwrap_or(0),
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small BTF blob: int, int*, typedef, `struct outer` (kind_flag set) with an anonymous union
    /// holding an anonymous struct, a bitfield, a misaligned member; int[4]; `struct wrap`.
    fn sample() -> Vec<u8> {
        const S: &str = "\0int\0myint\0outer\0wrap\0a\0x\0y\0raw\0flags\0odd\0p\0pad\0o\0arr\0";
        let n = |s: &str| S.find(&format!("\0{s}\0")).map_or(0, |i| i as u32 + 1);
        let info = |kind: u8, kflag: u32, vlen: u32| u32::from(kind) << 24 | kflag << 31 | vlen;
        #[rustfmt::skip]
        let types = [
            n("int"), info(INT, 0, 0), 4, 32,                               // 1
            0, info(PTR, 0, 0), 1,                                          // 2: int *
            n("myint"), info(TYPEDEF, 0, 0), 1,                             // 3
            0, info(STRUCT, 0, 2), 8, n("x"), 1, 0, n("y"), 3, 32,          // 4: anonymous
            0, info(UNION, 0, 2), 8, 0, 4, 0, n("raw"), 2, 0,               // 5: anonymous
            n("outer"), info(STRUCT, 1, 5), 32, n("a"), 1, 0, 0, 5, 64,     // 6
            n("flags"), 1, 3 << 24 | 128, n("odd"), 1, 132, n("p"), 2, 192,
            0, info(ARRAY, 0, 0), 0, 1, 1, 4,                               // 7: int[4]
            n("wrap"), info(STRUCT, 0, 3), 48, n("pad"), 1, 0, n("o"), 6, 64, n("arr"), 7, 256,
        ];
        let tl = types.len() as u32 * 4;
        let head = [0x0001_eb9f, 24, 0, tl, tl, S.len() as u32];
        let words = head.iter().chain(&types).flat_map(|w| w.to_le_bytes());
        words.chain(S.bytes()).collect()
    }

    #[test]
    fn synthetic_blob() {
        let btf = Btf::parse(&sample()).expect("parse sample");
        for (s, p, offset, size) in [
            ("outer", "x", 8, 4),  // anonymous union + anonymous struct offsets add up
            ("outer", "y", 12, 4), // typedef skipped
            ("outer", "raw", 8, 8),
            ("wrap", "o.y", 20, 4),
            ("wrap", "arr", 32, 16),
        ] {
            let m = btf.member(s, p).unwrap_or_else(|e| panic!("{s}.{p}: {e}"));
            assert_eq!(m, Member { offset, size }, "{s}.{p}");
        }
        for (s, p, want) in [
            ("outer", "flags", "bitfield"),
            ("outer", "odd", "byte-aligned"),
            ("outer", "nope", "no \"nope\" in \"outer\""),
            ("nostruct", "x", "no struct nostruct"),
            ("wrap", "pad.x", "non-struct"),
            ("wrap", "o..x", "empty"),
        ] {
            let e = btf.member(s, p).expect_err(p).to_string();
            assert!(e.contains(want) && e.contains(p), "{want}: {e}");
        }
    }

    #[test]
    fn bad_blobs_error_without_panic() {
        let blob = sample();
        for n in 0..blob.len() {
            assert!(Btf::parse(&blob[..n]).is_err(), "truncated to {n} bytes");
        }
        let mut bad = blob.clone();
        bad[24 + 7] = 20; // kind byte of type 1
        let e = Btf::parse(&bad).err().expect("kind 20 should fail");
        assert!(e.to_string().contains("unknown kind 20"), "{e}");
        for (i, v) in (0..blob.len()).flat_map(|i| [(i, 0), (i, 0x13), (i, 0x7f), (i, 0xff)]) {
            let mut b = blob.clone();
            b[i] = v;
            if let Ok(btf) = Btf::parse(&b) {
                for p in ["o.y", "o.x", "arr", "o.odd", "o.flags"] {
                    _ = btf.member("wrap", p);
                }
            }
        }
    }

    #[test]
    fn running_kernel() {
        if !std::path::Path::new(SYS_PATH).exists() {
            return eprintln!("skipping: {SYS_PATH} absent");
        }
        let t = std::time::Instant::now();
        let btf = Btf::from_sys_fs().unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("parsed {} BTF types in {:?}", btf.types.len(), t.elapsed());
        let o = kernel_offsets(&btf).unwrap_or_else(|e| panic!("{e:#}"));
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if !release.starts_with("6.18") {
            return eprintln!("kernel {release:?} is not 6.18: only kernel_offsets checked");
        }
        let got = [o.task_files, o.sk_daddr, o.sk_rcv_saddr, o.sk_dport];
        assert_eq!(got, [1824, 0, 4, 12], "{o:?}");
        let got = [o.sk_num, o.sk_family, o.sk_v6_daddr, o.inode_ino];
        assert_eq!(got, [14, 16, 56, 64], "{o:?}");
    }
}
