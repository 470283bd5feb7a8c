# Run by traceo-agent with a traced process's own interpreter (`-I -S -c`), once per
# executable: finds where that build keeps what the kernel programs read at each socket
# syscall, by looking for known values in its own memory (no debug symbols needed).
#   tstate_slot: offset from the thread pointer (fs base) of the pthread-specific slot that
#                holds the thread's PyThreadState (the GIL-state TSS key; it stays set while
#                the GIL is released around a syscall, unlike the 3.12+ thread-local).
#   thread_id:   offset of PyThreadState.thread_id (== pthread_self() == fs base: a check).
#   context:     offset of PyThreadState.context (the contextvars.Context being run).
#   task_context: offset of the C Task's task_context (each asyncio task runs in its own).
#   context_entered: offset of PyContext.ctx_entered (an int: 1 inside Context.run, 0 for a
#                thread's base context).
# Prints one JSON object; errors go to stderr with a non-zero exit.
import asyncio, contextvars, ctypes, json, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
mem = open("/proc/self/mem", "rb", buffering=0)


def read(addr, n):
    mem.seek(addr)
    return mem.read(n)


def words(addr, n):
    data = read(addr, n)
    return [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - 7, 8)]


def offsets_of(value, addr, n):
    return [i * 8 for i, w in enumerate(words(addr, n)) if w == value]


def is_context(addr):
    try:
        return words(addr + 8, 8)[0] == id(contextvars.Context)
    except OSError:
        return False


def fs_base():
    out = ctypes.c_uint64()
    if libc.syscall(158, 0x1003, ctypes.byref(out)) != 0:  # arch_prctl(ARCH_GET_FS)
        sys.exit("arch_prctl(ARCH_GET_FS) failed")
    return out.value


def main():
    if sys.implementation.name != "cpython":
        sys.exit("not CPython")
    get = ctypes.pythonapi.PyThreadState_Get
    get.restype = ctypes.c_void_p
    tstate, fs = get(), fs_base()
    # The pthread-specific block sits after the thread pointer; a thread-local copy (3.12+)
    # sits before it and is cleared while the GIL is released, so only look after.
    slots = offsets_of(tstate, fs, 0x1000)
    if not slots:
        sys.exit("no pthread-specific slot holds the thread state")
    tid = offsets_of(fs, tstate, 0x400)
    if threading.get_ident() != fs or not tid:
        sys.exit("thread ident is not the thread pointer")
    ctx_offs = []
    for _ in range(2):
        ctx = contextvars.copy_context()
        ctx_offs.append(set(ctx.run(lambda: offsets_of(id(ctx), tstate, 0x400))))
    context = sorted(ctx_offs[0] & ctx_offs[1])
    if not context:
        sys.exit("PyThreadState.context not found")
    # The one 4-byte field of a fresh copy that is 0 outside its run and 1 inside.
    ctx = contextvars.copy_context()
    outside = read(id(ctx), 0x40)
    inside = ctx.run(lambda: read(id(ctx), 0x40))
    entered = [i for i in range(16, 0x40, 4)
               if outside[i:i + 4] == b"\0\0\0\0" and inside[i:i + 4] == b"\1\0\0\0"]

    async def probe():
        # A fresh task holds one Context: its own (no callbacks yet).
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        found = [off for off, w in zip(range(0, 0x200, 8), words(id(task), 0x200))
                 if w > 4096 and w != id(task) and is_context(w)]
        await task
        return found

    task_context = asyncio.run(probe())
    print(json.dumps({
        "version": "%d.%d" % sys.version_info[:2],
        "tstate_slot": slots[0],
        "thread_id": tid[0],
        "context": context[0],
        "task_context": task_context[0] if task_context else None,
        "context_entered": entered[0] if len(entered) == 1 else None,
        "asyncio_module": getattr(sys.modules.get("_asyncio"), "__file__", None),
        "contextvars_module": getattr(sys.modules.get("_contextvars"), "__file__", None),
    }))


main()
