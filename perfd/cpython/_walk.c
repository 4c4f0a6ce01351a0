/* Native core of perfd's stack reader.
 *
 * One sample of a live CPython's thread stacks: the multi-part reads
 * (process_vm_readv), the check that the thread list did not change, the walk
 * of every thread's frame chain through its datastack chunks and the heap
 * frames of coroutines, and the byte checks that catch a torn read. Python
 * (perfd/cpython/stacks.py) keeps what is rare or needs objects: listing the
 * threads, decoding a code object it has not seen, building frame records.
 *
 * Why C: in Python the same walk and checks cost ~3/4 of a sample's CPU;
 * here they cost a few microseconds, so a sample costs about its reads.
 *
 * And most reads are left out: a thread runs Python only while it holds the
 * GIL, so a thread that cannot have taken it since its last sample has the
 * same stack and is not read at all. The GIL's holder and its count of
 * hand-overs, read first in each sample, say which threads those are.
 *
 * Everything read is untrusted: the target runs on while we read it, and a
 * pointer may be garbage. Every offset into a buffer is bounds-checked; every
 * loop and allocation is capped. Loaded with ctypes (no Python headers), so
 * one build serves every target version: offsets come in a pw_layout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PW_ABI 7

#define MAX_DEPTH 4096
#define MAX_THREADS 1024
#define FRAME_READ 80 /* a frame's header through localsplus[0] */
#define CHUNK_SLACK 512 /* past the datastack top read a moment before: frames pushed since */
#define CHUNK_MAX (1u << 20)
#define MAX_PLAN 32
#define HEAD_MAX 256
#define HEAP_KEEP 64 /* coroutine frames kept per thread, to read with its chunks */
#define HEAP_AGE 64 /* ... until it has been walked this many times without them */
#define CODES_MAX 65536
#define LAST_CODES_MAX 8192
#define CHUNK_SIZES_MAX 4096
#define ARENA_MAX (256u << 20)
#define IOV_BATCH 1024

enum { PW_OK = 0, PW_RELIST = 1, PW_TORN = 2, PW_NEED_CODES = 3 };
enum { KIND_UNKNOWN = 0, KIND_CODE = 1, KIND_NONE = 2 }; /* what Python said a code address holds */
/* SAME: frames and first locals as the thread's last sample (none sent); FIRSTS_KEPT: only
   the new frames' first locals are sent, the kept frames' are as last sample */
enum { FLAG_SUSPECT = 1, FLAG_DROPPED = 2, FLAG_SAME = 4, FLAG_FIRSTS_KEPT = 8 };

typedef struct { /* offsets in bytes; -1: this version has no such field */
    int64_t tstate_size, tstate_next, tstate_thread_id, tstate_native_thread_id;
    int64_t tstate_cframe, tstate_current_frame, cframe_current_frame, tstate_root_cframe;
    int64_t tstate_datastack_chunk, tstate_datastack_top;
    int64_t chunk_previous, chunk_size, chunk_top, chunk_data;
    int64_t frame_code, frame_previous, frame_instr, frame_owner, frame_is_entry;
    int64_t owner_generator, owner_cstack, owner_frame_object;
    int64_t interp_threads_head, code_head, code_code_adaptive, frame_localsplus;
} pw_layout;

typedef struct { /* what Python reads after pw_decode */
    uint64_t n_threads;
    uint64_t n_words;
    uint64_t *words; /* 6 per thread (tstate, thread id, native id, flags, frames, new frames), then
                        4 per new frame (frame, code, instr, owner), innermost first, threads in order,
                        then the frames' first locals as read with them (a method's self), likewise:
                        none for a thread flagged FLAG_SAME, only the new frames' under
                        FLAG_FIRSTS_KEPT, else every frame's */
    uint64_t cap_words;
    uint64_t n_need;
    uint64_t *need; /* code objects Python has to decode (or re-decode) */
    uint8_t *need_heads; /* their headers as read, code_head bytes each */
    uint64_t reads; /* syscalls this sample */
    uint64_t bytes; /* bytes read this sample */
    uint64_t unread; /* threads not read: they cannot have run since the last sample */
    char msg[200];
} pw_result;

/* ---- a growable buffer and an address map ------------------------------ */

typedef struct { uint8_t *p; size_t len, cap; } arena_t;

static int arena_reserve(arena_t *a, size_t n, size_t *off) {
    if (n > ARENA_MAX || a->len + n > ARENA_MAX) return -1;
    if (a->len + n > a->cap) {
        size_t cap = a->cap ? a->cap : 1 << 16;
        while (cap < a->len + n) cap *= 2;
        uint8_t *p = realloc(a->p, cap);
        if (!p) return -1;
        a->p = p;
        a->cap = cap;
    }
    *off = a->len;
    a->len += n;
    return 0;
}

typedef struct { uint64_t *keys; int64_t *vals; size_t cap, n; } map_t; /* key 0 = empty */

static size_t map_slot(const map_t *m, uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 20) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    return i;
}

static int64_t *map_get(const map_t *m, uint64_t key) {
    if (!m->cap || !key) return NULL;
    size_t i = map_slot(m, key);
    return m->keys[i] ? &m->vals[i] : NULL;
}

static int map_put(map_t *m, uint64_t key, int64_t val) {
    if (!key) return -1;
    if ((m->n + 1) * 2 > m->cap) {
        map_t g = {0};
        g.cap = m->cap ? m->cap * 2 : 64;
        g.keys = calloc(g.cap, sizeof *g.keys);
        g.vals = calloc(g.cap, sizeof *g.vals);
        if (!g.keys || !g.vals) { free(g.keys); free(g.vals); return -1; }
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i]) {
                size_t j = map_slot(&g, m->keys[i]);
                g.keys[j] = m->keys[i];
                g.vals[j] = m->vals[i];
                g.n++;
            }
        free(m->keys);
        free(m->vals);
        *m = g;
    }
    size_t i = map_slot(m, key);
    if (!m->keys[i]) { m->keys[i] = key; m->n++; }
    m->vals[i] = val;
    return 0;
}

static void map_clear(map_t *m) {
    if (m->cap) memset(m->keys, 0, m->cap * sizeof *m->keys);
    m->n = 0;
}

static void map_free(map_t *m) { free(m->keys); free(m->vals); memset(m, 0, sizeof *m); }

#define VEC_PUSH(arr, n, cap, val)                                              \
    do {                                                                        \
        if ((n) == (cap)) {                                                     \
            size_t c_ = (cap) ? (cap) * 2 : 16;                                 \
            void *p_ = realloc((arr), c_ * sizeof *(arr));                      \
            if (!p_) return -ENOMEM;                                            \
            (arr) = p_;                                                         \
            (cap) = c_;                                                         \
        }                                                                       \
        (arr)[(n)++] = (val);                                                   \
    } while (0)

/* ---- state ----------------------------------------------------------------- */

typedef struct { uint64_t addr, len; int64_t off; } part_t; /* off: into the arena, -1 = unread */
typedef struct { uint64_t addr, code, instr, owner; } raw_t;
typedef struct { int64_t off; uint64_t addr; } step_t; /* a walked frame: where its header is in the arena */
typedef struct { uint64_t addr, seen; } heap_t; /* a coroutine frame a thread went through, and at which walk */
typedef struct { int ok; uint64_t holder, switches; } gil_t; /* the main GIL's two words; ok: they were read */

typedef struct {
    /* kept between samples */
    uint64_t tstate;
    uint64_t cframe; /* 3.11/3.12: last C frame seen */
    int n_plan;
    uint64_t plan_addr[MAX_PLAN], plan_len[MAX_PLAN];
    raw_t *prev;
    size_t n_prev, cap_prev;
    uint64_t *prev_first; /* the first locals of the last sample's frames */
    uint64_t prev_tid, prev_ntid; /* a thread state's memory may serve a new thread */
    int prev_clean; /* the last sample of it was neither suspect nor dropped */
    int had_stack; /* -1 unknown */
    /* frames outside its chunks (coroutines') its recent walks went through: the loop
       thread runs one task's chain, then another's, and back */
    heap_t *heap_prev;
    size_t n_heap_prev, cap_heap_prev;
    uint64_t walks;
    /* this sample */
    int64_t tbuf;
    uint64_t tid, ntid, next_frame;
    int n_rng;
    part_t rng[MAX_PLAN];
    step_t *walk; /* the walked frames, innermost first */
    size_t n_walk, cap_walk;
    uint64_t *heap_walk; /* of those, the ones outside its chunks */
    size_t n_heap_walk, cap_heap_walk;
    raw_t *out;
    size_t n_out, cap_out;
    uint64_t *first; /* localsplus[0] of each frame in out, this sample's (not compared) */
    size_t cap_first;
    int done, suspect, broken, dropped;
    int unread; /* not read: it has not held the GIL since its last sample, which stands */
    size_t same; /* outer frames equal to the last sample's */
    int firsts_kept; /* the same frames' first locals are as last sample's too (FLAG_FIRSTS_KEPT) */
    int same_all; /* and nothing else differs either (FLAG_SAME) */
    size_t n_firsts; /* first locals sent: the new frames' (all when not kept, none when the same) */
} thread_t;

typedef struct {
    uint8_t head[HEAD_MAX];
    int32_t kind, firsttraceable;
    uint64_t stamp; /* sample in which Python last (re)decoded it */
} code_t;

typedef struct {
    int pid;
    pw_layout L;
    uint64_t sample_no;
    uint64_t *interps;
    size_t n_interps;
    thread_t *threads;
    size_t n_threads;
    arena_t arena;
    part_t *parts;
    size_t n_parts, cap_parts;
    map_t heap;       /* this sample: heap frame -> arena offset (-1 unreadable) */
    map_t heads;      /* this sample: code -> arena offset of its header (-1 unreadable) */
    map_t used;       /* this sample: codes the frames use -> index in code table (-1: none) */
    map_t code_index; /* kept: code -> index into codes */
    code_t *codes;
    size_t n_codes, cap_codes;
    map_t chunk_sizes;
    /* the main GIL: its holder (a thread state) and switch count, read with every sample */
    uint64_t gil_addr; /* of the holder field; 0: unknown, every thread is read */
    int64_t gil_switch_off; /* the switch count, from the holder field */
    gil_t gil_base; /* as of the last decoded sample, whose stacks stand as of it */
    gil_t gil_now; /* this sample's */
    uint64_t *codes_last;
    size_t n_codes_last, cap_codes_last;
    uint64_t *missing;
    size_t n_missing, cap_missing;
    uint64_t *words, *res_need;
    size_t cap_words, cap_res_need;
    uint8_t *res_heads;
    size_t cap_res_heads;
    int walked; /* pw_walk succeeded; pw_decode may run */
    pw_result res;
} pw_t;

static int torn(pw_t *w, const char *msg, uint64_t addr) {
    snprintf(w->res.msg, sizeof w->res.msg, msg, (unsigned long long)addr);
    return PW_TORN;
}

static uint64_t u64_at(const pw_t *w, int64_t off, int64_t field) {
    uint64_t v;
    memcpy(&v, w->arena.p + off + field, 8);
    return v;
}

/* ---- reads ----------------------------------------------------------------- */

static int push_part(pw_t *w, uint64_t addr, uint64_t len) {
    part_t p = {addr, len, -1};
    VEC_PUSH(w->parts, w->n_parts, w->cap_parts, p);
    return 0;
}

/* Reads parts [from, n_parts) into the arena. An unreadable part is marked and
   skipped; the reads go on after it (the kernel stops a call at the first bad
   part). Returns 0, or -errno when the target cannot be read at all. */
static int read_parts(pw_t *w, size_t from) {
    struct iovec local[IOV_BATCH], remote[IOV_BATCH];
    for (size_t i = from; i < w->n_parts; i++) {
        part_t *p = &w->parts[i];
        size_t off;
        p->off = -1;
        if (!p->len || !p->addr || p->addr >= (1ull << 63) || arena_reserve(&w->arena, p->len, &off)) {
            p->len = 0;
            continue;
        }
        p->off = (int64_t)off;
    }
    size_t i = from;
    while (i < w->n_parts) {
        size_t k = 0, first = i;
        for (; i < w->n_parts && k < IOV_BATCH; i++) {
            part_t *p = &w->parts[i];
            if (p->off < 0) continue;
            local[k].iov_base = w->arena.p + p->off;
            local[k].iov_len = p->len;
            remote[k].iov_base = (void *)(uintptr_t)p->addr;
            remote[k].iov_len = p->len;
            k++;
        }
        if (!k) break;
        w->res.reads++;
        ssize_t got = process_vm_readv(w->pid, local, k, remote, k, 0);
        if (got < 0) {
            if (errno == ESRCH || errno == EPERM || errno == ENOSYS) return -errno;
            got = 0;
        }
        size_t done = 0;
        for (size_t j = first; j < i; j++) {
            part_t *p = &w->parts[j];
            if (p->off < 0) continue;
            if (done + p->len <= (size_t)got) {
                done += p->len;
                w->res.bytes += p->len;
                continue;
            }
            p->off = -1; /* the first part that failed: go on after it */
            i = j + 1;
            break;
        }
    }
    return 0;
}

static int read_one(pw_t *w, uint64_t addr, uint64_t len, int64_t *off) {
    size_t at = w->n_parts;
    int rc = push_part(w, addr, len);
    if (!rc) rc = read_parts(w, at);
    *off = rc ? -1 : w->parts[at].off;
    w->n_parts = at;
    return rc < 0 ? rc : 0;
}

/* ---- lifecycle ------------------------------------------------------------- */

int pw_abi(void) { return PW_ABI; }

pw_t *pw_new(int pid, const pw_layout *L) {
    if (L->code_head <= 8 || L->code_head > HEAD_MAX || L->tstate_size <= 0 || L->tstate_size > 1 << 16)
        return NULL;
    int64_t tfields[] = {L->tstate_next, L->tstate_thread_id, L->tstate_native_thread_id,
                         L->tstate_datastack_chunk, L->tstate_datastack_top,
                         L->tstate_current_frame >= 0 ? L->tstate_current_frame : L->tstate_cframe};
    for (size_t i = 0; i < sizeof tfields / sizeof *tfields; i++)
        if (tfields[i] < 0 || tfields[i] + 8 > L->tstate_size) return NULL;
    int64_t ffields[] = {L->frame_code, L->frame_previous, L->frame_instr};
    for (size_t i = 0; i < 3; i++)
        if (ffields[i] < 0 || ffields[i] + 8 > FRAME_READ) return NULL;
    if (L->frame_owner < 0 || L->frame_owner >= FRAME_READ || L->frame_is_entry >= FRAME_READ) return NULL;
    if (L->frame_localsplus < 0 || L->frame_localsplus + 8 > FRAME_READ) return NULL;
    if (L->chunk_data < 24 || L->chunk_data > 64 || L->chunk_previous + 8 > L->chunk_data ||
        L->chunk_top + 8 > L->chunk_data || L->chunk_size + 8 > L->chunk_data)
        return NULL;
    if (L->tstate_current_frame < 0 && (L->cframe_current_frame < 0 || L->cframe_current_frame + 8 > 16))
        return NULL;
    pw_t *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->pid = pid;
    w->L = *L;
    return w;
}

static void thread_free(thread_t *t) {
    free(t->prev);
    free(t->prev_first);
    free(t->walk);
    free(t->out);
    free(t->first);
    free(t->heap_prev);
    free(t->heap_walk);
}

void pw_free(pw_t *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_threads; i++) thread_free(&w->threads[i]);
    free(w->threads);
    free(w->interps);
    free(w->arena.p);
    free(w->parts);
    map_free(&w->heap);
    map_free(&w->heads);
    map_free(&w->used);
    map_free(&w->code_index);
    map_free(&w->chunk_sizes);
    free(w->codes);
    free(w->codes_last);
    free(w->missing);
    free(w->words);
    free(w->res_need);
    free(w->res_heads);
    free(w);
}

pw_result *pw_result_of(pw_t *w) { return &w->res; }

/* Where the main interpreter's GIL keeps its holder (absolute) and its switch count
   (from there). Without it every thread is read every sample. */
int pw_set_gil(pw_t *w, uint64_t holder_addr, int64_t switch_off) {
    if (holder_addr && (switch_off < 8 || switch_off > 256)) return -EINVAL;
    w->gil_addr = holder_addr;
    w->gil_switch_off = switch_off;
    w->gil_base.ok = 0;
    return 0;
}

/* The thread list as Python read it. State of threads still listed is kept. */
int pw_set_threads(pw_t *w, const uint64_t *interps, size_t n_interps, const uint64_t *tstates, size_t n) {
    if (n > MAX_THREADS || n_interps > 64) return -EINVAL;
    thread_t *ts = calloc(n ? n : 1, sizeof *ts);
    uint64_t *is = malloc((n_interps ? n_interps : 1) * sizeof *is);
    if (!ts || !is) { free(ts); free(is); return -ENOMEM; }
    for (size_t i = 0; i < n; i++) {
        ts[i].tstate = tstates[i];
        ts[i].had_stack = -1;
        for (size_t j = 0; j < w->n_threads; j++)
            if (w->threads[j].tstate == tstates[i]) {
                ts[i] = w->threads[j];
                memset(&w->threads[j], 0, sizeof w->threads[j]); /* moved, not freed */
                break;
            }
    }
    for (size_t j = 0; j < w->n_threads; j++) thread_free(&w->threads[j]);
    free(w->threads);
    free(w->interps);
    if (n_interps) memcpy(is, interps, n_interps * sizeof *is);
    w->threads = ts;
    w->n_threads = n;
    w->interps = is;
    w->n_interps = n_interps;
    return 0;
}

/* After a torn sample: read nothing speculatively next time. */
void pw_forget(pw_t *w) {
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        t->n_plan = 0;
        t->cframe = 0;
        t->n_prev = 0;
        t->prev_clean = 0; /* Python starts afresh too: no FLAG_SAME until a clean sample */
        t->n_heap_prev = 0;
    }
    w->gil_base.ok = 0;
    w->n_codes_last = 0;
    w->walked = 0;
}

/* ---- the walk ---------------------------------------------------------------- */

static uint64_t chunk_size(pw_t *w, uint64_t chunk, int *err) {
    int64_t *hit = map_get(&w->chunk_sizes, chunk);
    if (hit) return (uint64_t)*hit;
    int64_t off;
    *err = read_one(w, chunk + w->L.chunk_size, 8, &off);
    if (*err || off < 0) return 0;
    uint64_t size = u64_at(w, off, 0);
    if (!size || size > (1u << 30)) return 0;
    if (w->chunk_sizes.n > CHUNK_SIZES_MAX) map_clear(&w->chunk_sizes);
    map_put(&w->chunk_sizes, chunk, (int64_t)size);
    return size;
}

/* Parts to read for a thread's frames: the used part of its current chunk (+ slack
   for frames pushed since its state was read) and of every earlier chunk. Returns 0,
   or -errno when the target cannot be read at all. */
static int plan_chunks(pw_t *w, thread_t *t, uint64_t chunk, uint64_t top) {
    const pw_layout *L = &w->L;
    int err = 0;
    if (!chunk || top <= chunk) { t->n_plan = 0; return 0; }
    uint64_t size = chunk_size(w, chunk, &err);
    if (err || !size) { t->n_plan = 0; return err; }
    uint64_t want = top - chunk + CHUNK_SLACK;
    if (want > size) want = size;
    if (want > CHUNK_MAX) want = CHUNK_MAX;
    if (t->n_plan && t->plan_addr[0] == chunk) {
        t->plan_len[0] = want; /* earlier chunks do not change while this one is in use */
        return 0;
    }
    t->n_plan = 1;
    t->plan_addr[0] = chunk;
    t->plan_len[0] = want;
    int64_t off;
    if ((err = read_one(w, chunk, (uint64_t)L->chunk_data, &off)) || off < 0) return err;
    uint64_t prev = u64_at(w, off, L->chunk_previous);
    while (prev && t->n_plan < MAX_PLAN) {
        if ((err = read_one(w, prev, (uint64_t)L->chunk_data, &off)) || off < 0) break;
        uint64_t used = u64_at(w, off, L->chunk_top); /* in PyObject* units, saved on the switch */
        uint64_t csize = u64_at(w, off, L->chunk_size);
        if (used > CHUNK_MAX * 8ull) break;
        uint64_t nbytes = (uint64_t)L->chunk_data + 8 * used;
        if (!(nbytes <= csize && csize <= CHUNK_MAX * 64ull)) break;
        t->plan_addr[t->n_plan] = prev;
        t->plan_len[t->n_plan] = nbytes;
        t->n_plan++;
        prev = u64_at(w, off, L->chunk_previous);
    }
    return err;
}

/* Arena offset of frame `addr`'s header, if this sample holds it; *heap: it is
   not in the thread's chunks. */
static int64_t frame_at(const pw_t *w, const thread_t *t, uint64_t addr, int *heap) {
    *heap = 0;
    for (int r = 0; r < t->n_rng; r++) {
        const part_t *p = &t->rng[r];
        if (p->off >= 0 && p->addr <= addr && addr - p->addr <= p->len && p->len - (addr - p->addr) >= FRAME_READ)
            return p->off + (int64_t)(addr - p->addr);
    }
    *heap = 1;
    int64_t *hit = map_get(&w->heap, addr);
    return hit ? *hit : -2; /* -1: read and unreadable, -2: not read yet */
}

static int advance(pw_t *w, thread_t *t) {
    uint64_t addr = t->next_frame;
    while (addr) {
        int heap;
        int64_t off = frame_at(w, t, addr, &heap);
        if (off == -2) {
            if (!map_get(&w->heap, addr)) VEC_PUSH(w->missing, w->n_missing, w->cap_missing, addr);
            t->next_frame = addr;
            return 0;
        }
        if (off < 0) { /* read and unreadable: this chain is cut */
            t->broken = t->done = 1;
            t->next_frame = addr;
            return 0;
        }
        step_t s = {off, addr};
        VEC_PUSH(t->walk, t->n_walk, t->cap_walk, s);
        if (heap) VEC_PUSH(t->heap_walk, t->n_heap_walk, t->cap_heap_walk, addr);
        if (t->n_walk > MAX_DEPTH) { t->suspect = 1; break; }
        addr = u64_at(w, off, w->L.frame_previous);
    }
    t->next_frame = 0;
    t->done = 1;
    return 0;
}

/* After a walk: the coroutine frames it went through are fresh, the ones it did
   not go through for HEAP_AGE walks are dropped. */
static int remember_heap(thread_t *t) {
    for (size_t k = 0; k < t->n_heap_walk; k++) {
        size_t j = 0;
        while (j < t->n_heap_prev && t->heap_prev[j].addr != t->heap_walk[k]) j++;
        if (j < t->n_heap_prev) {
            t->heap_prev[j].seen = t->walks;
        } else if (t->n_heap_prev < HEAP_KEEP) {
            heap_t h = {t->heap_walk[k], t->walks};
            VEC_PUSH(t->heap_prev, t->n_heap_prev, t->cap_heap_prev, h);
        }
    }
    size_t kept = 0;
    for (size_t j = 0; j < t->n_heap_prev; j++)
        if (t->walks - t->heap_prev[j].seen < HEAP_AGE) t->heap_prev[kept++] = t->heap_prev[j];
    t->n_heap_prev = kept;
    return 0;
}

/* Whether the thread states listed are still each interpreter's list, as read:
   every list starts at its head and each state's next is the following one or 0. */
static int thread_list_matches(pw_t *w, const int64_t *heads) {
    size_t i = 0;
    for (size_t h = 0; h < w->n_interps; h++) {
        uint64_t head = u64_at(w, heads[h], 0);
        if (!head) continue;
        if (i >= w->n_threads || w->threads[i].tstate != head) return 0;
        for (;;) {
            uint64_t nxt = u64_at(w, w->threads[i].tbuf, w->L.tstate_next);
            i++;
            if (!nxt) break;
            if (i >= w->n_threads || w->threads[i].tstate != nxt) return 0;
        }
    }
    return i == w->n_threads;
}

/* Whether thread t can have run Python since the sample its last stack is from:
   only a GIL holder runs Python. The count goes up on every change of holder,
   so with no change since then only the holder ran, and with one change its old
   and new holder. The holder and count are two words, written one after the
   other: a pair that disagrees (a holder change without a count, or a count
   without one) means "maybe", and so does anything unknown. */
static int may_have_run(const pw_t *w, const thread_t *t) {
    const gil_t *then = &w->gil_base, *now = &w->gil_now;
    if (!then->ok || !now->ok || !t->prev_clean) return 1;
    uint64_t changes = now->switches - then->switches;
    if (changes == 0 && now->holder == then->holder) return t->tstate == then->holder;
    if (changes == 1 && now->holder != then->holder) return t->tstate == then->holder || t->tstate == now->holder;
    return 1;
}

/* Reads and walks one sample. Returns PW_OK (then: decode the codes listed in
   the result, pw_set_code them, pw_decode), PW_RELIST, PW_TORN (msg says why)
   or -errno when the target is gone or unreadable. */
int pw_walk(pw_t *w, int lenient) {
    const pw_layout *L = &w->L;
    int rc;
    w->walked = 0;
    w->sample_no++;
    w->arena.len = 0;
    w->n_parts = 0;
    w->res.reads = w->res.bytes = w->res.unread = 0;
    w->res.n_need = 0;
    w->res.msg[0] = 0;
    map_clear(&w->heap);
    map_clear(&w->heads);
    map_clear(&w->used);

    /* 1. one read: the GIL (first: whatever is read after it is at least as new), list
       heads, thread states. Subinterpreters may have GILs of their own: then none counts. */
    size_t at_gil = w->n_parts;
    int with_gil = w->gil_addr && w->n_interps == 1;
    if (with_gil && (rc = push_part(w, w->gil_addr, (uint64_t)w->gil_switch_off + 8))) return rc;
    size_t at_heads = w->n_parts;
    for (size_t i = 0; i < w->n_interps; i++)
        if ((rc = push_part(w, w->interps[i] + L->interp_threads_head, 8))) return rc;
    size_t at_tstates = w->n_parts;
    for (size_t i = 0; i < w->n_threads; i++)
        if ((rc = push_part(w, w->threads[i].tstate, (uint64_t)L->tstate_size))) return rc;
    if ((rc = read_parts(w, 0))) return rc;

    /* 2. the thread list is still the one Python read? (heads and next pointers of this same read) */
    int64_t heads[64];
    for (size_t i = 0; i < w->n_interps; i++) {
        heads[i] = w->parts[at_heads + i].off;
        if (heads[i] < 0) return torn(w, "thread list head unreadable", 0);
    }
    for (size_t i = 0; i < w->n_threads; i++) {
        w->threads[i].tbuf = w->parts[at_tstates + i].off;
        if (w->threads[i].tbuf < 0) return torn(w, "thread state unreadable", 0);
    }
    if (!thread_list_matches(w, heads)) return PW_RELIST;
    int64_t gil = with_gil ? w->parts[at_gil].off : -1;
    w->gil_now = gil < 0 ? (gil_t){0, 0, 0} : (gil_t){1, u64_at(w, gil, 0), u64_at(w, gil, w->gil_switch_off)};

    /* 3. a second read: the frames of each thread that may have run (its chunks as
       its state now says, its C frame, the coroutine frames its recent walks went
       through), code object headers of last sample */
    size_t at_more = w->n_parts;
    int64_t chunks_of[MAX_THREADS]; /* thread -> its first chunk part, -1 none */
    int64_t cframe_of[MAX_THREADS];
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        t->n_walk = t->n_out = 0;
        t->done = t->suspect = t->broken = t->dropped = 0;
        t->next_frame = 0;
        t->n_rng = 0;
        t->tid = u64_at(w, t->tbuf, L->tstate_thread_id);
        t->ntid = u64_at(w, t->tbuf, L->tstate_native_thread_id);
        chunks_of[i] = cframe_of[i] = -1;
        t->unread = !may_have_run(w, t) && t->tid == t->prev_tid && t->ntid == t->prev_ntid;
        if (t->unread) {
            t->done = 1;
            w->res.unread++;
            continue;
        }
        uint64_t chunk = u64_at(w, t->tbuf, L->tstate_datastack_chunk);
        uint64_t top = u64_at(w, t->tbuf, L->tstate_datastack_top);
        if ((rc = plan_chunks(w, t, chunk, top))) return rc;
        chunks_of[i] = (int64_t)w->n_parts;
        for (int k = 0; k < t->n_plan; k++)
            if ((rc = push_part(w, t->plan_addr[k], t->plan_len[k]))) return rc;
        if (L->tstate_current_frame >= 0) {
            t->next_frame = u64_at(w, t->tbuf, L->tstate_current_frame);
        } else {
            t->cframe = u64_at(w, t->tbuf, L->tstate_cframe);
            if (t->cframe) {
                cframe_of[i] = (int64_t)w->n_parts;
                if ((rc = push_part(w, t->cframe, 16))) return rc;
            }
        }
    }
    size_t at_heap = w->n_parts;
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        if (!t->unread)
            for (size_t k = 0; k < t->n_heap_prev; k++)
                if ((rc = push_part(w, t->heap_prev[k].addr, FRAME_READ))) return rc;
    }
    size_t at_codes = w->n_parts;
    for (size_t i = 0; i < w->n_codes_last; i++)
        if ((rc = push_part(w, w->codes_last[i] + 8, (uint64_t)L->code_head))) return rc;
    if ((rc = read_parts(w, at_more))) return rc;
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        if (t->unread) continue;
        t->n_heap_walk = 0;
        t->walks++;
        if (chunks_of[i] >= 0) {
            t->n_rng = t->n_plan;
            for (int k = 0; k < t->n_plan; k++) t->rng[k] = w->parts[chunks_of[i] + k];
        }
        if (cframe_of[i] >= 0) {
            int64_t off = w->parts[cframe_of[i]].off;
            if (off < 0) return torn(w, "cframe unreadable", t->cframe);
            t->next_frame = u64_at(w, off, L->cframe_current_frame);
        }
        if (t->next_frame) continue;
        /* 3.11/3.12: a thread outside Python sits on its root C frame; a NULL current
           frame on any other C frame is a C frame caught before it was filled in. */
        int half_made = L->tstate_root_cframe >= 0 && t->cframe && t->cframe != t->tstate + L->tstate_root_cframe;
        if (half_made || t->had_stack == 1) {
            if (!lenient) return torn(w, "current frame vanished", 0);
            t->suspect = 1;
        }
        t->done = 1;
    }

    /* 4. walk; frames outside the chunks (coroutines') are read in batches */
    for (size_t i = at_heap; i < at_codes; i++) map_put(&w->heap, w->parts[i].addr, w->parts[i].off);
    for (size_t rounds = 0;; rounds++) {
        w->n_missing = 0;
        size_t pending = 0;
        for (size_t i = 0; i < w->n_threads; i++) {
            thread_t *t = &w->threads[i];
            if (t->done) continue;
            if ((rc = advance(w, t))) return rc;
            if (t->broken && !lenient) return torn(w, "frame %#llx unreadable", t->next_frame);
            pending += !t->done;
        }
        if (!pending) break;
        if (rounds >= MAX_DEPTH) {
            if (!lenient) return torn(w, "frame chain does not end", 0);
            for (size_t i = 0; i < w->n_threads; i++)
                if (!w->threads[i].done) w->threads[i].broken = w->threads[i].done = 1;
            break;
        }
        size_t at = w->n_parts;
        for (size_t k = 0; k < w->n_missing; k++)
            if ((rc = push_part(w, w->missing[k], FRAME_READ))) return rc;
        if ((rc = read_parts(w, at))) return rc;
        for (size_t k = at; k < w->n_parts; k++) {
            if (w->parts[k].off < 0 && !lenient) return torn(w, "frame %#llx unreadable", w->parts[k].addr);
            map_put(&w->heap, w->parts[k].addr, w->parts[k].off);
        }
    }

    for (size_t i = 0; i < w->n_threads; i++)
        if (!w->threads[i].unread && (rc = remember_heap(&w->threads[i]))) return rc;

    /* 5. code objects: header of each, as read now */
    for (size_t i = at_codes; i < at_codes + w->n_codes_last; i++)
        map_put(&w->heads, w->parts[i].addr - 8, w->parts[i].off);
    size_t at_code_more = w->n_parts;
    w->n_codes_last = 0;
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        for (size_t k = 0; k < t->n_walk; k++) {
            int64_t off = t->walk[k].off;
            if (w->arena.p[off + L->frame_owner] == L->owner_cstack) continue;
            uint64_t code = u64_at(w, off, L->frame_code);
            if (!code || map_get(&w->used, code)) continue;
            if (map_put(&w->used, code, -1)) return -ENOMEM;
            if (w->n_codes_last < LAST_CODES_MAX)
                VEC_PUSH(w->codes_last, w->n_codes_last, w->cap_codes_last, code);
            if (!map_get(&w->heads, code) && (rc = push_part(w, code + 8, (uint64_t)L->code_head))) return rc;
        }
    }
    if (w->n_parts > at_code_more) {
        if ((rc = read_parts(w, at_code_more))) return rc;
        for (size_t i = at_code_more; i < w->n_parts; i++)
            map_put(&w->heads, w->parts[i].addr - 8, w->parts[i].off);
    }
    if (w->n_codes > CODES_MAX) { /* addresses get reused: drop and re-learn */
        w->n_codes = 0;
        map_clear(&w->code_index);
    }
    size_t n_need = 0, hl = (size_t)L->code_head;
    for (size_t i = 0; i < w->used.cap; i++) {
        uint64_t code = w->used.keys[i];
        if (!code) continue;
        int64_t *head = map_get(&w->heads, code);
        if (!head || *head < 0) continue; /* unreadable: not a code object (its frames tear) */
        int64_t *ix = map_get(&w->code_index, code);
        if (ix && w->codes[*ix].kind != KIND_UNKNOWN && !memcmp(w->codes[*ix].head, w->arena.p + *head, hl)) {
            w->used.vals[i] = *ix;
            continue;
        }
        if (n_need == w->cap_res_need) {
            size_t cap = w->cap_res_need ? w->cap_res_need * 2 : 64;
            uint64_t *p = realloc(w->res_need, cap * sizeof *p);
            if (!p) return -ENOMEM;
            w->res_need = p;
            uint8_t *h = realloc(w->res_heads, cap * hl);
            if (!h) return -ENOMEM;
            w->res_heads = h;
            w->cap_res_need = cap;
        }
        w->res_need[n_need] = code;
        memcpy(w->res_heads + n_need * hl, w->arena.p + *head, hl);
        n_need++;
    }
    w->res.n_need = n_need;
    w->res.need = w->res_need;
    w->res.need_heads = w->res_heads;
    w->walked = 1;
    return PW_OK;
}

/* Python's verdict on a code object whose header it was given. */
int pw_set_code(pw_t *w, uint64_t addr, const uint8_t *head, int kind, int firsttraceable) {
    int64_t *ix = map_get(&w->code_index, addr);
    size_t i;
    if (ix) {
        i = (size_t)*ix;
    } else {
        code_t c = {0};
        VEC_PUSH(w->codes, w->n_codes, w->cap_codes, c);
        i = w->n_codes - 1;
        if (map_put(&w->code_index, addr, (int64_t)i)) return -ENOMEM;
    }
    code_t *c = &w->codes[i];
    memcpy(c->head, head, (size_t)w->L.code_head);
    c->kind = kind;
    c->firsttraceable = firsttraceable;
    c->stamp = w->sample_no;
    int64_t *u = map_get(&w->used, addr);
    if (u) *u = (int64_t)i;
    return 0;
}

static const code_t *code_of(const pw_t *w, uint64_t code) {
    int64_t *ix = map_get(&w->used, code);
    if (!ix || *ix < 0) return NULL;
    return &w->codes[*ix];
}

/* One thread's frames from its walk, with the checks that catch a chain read
   mid-update. Returns PW_OK, PW_TORN (msg set) or -ENOMEM. */
static int decode_thread(pw_t *w, thread_t *t) {
    const pw_layout *L = &w->L;
    const uint8_t *a = w->arena.p;
    int last_owner = -1;
    if (t->unread) return PW_OK;
    if (t->broken) return torn(w, "frame chain unreadable", 0);
    for (size_t k = 0; k < t->n_walk; k++) {
        int64_t off = t->walk[k].off;
        int owner = a[off + L->frame_owner];
        if (owner == L->owner_cstack) continue;
        raw_t r;
        r.addr = t->walk[k].addr;
        r.code = u64_at(w, off, L->frame_code);
        r.instr = u64_at(w, off, L->frame_instr);
        r.owner = (uint64_t)owner;
        if (owner == L->owner_frame_object || owner > 3) return torn(w, "a frame has owner %llu", (uint64_t)owner);
        const code_t *c = code_of(w, r.code);
        if (!c || c->kind == KIND_UNKNOWN) return torn(w, "a frame does not point at a code object (%#llx)", r.code);
        if (c->kind == KIND_NONE) {
            if (owner != L->owner_generator) continue; /* 3.13 trampoline frames execute None */
            return torn(w, "a coroutine frame executes None (%#llx)", r.code);
        }
        int64_t offset = (int64_t)(r.instr - (r.code + (uint64_t)L->code_code_adaptive));
        if (owner != L->owner_generator && offset < 2 * (int64_t)c->firsttraceable) continue; /* not started yet */
        if (offset > (1 << 24)) return torn(w, "instruction pointer outside its code (%#llx)", r.instr);
        VEC_PUSH(t->out, t->n_out, t->cap_out, r);
        if (t->cap_first < t->cap_out) {
            uint64_t *p = realloc(t->first, t->cap_out * sizeof *p);
            if (!p) return -ENOMEM;
            t->first = p;
            t->cap_first = t->cap_out;
        }
        t->first[t->n_out - 1] = u64_at(w, off, L->frame_localsplus);
        last_owner = owner;
    }
    if (t->suspect) return PW_OK;
    if (last_owner == L->owner_generator)
        return torn(w, "chain ends on a coroutine frame", 0); /* a coroutine suspended mid-walk */
    if (t->n_walk && !t->n_out) return torn(w, "only entry frames: caught before the first Python frame", 0);
    if (t->n_walk) {
        /* Every stack starts where C entered the eval loop: an entry frame (3.12+: owned
           by the C stack; 3.11: flagged is_entry). Else a `previous` was read mid-update. */
        int64_t off = t->walk[t->n_walk - 1].off;
        int entry = L->frame_is_entry >= 0 ? a[off + L->frame_is_entry] != 0 : a[off + L->frame_owner] == L->owner_cstack;
        if (!entry) return torn(w, "chain does not end at an entry frame", 0);
    }
    return PW_OK;
}

int pw_decode(pw_t *w, int lenient) {
    if (!w->walked) return torn(w, "decode without a walk", 0);
    w->walked = 0;
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        int rc = decode_thread(w, t);
        if (rc < 0) return rc; /* out of memory */
        if (rc == PW_TORN) {
            if (!lenient) return PW_TORN;
            t->dropped = 1;
            t->n_out = 0;
        }
    }
    size_t frame_words = 0, firsts = 0;
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        if (t->unread) { /* its last sample stands, as it is */
            t->n_out = t->same = t->n_prev;
            t->firsts_kept = t->same_all = 1;
            t->n_firsts = 0;
            continue;
        }
        /* frames equal to the last sample's, outermost up, whose code Python did not just re-decode */
        size_t same = 0;
        while (same < t->n_out && same < t->n_prev) {
            const raw_t *x = &t->out[t->n_out - 1 - same], *y = &t->prev[t->n_prev - 1 - same];
            if (x->addr != y->addr || x->code != y->code || x->instr != y->instr || x->owner != y->owner) break;
            const code_t *c = code_of(w, x->code);
            if (!c || c->stamp == w->sample_no) break;
            same++;
        }
        t->same = same;
        /* the kept frames' first locals as last sample too? (a frame that ran between samples
           may be back at the same instruction with other locals) */
        t->firsts_kept = t->prev_clean && !t->suspect && !t->dropped && t->tid == t->prev_tid &&
                         t->ntid == t->prev_ntid &&
                         (!same || !memcmp(t->first + (t->n_out - same), t->prev_first + (t->n_prev - same),
                                           same * sizeof *t->first));
        t->same_all = t->firsts_kept && same == t->n_out && t->n_prev == t->n_out;
        t->n_firsts = t->same_all ? 0 : t->firsts_kept ? t->n_out - same : t->n_out;
        frame_words += 4 * (t->n_out - same);
        firsts += t->n_firsts;
    }
    size_t words = 6 * w->n_threads + frame_words + firsts;
    if (words > w->cap_words) {
        size_t cap = w->cap_words ? w->cap_words : 1024;
        while (cap < words) cap *= 2;
        uint64_t *p = realloc(w->words, cap * sizeof *p);
        if (!p) return -ENOMEM;
        w->words = p;
        w->cap_words = cap;
    }
    uint64_t *rt = w->words, *rf = w->words + 6 * w->n_threads, *rl = rf + frame_words;
    for (size_t i = 0; i < w->n_threads; i++) {
        thread_t *t = &w->threads[i];
        size_t fresh = t->n_out - t->same;
        rt[6 * i + 0] = t->tstate;
        rt[6 * i + 1] = t->tid;
        rt[6 * i + 2] = t->ntid;
        rt[6 * i + 3] = (t->suspect || t->dropped ? FLAG_SUSPECT : 0) | (t->dropped ? FLAG_DROPPED : 0) |
                        (t->same_all ? FLAG_SAME : 0) | (t->firsts_kept ? FLAG_FIRSTS_KEPT : 0);
        rt[6 * i + 4] = t->n_out;
        rt[6 * i + 5] = fresh;
        if (fresh) memcpy(rf, t->out, fresh * sizeof(raw_t));
        rf += 4 * fresh;
        if (t->n_firsts) memcpy(rl, t->first, t->n_firsts * sizeof *rl);
        rl += t->n_firsts;
        if (t->unread) continue;
        /* remember this sample's frames for the next comparison */
        if (t->n_out > t->cap_prev) {
            raw_t *p = realloc(t->prev, t->n_out * sizeof *p);
            if (!p) return -ENOMEM;
            t->prev = p;
            uint64_t *q = realloc(t->prev_first, t->n_out * sizeof *q);
            if (!q) return -ENOMEM;
            t->prev_first = q;
            t->cap_prev = t->n_out;
        }
        if (t->n_out) {
            memcpy(t->prev, t->out, t->n_out * sizeof *t->out);
            memcpy(t->prev_first, t->first, t->n_out * sizeof *t->first);
        }
        t->n_prev = t->n_out;
        t->prev_tid = t->tid;
        t->prev_ntid = t->ntid;
        t->prev_clean = !t->suspect && !t->dropped;
        if (!(t->suspect || t->dropped)) t->had_stack = t->n_out > 0;
        else if (t->had_stack < 0) t->had_stack = 1;
    }
    /* the stacks stand as of this sample's GIL read (every thread read after it or unread) */
    w->gil_base = w->gil_now;
    w->res.n_threads = w->n_threads;
    w->res.n_words = words;
    w->res.words = w->words;
    w->res.cap_words = w->cap_words;
    return PW_OK;
}

/* pw_walk, then pw_decode when no code object needs Python: one call per sample
   in the steady state. Returns PW_NEED_CODES when Python must decode first. */
int pw_sample(pw_t *w, int lenient) {
    int rc = pw_walk(w, lenient);
    if (rc != PW_OK) return rc;
    return w->res.n_need ? PW_NEED_CODES : pw_decode(w, lenient);
}

/* ---- the paced loop ------------------------------------------------------------
 *
 * Sampling at a fixed rate from a thread of its own, in C: it sleeps to each
 * deadline, walks (retrying a torn walk after forgetting what it guessed, the
 * last attempt lenient, as StackReader.sample does) and copies the decoded words
 * into a ring slot. Python takes the slots in batches, so at 1 kHz the
 * interpreter wakes a few dozen times a second instead of a thousand — a
 * Python wakeup and its bookkeeping cost more than the sample itself.
 *
 * A sample that needs Python (a code object to decode, a new thread list, an
 * error) parks the loop: the slot carries the walker's return code, Python
 * finishes that sample with the walker (which the loop does not touch while
 * parked) and resumes the loop. The ring never overwrites a slot Python has not
 * released; when it is full the loop skips the sample and counts it.
 */

typedef struct {
    int64_t mono_ns, epoch_ns; /* clocks when the sample began */
    int64_t done_ns;           /* CLOCK_MONOTONIC when its reads were done */
    int32_t rc;                /* PW_OK: words hold the decoded sample; else what Python must finish */
    int32_t attempts;          /* walks taken (1 = no retry) */
    uint64_t gen;              /* pw_loop_reset generation it was taken in */
    uint64_t n_threads, n_words, reads, bytes, unread;
    uint64_t *words;
    uint64_t cap_words;
    char msg[200];
} pw_slot;

typedef struct { /* read by Python without the lock: each field is one aligned word */
    int64_t tid;      /* the loop thread's kernel id */
    int64_t cpu_ns;   /* its CPU time, as of the last sample that woke Python (and when it ended) */
    int64_t skipped;  /* samples not taken: the ring was full (Python behind) */
    int64_t gen;      /* current generation */
} pw_loop_pub;

typedef struct {
    pw_loop_pub pub;
    pw_t *w;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t wake_py, wake_c;
    int64_t period_ns;
    int attempts, nice, set_nice, policy;
    uint64_t batch;
    pw_slot *slots;
    uint64_t n_slots, head, tail; /* head: next slot to fill; tail: next for Python */
    uint64_t want_gen;
    int parked, stop, started;
} pw_loop;

static int64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int slot_store(pw_slot *s, const pw_t *w) {
    if (w->res.n_words > s->cap_words) {
        uint64_t *p = realloc(s->words, w->res.n_words * sizeof *p);
        if (!p) return -ENOMEM;
        s->words = p;
        s->cap_words = w->res.n_words;
    }
    if (w->res.n_words) memcpy(s->words, w->res.words, w->res.n_words * sizeof *s->words);
    s->n_threads = w->res.n_threads;
    s->n_words = w->res.n_words;
    return 0;
}

/* Sleep until deadline (CLOCK_MONOTONIC ns) in slices, so a stop is seen within 50 ms. */
static void sleep_until(pw_loop *l, int64_t deadline) {
    for (;;) {
        if (__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) return;
        int64_t now = clock_ns(CLOCK_MONOTONIC), wake = deadline;
        if (now >= deadline) return;
        if (wake - now > 50000000) wake = now + 50000000;
        struct timespec ts = {wake / 1000000000, wake % 1000000000};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}

static void *loop_main(void *arg) {
    pw_loop *l = arg;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    pthread_setname_np(pthread_self(), "perfd-sampler"); /* the name ps, top and perfd's benches show */
    if (l->policy >= 0) { /* either may be refused (no CAP_SYS_NICE): the thread keeps its default */
        struct sched_param sp = {0};
        sched_setscheduler(0, l->policy, &sp);
    }
    if (l->set_nice) setpriority(PRIO_PROCESS, (id_t)tid, l->nice);
    __atomic_store_n(&l->pub.tid, tid, __ATOMIC_RELEASE);
    int64_t next = clock_ns(CLOCK_MONOTONIC);
    for (;;) {
        next += l->period_ns;
        if (clock_ns(CLOCK_MONOTONIC) - next > 20 * l->period_ns)
            next = clock_ns(CLOCK_MONOTONIC) + l->period_ns; /* far behind (descheduled): no burst */
        sleep_until(l, next);
        pthread_mutex_lock(&l->mu);
        if (l->stop) { pthread_mutex_unlock(&l->mu); break; }
        int full = l->head - l->tail >= l->n_slots;
        if (l->want_gen != (uint64_t)l->pub.gen) {
            pw_forget(l->w); /* Python lost step with the words: start the comparison afresh */
            l->pub.gen = (int64_t)l->want_gen;
        }
        pw_slot *s = &l->slots[l->head % l->n_slots];
        pthread_mutex_unlock(&l->mu);
        if (full) {
            __atomic_add_fetch(&l->pub.skipped, 1, __ATOMIC_RELAXED);
            continue;
        }
        s->mono_ns = clock_ns(CLOCK_MONOTONIC);
        s->epoch_ns = clock_ns(CLOCK_REALTIME);
        int rc = PW_TORN, a = 0;
        if (!l->w->n_threads) { /* no thread yet (before Py_Initialize): only a fresh listing sees one */
            rc = PW_RELIST;
            a = l->attempts;
        }
        for (; a < l->attempts; a++) {
            rc = pw_sample(l->w, a == l->attempts - 1);
            if (rc != PW_TORN) break;
            if (a < l->attempts - 1) pw_forget(l->w);
        }
        s->done_ns = clock_ns(CLOCK_MONOTONIC);
        s->attempts = rc == PW_RELIST && !l->w->n_threads ? 1 : a < l->attempts ? a + 1 : l->attempts;
        s->gen = (uint64_t)l->pub.gen;
        s->reads = l->w->res.reads;
        s->bytes = l->w->res.bytes;
        s->unread = l->w->res.unread;
        memcpy(s->msg, l->w->res.msg, sizeof s->msg);
        s->n_threads = s->n_words = 0;
        if (rc == PW_OK && slot_store(s, l->w) < 0) rc = -ENOMEM;
        s->rc = rc;
        pthread_mutex_lock(&l->mu);
        l->head++;
        /* the CPU reading is a system call: taken when Python is woken to read it, not every sample */
        if (rc != PW_OK || l->head - l->tail >= l->batch)
            __atomic_store_n(&l->pub.cpu_ns, clock_ns(CLOCK_THREAD_CPUTIME_ID), __ATOMIC_RELAXED);
        if (rc != PW_OK) {
            l->parked = 1; /* Python finishes this sample with the walker, then resumes us */
            pthread_cond_signal(&l->wake_py);
            /* deadlines stay absolute: a short wait is caught up, a long one (see above) is not */
            while (l->parked && !l->stop) pthread_cond_wait(&l->wake_c, &l->mu);
        } else if (l->head - l->tail >= l->batch) {
            pthread_cond_signal(&l->wake_py);
        }
        int stop = l->stop;
        pthread_mutex_unlock(&l->mu);
        if (stop) break;
    }
    __atomic_store_n(&l->pub.cpu_ns, clock_ns(CLOCK_THREAD_CPUTIME_ID), __ATOMIC_RELAXED); /* all of it */
    return NULL;
}

/* Start sampling w every period_ns on a new thread. The walker belongs to the loop
   until pw_loop_stop, except while it is parked. */
pw_loop *pw_loop_start(pw_t *w, int64_t period_ns, uint64_t n_slots, uint64_t batch, int attempts,
                       int set_nice, int nice, int policy) {
    if (!w || period_ns <= 0 || n_slots < 2 || n_slots > 1 << 16 || attempts < 1 || attempts > 100) return NULL;
    pw_loop *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->slots = calloc(n_slots, sizeof *l->slots);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (!l->slots || pthread_mutex_init(&l->mu, NULL) || pthread_cond_init(&l->wake_py, &ca) ||
        pthread_cond_init(&l->wake_c, NULL)) {
        pthread_condattr_destroy(&ca);
        free(l->slots);
        free(l);
        return NULL;
    }
    pthread_condattr_destroy(&ca);
    l->w = w;
    l->period_ns = period_ns;
    l->n_slots = n_slots;
    l->batch = batch < 1 ? 1 : batch > n_slots / 2 ? n_slots / 2 : batch;
    l->attempts = attempts;
    l->set_nice = set_nice;
    l->nice = nice;
    l->policy = policy; /* SCHED_OTHER, SCHED_BATCH, SCHED_IDLE; < 0: leave it */
    if (pthread_create(&l->th, NULL, loop_main, l)) {
        free(l->slots);
        free(l);
        return NULL;
    }
    l->started = 1;
    while (!__atomic_load_n(&l->pub.tid, __ATOMIC_ACQUIRE)) usleep(100);
    return l;
}

pw_loop_pub *pw_loop_pub_of(pw_loop *l) { return &l->pub; }

/* Wait up to timeout_ns for a batch (or a parked sample, or a stop). Returns how many
   slots are ready, the first at *first (a sequence number: pw_loop_slot takes it). */
int64_t pw_loop_wait(pw_loop *l, int64_t timeout_ns, uint64_t *first) {
    struct timespec ts;
    int64_t deadline = clock_ns(CLOCK_MONOTONIC) + timeout_ns;
    ts.tv_sec = deadline / 1000000000;
    ts.tv_nsec = deadline % 1000000000;
    pthread_mutex_lock(&l->mu);
    while (!l->stop && !l->parked && l->head - l->tail < l->batch)
        if (pthread_cond_timedwait(&l->wake_py, &l->mu, &ts) == ETIMEDOUT) break;
    *first = l->tail;
    int64_t n = (int64_t)(l->head - l->tail);
    pthread_mutex_unlock(&l->mu);
    return n;
}

pw_slot *pw_loop_slot(pw_loop *l, uint64_t seq) { return &l->slots[seq % l->n_slots]; }

#define SLOT_HEAD 11 /* mono, epoch, done, rc, attempts, gen, n_threads, n_words, reads, bytes, unread */

/* The n ready slots from seq, packed into buf (SLOT_HEAD words, then the slot's
   words, for each): Python converts one buffer per batch, not one per sample.
   Returns the words written, or -(words needed) when cap is too small. */
int64_t pw_loop_copy(pw_loop *l, uint64_t seq, uint64_t n, uint64_t *buf, uint64_t cap) {
    uint64_t need = 0;
    for (uint64_t i = 0; i < n; i++) need += SLOT_HEAD + l->slots[(seq + i) % l->n_slots].n_words;
    if (need > cap) return -(int64_t)need;
    uint64_t *p = buf;
    for (uint64_t i = 0; i < n; i++) {
        const pw_slot *s = &l->slots[(seq + i) % l->n_slots];
        uint64_t head[SLOT_HEAD] = {(uint64_t)s->mono_ns, (uint64_t)s->epoch_ns, (uint64_t)s->done_ns,
                                    (uint64_t)(int64_t)s->rc, (uint64_t)s->attempts, s->gen,
                                    s->n_threads, s->n_words, s->reads, s->bytes, s->unread};
        memcpy(p, head, sizeof head);
        p += SLOT_HEAD;
        if (s->n_words) memcpy(p, s->words, s->n_words * sizeof *p);
        p += s->n_words;
    }
    return (int64_t)need;
}

/* Python is done with the slots up to seq (exclusive); a parked loop goes on. */
void pw_loop_release(pw_loop *l, uint64_t seq) {
    pthread_mutex_lock(&l->mu);
    if (seq > l->tail && seq <= l->head) l->tail = seq;
    if (l->parked && l->tail == l->head) {
        l->parked = 0;
        pthread_cond_signal(&l->wake_c);
    }
    pthread_mutex_unlock(&l->mu);
}

/* From the next sample on, compare with nothing (Python dropped its frame records);
   slots taken before carry the old generation. Returns the new generation. */
int64_t pw_loop_reset(pw_loop *l) {
    pthread_mutex_lock(&l->mu);
    int64_t gen = (int64_t)++l->want_gen;
    pthread_mutex_unlock(&l->mu);
    return gen;
}

/* Stop the loop and free it; *last (if not NULL) gets its final public fields (its
   whole CPU time among them), which cannot be read from the loop once it is freed. */
void pw_loop_stop(pw_loop *l, pw_loop_pub *last) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE); /* sleep_until reads it without the lock */
    pthread_cond_broadcast(&l->wake_c);
    pthread_cond_broadcast(&l->wake_py);
    pthread_mutex_unlock(&l->mu);
    if (l->started) pthread_join(l->th, NULL);
    if (last) *last = l->pub;
    for (uint64_t i = 0; i < l->n_slots; i++) free(l->slots[i].words);
    free(l->slots);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->wake_py);
    pthread_cond_destroy(&l->wake_c);
    free(l);
}
