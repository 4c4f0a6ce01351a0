// Open3D op timings: uprobe + uretprobe per probed function, for one process.
//
// Each thread keeps a stack of its open probed calls (entry time, op id and
// the stack pointer at entry). A return is matched to the entry whose
// sp == return sp - 8 (x86-64 `ret` pops the return address; the top 8
// frames are searched), so nested and
// recursive calls pair correctly and a call that never returned (a C++
// exception unwound through it) is discarded instead of skewing later pairs.
//
// Compiled by bcc with -DPERFD_TGID=<target pid>; the Python side appends one
// `int enter_<op id>(struct pt_regs *ctx)` wrapper per op (PERFD_ENTRY below).
//
// With -DPERFD_PYFRAMES (and the PY_* offsets of the target's CPython, from
// perfd.cpython.layouts.frame_walk) each entry also walks the calling
// thread's Python frames and reports the first frame's first local (`self`
// of a method) that perfd listed in `py_owners` — the DAG node whose code
// called the op, read at the moment of the call rather than guessed from
// samples taken around it. perfd fills `py_tstates` (thread id -> its
// PyThreadState) and `py_owners` (node object addresses) from its sampler.
// Going on outward from that frame, the first of the owner's own frames whose
// code is in `py_point_slots` has its points local (the node call's input)
// counted as the op begins — an ndarray's first dimension, or a list's or
// tuple's length (`py_point_types` says which type is which) — so a node
// call too short for perfd's samples still reports its points.

#include <uapi/linux/ptrace.h>

#define MAX_DEPTH 16

struct frame {
    u64 sp;
    u64 start_ns;
    u64 owner;
    u64 points;
    u32 op;
};

struct thread_stack {
    u32 depth;
    struct frame frames[MAX_DEPTH];
};

struct op_event {
    u32 tid;
    u32 op;
    u32 depth;
    u32 pad;
    u64 start_ns;
    u64 duration_ns;
    u64 owner;  // py_owners entry found in the thread's Python frames at entry, else 0
    u64 points; // 1 + the owner's points count at entry; 0: not read
};

enum counter {
    UNMATCHED_RETURNS = 0,   // return with no entry seen (attached mid-call)
    ABANDONED_ENTRIES = 1,   // entry whose return never came
    OVERFLOWED_ENTRIES = 2,  // deeper than MAX_DEPTH, not timed
    LOST_EVENTS = 3,         // ring buffer full
    NUM_COUNTERS = 4,
};

// 2 MiB: ~40k calls between two reads (perfd reads every 20 ms).
BPF_RINGBUF_OUTPUT(events, 512);
BPF_HASH(stacks, u32, struct thread_stack, 4096);
BPF_PERCPU_ARRAY(empty_stack, struct thread_stack, 1);
BPF_ARRAY(counters, u64, NUM_COUNTERS);

static __always_inline void count_n(u32 which, u64 n) {
    u64 *c = counters.lookup(&which);
    if (c)
        __sync_fetch_and_add(c, n);
}

static __always_inline void count(u32 which) {
    count_n(which, 1);
}

#define POP_STALE                                                         \
    if (d > 0 && st->frames[(d - 1) & (MAX_DEPTH - 1)].sp <= sp) {       \
        d--;                                                              \
        count(ABANDONED_ENTRIES);                                         \
    }

// What the entry probe found in the calling thread's Python frames.
struct py_found {
    u64 owner;
    u64 points;  // 1 + count; 0: none
};

#ifdef PERFD_PYFRAMES
#define PY_MAX_FRAMES 12   // frames searched for an owner
#define PY_POINT_FRAMES 4  // the owner's frame and its callers searched for its points

BPF_HASH(py_tstates, u32, u64, 4096);
BPF_HASH(py_owners, u64, u8, 4096);
BPF_HASH(py_point_slots, u64, u32, 1024);  // code object -> index of its points local
BPF_HASH(py_point_types, u64, u32, 16);    // type object -> SIZED_NDARRAY, or anything else: ob_size

static __always_inline u64 read_ptr(u64 addr) {
    u64 v = 0;
    if (bpf_probe_read_user(&v, sizeof(v), (void *)addr) != 0)
        return 0;
    return v;
}

// 1 + len(obj) for the types perfd listed, else 0.
static __always_inline u64 count_points(u64 obj) {
    u64 type = read_ptr(obj + PY_OBJECT_TYPE);
    u32 *kind = py_point_types.lookup(&type);
    if (!kind)
        return 0;
    s64 n = 0;
    if (*kind == SIZED_NDARRAY) {
        int nd = -1;
        if (bpf_probe_read_user(&nd, sizeof(nd), (void *)(obj + NP_ND)) != 0 || nd < 0)
            return 0;
        if (nd == 0)
            return 1;  // a 0-d array: no first dimension, counted as 0 (as perfd's reader does)
        u64 dims = read_ptr(obj + NP_DIMENSIONS);
        if (!dims || bpf_probe_read_user(&n, sizeof(n), (void *)dims) != 0)
            return 0;
    } else if (bpf_probe_read_user(&n, sizeof(n), (void *)(obj + PY_VAR_SIZE)) != 0) {
        return 0;
    }
    return n < 0 ? 0 : (u64)n + 1;
}

// Innermost frame first; every read may fail (a thread exiting, a frame being
// popped) and then the answer is simply "no owner" or "no points".
static __always_inline void py_find(u32 tid, struct py_found *out) {
    u64 *ts = py_tstates.lookup(&tid);
    if (!ts)
        return;
    u64 f = read_ptr(*ts + PY_TSTATE_FRAME1);
#if PY_TSTATE_FRAME2 >= 0
    if (f)
        f = read_ptr(f + PY_TSTATE_FRAME2);
#endif
    u64 owner = 0;
    int after = 0;  // frames looked at since the owner's
    for (int i = 0; i < PY_MAX_FRAMES + PY_POINT_FRAMES; i++) {
        if (!f || (!owner && i >= PY_MAX_FRAMES) || after >= PY_POINT_FRAMES)
            break;
        if (owner)
            after++;
        u8 kind = 0;
        bpf_probe_read_user(&kind, 1, (void *)(f + PY_FRAME_OWNER));
        if ((int)kind != PY_OWNER_CSTACK) {
            u64 local0 = read_ptr(f + PY_FRAME_LOCALSPLUS);
            if (!owner && local0 && py_owners.lookup(&local0)) {
                owner = local0;
                after = 1;
            }
            if (owner && local0 == owner) {
                u64 code = read_ptr(f + PY_FRAME_CODE);
                u32 *slot = py_point_slots.lookup(&code);
                if (slot) {
                    u64 obj = read_ptr(f + PY_FRAME_LOCALSPLUS + 8 * (u64)(*slot & 0xffff));
                    if (obj)
                        out->points = count_points(obj);
                    break;
                }
            }
        }
        f = read_ptr(f + PY_FRAME_PREVIOUS);
    }
    out->owner = owner;
}
#else
static __always_inline void py_find(u32 tid, struct py_found *out) {}
#endif

static __always_inline int on_enter(struct pt_regs *ctx, u32 op) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PERFD_TGID)
        return 0;
    u32 tid = (u32)id;
    u32 zero = 0;
    struct thread_stack *empty = empty_stack.lookup(&zero);
    if (!empty)
        return 0;
    struct thread_stack *st = stacks.lookup_or_try_init(&tid, empty);
    if (!st)
        return 0;
    u64 sp = PT_REGS_SP(ctx);
    u32 d = st->depth;
    if (d > MAX_DEPTH)
        d = MAX_DEPTH;
    // A frame at or below this call's stack pointer cannot be a live caller
    // (stacks grow down): its return was lost (an exception unwound it).
    // Dropping it keeps this call's depth right.
    POP_STALE POP_STALE POP_STALE POP_STALE
    if (d >= MAX_DEPTH) {
        st->depth = d;
        count(OVERFLOWED_ENTRIES);
        return 0;
    }
    u32 slot = d;
    asm volatile("" : "+r"(slot));  // keep the mask the verifier needs
    slot &= MAX_DEPTH - 1;          // (d < MAX_DEPTH here: no-op)
    st->frames[slot].sp = sp;
    st->frames[slot].op = op;
    // Outermost calls only (nested ones are not counted); before the clock,
    // so the walk is not part of the op's time.
    struct py_found found = {};
    if (d == 0)
        py_find(tid, &found);
    st->frames[slot].owner = found.owner;
    st->frames[slot].points = found.points;
    st->frames[slot].start_ns = bpf_ktime_get_ns();
    st->depth = d + 1;
    return 0;
}

// Emit the completed call in frame `i` (k frames above it were abandoned).
static __always_inline int complete(struct thread_stack *st, u32 tid, u32 i, u32 k, u64 now) {
    struct frame *f = &st->frames[i & (MAX_DEPTH - 1)];
    struct op_event ev = {};
    ev.tid = tid;
    ev.op = f->op;
    ev.depth = i;
    ev.start_ns = f->start_ns;
    ev.duration_ns = now - f->start_ns;
    ev.owner = f->owner;
    ev.points = f->points;
    if (k > 0)
        count_n(ABANDONED_ENTRIES, k);
    st->depth = i;
    if (i == 0)
        stacks.delete(&tid);
    // No wakeup: perfd reads on its own timer, so it never preempts the
    // target's thread right after the call it just timed.
    if (events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) != 0)
        count(LOST_EVENTS);
    return 0;
}

// Frame k below the top, if it is the one returning. Straight-line code (no
// loop) keeps the verifier's work trivial on every kernel.
#define TRY_FRAME(k)                                                      \
    if (depth > (k)) {                                                    \
        u32 i = (depth - 1 - (k)) & (MAX_DEPTH - 1);                      \
        if (st->frames[i].sp == want)                                     \
            return complete(st, tid, i, (k), now);                        \
    }

static __always_inline int handle_return(struct pt_regs *ctx) {
    u64 now = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PERFD_TGID)
        return 0;
    u32 tid = (u32)id;
    struct thread_stack *st = stacks.lookup(&tid);
    if (!st) {
        count(UNMATCHED_RETURNS);
        return 0;
    }
    u64 want = PT_REGS_SP(ctx) - 8;
    u32 depth = st->depth;
    if (depth > MAX_DEPTH)
        depth = MAX_DEPTH;
    TRY_FRAME(0) TRY_FRAME(1) TRY_FRAME(2) TRY_FRAME(3)
    TRY_FRAME(4) TRY_FRAME(5) TRY_FRAME(6) TRY_FRAME(7)
    count(UNMATCHED_RETURNS);
    return 0;
}

// Classic perf-event uprobes: one program per op (the op id is baked in).
int on_return(struct pt_regs *ctx) { return handle_return(ctx); }
#define PERFD_ENTRY(op) \
    int enter_##op(struct pt_regs *ctx) { return on_enter(ctx, op); }

// uprobe_multi links (Linux >= 6.6): one program for every op, which learns
// the op id from the cookie its offset was attached with. Loaded under their
// own names with the multi attach type, never attached as classic uprobes.
int enter_multi(struct pt_regs *ctx) { return on_enter(ctx, (u32)bpf_get_attach_cookie(ctx)); }
int on_return_multi(struct pt_regs *ctx) { return handle_return(ctx); }
