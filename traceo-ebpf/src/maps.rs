//! Every map the programs share, with its bound.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use traceo_ebpf_common::{DataEvent, ENTRY_SLOTS, MAX_CAPTURE, PID_FLAGS_BLOCK, RuntimeProc, stat};

/// All events, to the agent. The agent sets its size at load (`--ring-buffer-mib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Waking the agent for every event costs more than the event (an IPI and a wake-up, a VM
/// exit on virtual machines): events are submitted silently, the agent polls every 250 ms
/// (`source::POLL`), and a wake-up is forced only once a quarter of the ring is waiting
/// (1 MiB of the default 4): the rest absorbs what comes while the agent wakes and drains.
#[inline(always)]
fn wakeup_bytes() -> u64 {
    crate::globals::setting!(ring_bytes) as u64 / 4
}

/// Flags for submitting an event: wake the agent only past [`wakeup_bytes`] of backlog.
#[inline(always)]
pub fn submit_flags() -> u64 {
    submit_flags_for(EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64))
}

/// [`submit_flags`] when the caller already queried the bytes `waiting`.
#[inline(always)]
pub fn submit_flags_for(waiting: u64) -> u64 {
    if waiting >= wakeup_bytes() {
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64
    } else {
        aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64
    }
}

/// Connections that lost a data event to a full ring buffer (key: conn_id): their next
/// emitted data event carries `AFTER_LOSS`, so the agent resynchronises instead of pairing
/// what follows with the wrong messages. An LRU: a connection that never sends again leaves
/// its entry behind.
#[map]
pub static LOSSY_CONNS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Set to 1 once any data event was lost: until then no event pays the `LOSSY_CONNS` lookup.
#[map]
pub static LOSS_SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters indexed by `traceo_ebpf_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Traced processes: one byte per pid, 0 when untraced, else the service index + 1. The
/// first check of every probe: an array lookup is inlined by the verifier, so an untraced
/// process pays a few nanoseconds, and a traced one needs no hash lookup either. Sized by
/// the agent from pid_max; written by the agent from its selectors and, for forked children
/// and exits, by the process probes. Every writer stores single bytes: the agent writes
/// through a shared mapping of the array (`BPF_F_MMAPABLE`), never a whole block through
/// the map-update syscall, which would undo a probe's concurrent store to a neighbouring
/// pid (a forked child's flag lost while the agent untraces an exited sibling).
#[map]
pub static PID_FLAGS: Array<[u8; PID_FLAGS_BLOCK]> = Array::with_max_entries(1, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// What the exit program last answered on this CPU (`filter::exit_traced`): for the task
/// whose saved user registers are at `regs` (the top of its kernel stack: one address per
/// live task), `answer` packs the flags generation it was computed at (high 32 bits), a
/// state (bits 16-23: `exit_memo::*`) and the service (low 16); `ids` the pid (high 32) and
/// thread id (low 32).
#[repr(C)]
pub struct ExitMemo {
    pub regs: u64,
    pub answer: u64,
    pub ids: u64,
}

pub mod exit_memo {
    /// Nothing remembered on this CPU yet.
    pub const EMPTY: u64 = 0;
    pub const UNTRACED: u64 = 1;
    pub const TRACED: u64 = 2;
}

#[map]
pub static EXIT_MEMO: PerCpuArray<ExitMemo> = PerCpuArray::with_max_entries(1, 0);

/// Changes whenever an `EXIT_MEMO` answer may have gone wrong: a flag write that can change
/// a live task's answer (the agent's, a traced process's leader exiting), any exec (a
/// thread that execs takes the pid as its thread id) and any fork (a new task may get a
/// dead task's kernel stack, and so its `regs` address). An answer computed at an older
/// generation is not used. Written by the agent through a shared mapping, by the probes
/// with atomic adds.
#[map]
pub static FLAGS_GENERATION: Array<u64> = Array::with_max_entries(1, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Sockets already announced with a CONN_OPEN event (key: inode number).
#[map]
pub static KNOWN_CONNS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Sockets this CPU announced or found announced lately, at `ino % RECENT_CONNS`: syscalls on
/// the connections a server is busy with skip the `KNOWN_CONNS` lookup. Inode numbers are
/// not reused soon, so a stale entry (its socket closed) can only cost a lookup, never hide
/// a new socket.
#[map]
pub static RECENT_CONNS: PerCpuArray<[u64; RECENT_CONNS_LEN]> = PerCpuArray::with_max_entries(1, 0);

pub const RECENT_CONNS_LEN: usize = 64;

/// (tid, entry time) of the egress syscall each thread is in, at `tid % ENTRY_SLOTS`: when a
/// client began sending is what orders its request before the server's read of it (their
/// exits can come in either order). An array slot is a plain store where a hash insert and
/// delete cost hundreds of nanoseconds; the tid in it tells a slot taken by another thread.
#[map]
pub static EGRESS_ENTRY: Array<[u64; 2]> = Array::with_max_entries(ENTRY_SLOTS, 0);

/// Arguments of an OpenSSL read/write in flight, from its uprobe to its uretprobe (key: tid).
/// An LRU: a thread that dies inside an SSL call leaves its entry behind, and the uprobe trap
/// costs far more than the LRU's bookkeeping.
#[map]
pub static TLS_ARGS: LruHashMap<u32, SyscallArgs> = LruHashMap::with_max_entries(16384, 0);

/// Where a data event is built: too big for the 512-byte stack. The slack after the payload
/// lets the verifier accept copies whose bounds it only knows loosely: offsets and lengths
/// are each masked below 2 * MAX_CAPTURE (LLVM may drop a tighter mask it proves redundant
/// from facts the verifier does not track), so payload + slack spans 4 * MAX_CAPTURE.
/// One slot per possible CPU (the agent sets the size at load), indexed by the current CPU:
/// a per-CPU map would be simpler, but its values are capped at 32 KiB. Tracepoint programs
/// cannot migrate while they run, so a CPU's slot has one user at a time.
#[map]
pub static DATA_SCRATCH: Array<DataScratch> = Array::with_max_entries(1, 0);

#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub _slack: [u8; 3 * MAX_CAPTURE],
}

/// What `emit` needs of a call beside its result (an OpenSSL uprobe parks it for its
/// uretprobe).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub conn_id: u64,
    /// The user buffer, or the iovec array of a vectored call.
    pub buf: u64,
    /// The buffer length, or the iovec count of a vectored call.
    pub count: u64,
    pub enter_ns: u64,
    pub fd: i32,
    /// Service index of the traced process (copied into the events).
    pub service: u32,
    /// `traceo_ebpf_common::syscall` id, or `CONNECT` for connect.
    pub syscall: u16,
    /// 1 when `buf` points at an iovec array.
    pub vectored: u8,
    /// 1 when `tcp_seq` was read (see `DataEvent::tcp_seq`).
    pub has_seq: u8,
    pub tcp_seq: u32,
    /// The thread's runtime context at enter (see `DataEvent::task_ctx`).
    pub task_ctx: u64,
}

/// Traced processes whose runtime the programs read, and how (key: tgid). Written by the
/// agent once it has looked at the process (for CPython: measured its executable).
#[map]
pub static RUNTIME_PROCS: HashMap<u32, RuntimeProc> = HashMap::with_max_entries(4096, 0);

/// A context a runtime probe set for the thread while it runs (key: tid): nginx's
/// `ngx_http_upstream_init` sets the client connection it serves, its return clears it.
#[map]
pub static THREAD_CTX: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// (task object, creating context, entry time) of a `Task.__init__` in flight, for its return
/// probe. Key: (tid, the stack pointer the call returns with), so calls nested on one thread
/// (an eager task, 3.12+, whose first step runs inside `__init__` and creates tasks) each find
/// their own. An LRU: a thread that dies inside the call leaves its entry behind.
#[map]
pub static TASK_INIT: LruHashMap<[u64; 2], [u64; 3]> = LruHashMap::with_max_entries(4096, 0);

/// Log files selected by `--log-file` (key: inode number; the agent keeps it in step with
/// the files matching the glob). Looked up only when that option is on.
#[map]
pub static LOG_FILES: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// Add one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}
