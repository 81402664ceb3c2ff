// CUDA's execution model on the host, so that kernels/*.cu run in CPU CI (tests/emulator).
// The threads of a block are fibers on one OS thread, resumed round-robin: a fiber runs until
// it reaches a barrier (__syncthreads, or either exchange of a warp shuffle), and a barrier
// opens once every thread of its block (warp) that has not exited the block has arrived.
// Blocks run one after another, so races between blocks go unseen; a barrier that can never
// open (a __syncthreads in divergent code) is reported instead of hanging. Host IEEE
// arithmetic without contraction stands in for the device's; the *_rn intrinsics are exact.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include <csetjmp>
#include <ucontext.h>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
inline double dynamic_smem[1 << 16];   // 512 KiB: more than any GPU's per-block opt-in
struct Barrier { int arrived = 0; unsigned long gen = 0; int members = 0; };
struct Fiber {
    ucontext_t ctx;            // only to start the fiber; switches use _setjmp/_longjmp
    jmp_buf jb;                // (no signal-mask system call per switch)
    unsigned tx = 0, ty = 0;
    Barrier* waiting = nullptr;   // the barrier this fiber waits at, if any
    unsigned long wait_gen = 0;
    bool started = false, exited = false;
};
constexpr size_t kStack = 256 * 1024;
inline jmp_buf scheduler;
inline ucontext_t scheduler_ctx;
inline std::vector<Fiber> fibers;
// Stacks outlive launches: a fresh 256 KiB per thread per launch cost an mmap, munmap and
// page faults each time, most of the emulator's run time on small kernels.
inline std::vector<std::unique_ptr<char[]>> stacks;
inline Fiber* current = nullptr;
inline Barrier block_barrier, block_end;
inline std::vector<Barrier> warp_barriers;
inline const std::function<void()>* body = nullptr;
inline unsigned long long slots[32][32];

inline int linear_tid() { return threadIdx.x + threadIdx.y * blockDim.x; }

inline void wait_at(Barrier& b) {
    current->waiting = &b;
    current->wait_gen = b.gen;
    ++b.arrived;
    if (!_setjmp(current->jb)) _longjmp(scheduler, 1);
}

// Each fiber runs the kernel for every block in turn; between two blocks it waits for the
// whole block to finish (its shared memory is then reused), as the hardware would.
inline void entry() {
    for (unsigned y = 0; y < gridDim.y; ++y) for (unsigned x = 0; x < gridDim.x; ++x) {
        blockIdx = {x, y, 1};
        (*body)();
        current->exited = true;
        wait_at(block_end);
        current->exited = false;
    }
    current->exited = true;
    current->waiting = nullptr;
    _longjmp(scheduler, 2);   // finished: never resumed again
}

// A barrier opens when every member that has not exited the block has arrived.
inline void open_ready(Barrier& b, int exited) {
    if (b.arrived > 0 && b.arrived == b.members - exited) { b.arrived = 0; ++b.gen; }
}

// Runs the grid; 0 on success, 1 when the threads of a block deadlocked at barriers.
inline int run(unsigned gx, unsigned gy, unsigned bx, unsigned by, const std::function<void()>& kernel) {
    gridDim = {gx, gy, 1}; blockDim = {bx, by, 1};
    body = &kernel;
    std::memset(dynamic_smem, 0xff, sizeof dynamic_smem);   // NaNs: unwritten shared memory shows
    const int n = bx * by, warps = (n + 31) / 32;
    fibers.clear();
    fibers.resize(n);
    block_barrier = Barrier{0, 0, n};
    block_end = Barrier{0, 0, n};
    warp_barriers.assign(warps, Barrier{});
    for (int w = 0; w < warps; ++w) warp_barriers[w].members = std::min(32, n - 32 * w);
    while (stacks.size() < static_cast<size_t>(n)) stacks.emplace_back(new char[kStack]);
    for (int t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
        f.tx = t % bx; f.ty = t / bx;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks[t].get();
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, entry, 0);
    }
    int finished = 0;
    std::vector<int> exited_warp(warps);
    while (finished < n) {
        bool progressed = false;
        for (int t = 0; t < n; ++t) {
            Fiber& f = fibers[t];
            if (f.started && f.exited && !f.waiting) continue;           // finished the grid
            if (f.waiting) {
                if (f.waiting->gen == f.wait_gen) continue;               // still closed
                f.waiting = nullptr;
            }
            current = &f;
            threadIdx = {f.tx, f.ty, 1};
            progressed = true;
            int how = _setjmp(scheduler);
            if (how == 0) {
                if (!f.started) { f.started = true; swapcontext(&scheduler_ctx, &f.ctx); }
                else _longjmp(f.jb, 1);
            }
            if (how == 2) ++finished;
        }
        int exited = 0;
        std::fill(exited_warp.begin(), exited_warp.end(), 0);
        for (int t = 0; t < n; ++t) if (fibers[t].exited) { ++exited; ++exited_warp[t / 32]; }
        open_ready(block_barrier, exited);
        for (int w = 0; w < warps; ++w) open_ready(warp_barriers[w], exited_warp[w]);
        if (block_end.arrived == n) { block_end.arrived = 0; ++block_end.gen; }
        if (!progressed) return 1;
    }
    return 0;
}
}  // namespace emu

inline void __syncthreads() { emu::wait_at(emu::block_barrier); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int offset) {
    int tid = emu::linear_tid(), warp = tid >> 5, lane = tid & 31;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu::slots[warp][lane] = bits;
    emu::wait_at(emu::warp_barriers[warp]);   // every lane has written
    unsigned long long other = emu::slots[warp][lane ^ offset];
    emu::wait_at(emu::warp_barriers[warp]);   // every lane has read
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
// Blocks run one after another, so memory is always coherent and an atomic is a plain update.
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned* address, unsigned value) { unsigned old = *address; *address = old + value; return old; }
using std::exp; using std::log; using std::tanh; using std::fabs;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
