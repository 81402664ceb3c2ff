// Row-wise softmax, and softmax fused with the cross-entropy loss and its gradient.
//
// Each row of logits z (rows, cols) is handled by one "row group": a warp when the row is
// short (cols <= 1024, 8 rows per 256-thread block: the *_warp kernels), a whole block when
// it is long (the *_block kernels, or the *_block_regs variant further down). A group reads
// its row once from memory, keeping each thread's share of it (registers for a warp and
// for *_block_regs, dynamic shared memory for *_block), with an
// online running max m and sum s = sum exp(z - m) per thread (rescaled when m grows),
// merges those pairs across the group in a fixed tree order (shuffles, then shared memory
// in warp order), and writes the outputs from the kept copy. A row too long for shared
// memory is read a second time instead, mostly from L2. No atomics: every result is
// bitwise reproducible for a given shape and launch configuration.
//
// The launcher (gpunet/cuda/launch.py, layouts in gpunet/cuda/layout.py) picks kernel, block
// size, `cached` and grid; grids are capped and the kernels grid-stride over rows. A slot
// count without an instance writes NaN rows (and NaN row losses).

// gn_exp, gn_log, gn_neg_inf, gn_nan and gn_fill_nan come from common.cuh.

// ---- online max / sum-exp ------------------------------------------------------------------
template <typename T>
struct RowStats {
    T max;  // running maximum of the values seen
    T sum;  // sum of exp(value - max) over the values seen
};

template <typename T>
__device__ __forceinline__ void stats_push(RowStats<T>& st, T x) {
    if (x > st.max) {  // one exp per element: rescale the old sum only when the max moves
        st.sum = st.sum * gn_exp(st.max - x) + T(1);
        st.max = x;
    } else if (x != gn_neg_inf<T>()) {
        // -inf adds exp(-inf) = 0 (skipped so that -inf - -inf never makes a NaN);
        // a NaN x lands here and poisons the sum, as it does in the reference
        st.sum += gn_exp(x - st.max);
    }
}

// Merge two partial stats. Commutative bit for bit, so every lane of a butterfly ends
// with the same value. A side whose max is the merged max keeps its sum unscaled, which
// also keeps two empty sides (max = -inf) from computing exp(-inf - -inf) = NaN.
template <typename T>
__device__ __forceinline__ RowStats<T> stats_merge(RowStats<T> a, RowStats<T> b) {
    RowStats<T> r;
    r.max = a.max > b.max ? a.max : b.max;
    const T sa = a.max == r.max ? a.sum : a.sum * gn_exp(a.max - r.max);
    const T sb = b.max == r.max ? b.sum : b.sum * gn_exp(b.max - r.max);
    r.sum = sa + sb;
    return r;
}

template <typename T>
__device__ __forceinline__ RowStats<T> warp_merge(RowStats<T> st) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        RowStats<T> other;
        other.max = __shfl_xor_sync(0xffffffffu, st.max, offset);
        other.sum = __shfl_xor_sync(0xffffffffu, st.sum, offset);
        st = stats_merge(st, other);
    }
    return st;
}

// Stats of the whole row group, identical in every thread of the group. For a block group
// the warps' partials go through shared memory and every thread folds them in warp order.
template <typename T, bool WARP_PER_ROW>
__device__ __forceinline__ RowStats<T> group_merge(RowStats<T> st) {
    st = warp_merge(st);
    if (WARP_PER_ROW) return st;
    __shared__ T warp_max[32];
    __shared__ T warp_sum[32];
    const int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        warp_max[warp] = st.max;
        warp_sum[warp] = st.sum;
    }
    __syncthreads();
    RowStats<T> total;
    total.max = warp_max[0];
    total.sum = warp_sum[0];
    const int warps = blockDim.x >> 5;
    for (int w = 1; w < warps; ++w) {
        RowStats<T> other;
        other.max = warp_max[w];
        other.sum = warp_sum[w];
        total = stats_merge(total, other);
    }
    __syncthreads();  // the shared slots are reused by the next row
    return total;
}

// Which rows a thread's group owns, and the thread's lane within the group.
struct RowGroup {
    long long first_row, row_step;
    int lane, width;
};

template <bool WARP_PER_ROW>
__device__ __forceinline__ RowGroup row_group() {
    RowGroup g;
    if (WARP_PER_ROW) {
        const int groups_per_block = blockDim.x >> 5;
        g.first_row = (long long)blockIdx.x * groups_per_block + (threadIdx.x >> 5);
        g.row_step = (long long)gridDim.x * groups_per_block;
        g.lane = threadIdx.x & 31;
        g.width = 32;
    } else {
        g.first_row = blockIdx.x;
        g.row_step = gridDim.x;
        g.lane = threadIdx.x;
        g.width = blockDim.x;
    }
    return g;
}

// Threads per block of the *_block_regs kernels: a compile-time stride keeps their per-slot
// addresses out of registers.
#define GN_BLOCK_REGS_THREADS 1024

// A thread's share of one row, columns lane, lane + width, ..., read from memory once:
// SLOTS > 0: kept in SLOTS registers (warp groups: 32 * SLOTS >= cols; block groups, which
// then have GN_BLOCK_REGS_THREADS threads: GN_BLOCK_REGS_THREADS * SLOTS >= cols);
// SLOTS == 0: kept in the block's dynamic shared memory when `cache` is set, else read
// again in the second pass. Each thread reads back only what it wrote, so the kept copy
// needs no barrier.
template <typename T, bool WARP_PER_ROW, int SLOTS>
struct RowShare {
    static constexpr int kStride = WARP_PER_ROW ? 32 : GN_BLOCK_REGS_THREADS;  // when SLOTS > 0
    T v[SLOTS > 0 ? SLOTS : 1];
    T* cache;

    // Read the share (keeping it) and return the stats of the whole row.
    __device__ __forceinline__ RowStats<T> load(const T* z, long long cols, const RowGroup& g) {
        RowStats<T> st;
        st.max = gn_neg_inf<T>();
        st.sum = T(0);
        if (SLOTS > 0) {
            // all loads first, so that they are in flight together; padding -inf adds nothing
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) {   // a row of <= 32 * 1024 columns: int indices
                const int j = g.lane + k * kStride;
                v[k] = j < cols ? z[j] : gn_neg_inf<T>();
            }
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) stats_push(st, v[k]);
        } else if (cache != nullptr) {
#pragma unroll 4
            for (long long j = g.lane; j < cols; j += g.width) {
                const T x = z[j];
                cache[j] = x;
                stats_push(st, x);
            }
        } else {
            for (long long j = g.lane; j < cols; j += g.width) stats_push(st, z[j]);
        }
        return group_merge<T, WARP_PER_ROW>(st);
    }

    // emit(j, z[j]) for each column j of the share, from the kept copy when there is one.
    template <typename Emit>
    __device__ __forceinline__ void for_each(const T* z, long long cols, const RowGroup& g, Emit emit) const {
        if (SLOTS > 0) {
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) {
                const int j = g.lane + k * kStride;
                if (j < cols) emit(j, v[k]);
            }
        } else if (cache != nullptr) {
            for (long long j = g.lane; j < cols; j += g.width) emit(j, cache[j]);
        } else {
            for (long long j = g.lane; j < cols; j += g.width) emit(j, z[j]);
        }
    }
};

// The block's dynamic shared memory as a row cache of T (null when the launch gave none).
template <typename T>
__device__ __forceinline__ T* shared_row_cache(int use_cache) {
    extern __shared__ double gn_dynamic_smem[];  // double: aligned for either type
    return use_cache ? reinterpret_cast<T*>(gn_dynamic_smem) : nullptr;
}

// ---- fused softmax + cross-entropy + gradient ---------------------------------------------
// For each row n with label y = labels[n]:
//   row_loss[n] = log sum_j exp(z_nj - m) - (z_ny - m)            (double, m = max_j z_nj)
//   grad[n, j]  = (exp((z_nj - m) - log sum exp) - [j == y]) / rows
// Matches NumpyBackend.softmax_xent (the mean loss is reduced afterwards by
// reduce.cu:sum_to_scalar in a fixed order). grad may alias logits: a row is read in full
// before the group's merge, and afterwards each element is written by the thread that read
// it. A label outside [0, cols) gives a NaN row loss (so the step is flagged non-finite on
// the device) instead of a read out of bounds.
// Launch: softmax_xent_warp_*: block 256 (8 rows per block), `slots` in {1, 4, 32} with
// 32 * slots >= cols (cols <= 1024). softmax_xent_block_*: one block (256, 512 or 1024
// threads) per row; with use_cache, dynamic shared memory of cols * sizeof(T) bytes.
// Grids are capped; both grid-stride over rows.
template <typename T, bool WARP_PER_ROW, int SLOTS>
__device__ void softmax_xent_rows(const T* logits, const long long* labels, long long rows,
                                  long long cols, T* cache, T* grad, double* row_loss) {
    const RowGroup g = row_group<WARP_PER_ROW>();
    const T n_rows = T(rows);
    for (long long row = g.first_row; row < rows; row += g.row_step) {
        const T* z = logits + row * cols;
        T* out = grad + row * cols;
        RowShare<T, WARP_PER_ROW, SLOTS> share;
        share.cache = cache;
        const RowStats<T> st = share.load(z, cols, g);
        const T log_sum = gn_log(st.sum);
        const long long y = labels[row];
        share.for_each(z, cols, g, [&](long long j, T x) {
            const T shifted = x - st.max;
            T p = gn_exp(shifted - log_sum);
            if (j == y) {
                row_loss[row] = (double)(log_sum - shifted);
                p -= T(1);
            }
            out[j] = p / n_rows;
        });
        if (g.lane == 0 && (y < 0 || y >= cols)) row_loss[row] = gn_nan<double>();
    }
}

template <typename T>
__device__ void softmax_xent_warp(const T* logits, const long long* labels, long long rows, long long cols,
                                  int slots, T* grad, double* row_loss) {
    switch (slots) {
        case 1: softmax_xent_rows<T, true, 1>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        case 4: softmax_xent_rows<T, true, 4>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        case 32: softmax_xent_rows<T, true, 32>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        default:
            gn_fill_nan(grad, rows * cols);
            gn_fill_nan(row_loss, rows);
            break;
    }
}

extern "C" __global__ void __launch_bounds__(256) softmax_xent_warp_f32(
        const float* logits, const long long* labels, long long rows, long long cols, int slots, float* grad,
        double* row_loss) {
    softmax_xent_warp<float>(logits, labels, rows, cols, slots, grad, row_loss);
}
extern "C" __global__ void __launch_bounds__(256) softmax_xent_warp_f64(
        const double* logits, const long long* labels, long long rows, long long cols, int slots, double* grad,
        double* row_loss) {
    softmax_xent_warp<double>(logits, labels, rows, cols, slots, grad, row_loss);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_f32(
        const float* logits, const long long* labels, long long rows, long long cols, int use_cache, float* grad,
        double* row_loss) {
    softmax_xent_rows<float, false, 0>(logits, labels, rows, cols, shared_row_cache<float>(use_cache), grad,
                                       row_loss);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_f64(
        const double* logits, const long long* labels, long long rows, long long cols, int use_cache, double* grad,
        double* row_loss) {
    softmax_xent_rows<double, false, 0>(logits, labels, rows, cols, shared_row_cache<double>(use_cache), grad,
                                        row_loss);
}

// Variant for long rows: one block of GN_BLOCK_REGS_THREADS per row, the row in registers
// (`slots` in {2, 4, 8, 16, 32} per thread, 1024 * slots >= cols) instead of shared memory.
// Every load of a thread's share is issued before the first is used, so far more bytes are
// in flight per SM than the shared-memory loop keeps (what a memory-bound row needs); the
// launcher picks it with GPUNET_LONG_ROWS=registers (gpunet/cuda/layout.py), the benchmarks time
// both. 32 doubles a thread would spill: float64 has at most 16 slots.
// Whether a *_block_regs launch is one the launcher makes: GN_BLOCK_REGS_THREADS threads
// and a slot count with an instance (32 only for float).
template <typename T>
__device__ __forceinline__ bool block_regs_launch_ok(int slots) {
    return blockDim.x == GN_BLOCK_REGS_THREADS &&
           (slots == 2 || slots == 4 || slots == 8 || slots == 16 || (slots == 32 && sizeof(T) == 4));
}

template <typename T>
__device__ void softmax_xent_block_regs(const T* logits, const long long* labels, long long rows, long long cols,
                                        int slots, T* grad, double* row_loss) {
    // a launch the launcher never makes (block size, a slot count without an instance) shows as NaN
    switch (block_regs_launch_ok<T>(slots) ? slots : 0) {
        case 2: softmax_xent_rows<T, false, 2>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        case 4: softmax_xent_rows<T, false, 4>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        case 8: softmax_xent_rows<T, false, 8>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        case 16: softmax_xent_rows<T, false, 16>(logits, labels, rows, cols, nullptr, grad, row_loss); break;
        case 32:   // float only: block_regs_launch_ok refuses 32 doubles
            if constexpr (sizeof(T) == 4) softmax_xent_rows<T, false, 32>(logits, labels, rows, cols, nullptr, grad, row_loss);
            break;
        default:
            gn_fill_nan(grad, rows * cols);
            gn_fill_nan(row_loss, rows);
            break;
    }
}

extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_regs_f32(
        const float* logits, const long long* labels, long long rows, long long cols, int slots, float* grad,
        double* row_loss) {
    softmax_xent_block_regs<float>(logits, labels, rows, cols, slots, grad, row_loss);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_regs_f64(
        const double* logits, const long long* labels, long long rows, long long cols, int slots, double* grad,
        double* row_loss) {
    softmax_xent_block_regs<double>(logits, labels, rows, cols, slots, grad, row_loss);
}

// ---- row-wise softmax (inference) ----------------------------------------------------------
// out[n, j] = exp(z_nj - m_n) / sum_k exp(z_nk - m_n).   Matches NumpyBackend.softmax.
// out may alias z. Launch as softmax_xent (softmax_warp_* / softmax_block_*).
template <typename T, bool WARP_PER_ROW, int SLOTS>
__device__ void softmax_rows(const T* z_all, long long rows, long long cols, T* cache, T* out_all) {
    const RowGroup g = row_group<WARP_PER_ROW>();
    for (long long row = g.first_row; row < rows; row += g.row_step) {
        const T* z = z_all + row * cols;
        T* out = out_all + row * cols;
        RowShare<T, WARP_PER_ROW, SLOTS> share;
        share.cache = cache;
        const RowStats<T> st = share.load(z, cols, g);
        share.for_each(z, cols, g, [&](long long j, T x) { out[j] = gn_exp(x - st.max) / st.sum; });
    }
}

template <typename T>
__device__ void softmax_warp(const T* z, long long rows, long long cols, int slots, T* out) {
    switch (slots) {
        case 1: softmax_rows<T, true, 1>(z, rows, cols, nullptr, out); break;
        case 4: softmax_rows<T, true, 4>(z, rows, cols, nullptr, out); break;
        case 32: softmax_rows<T, true, 32>(z, rows, cols, nullptr, out); break;
        default: gn_fill_nan(out, rows * cols); break;
    }
}

extern "C" __global__ void __launch_bounds__(256) softmax_warp_f32(
        const float* z, long long rows, long long cols, int slots, float* out) {
    softmax_warp<float>(z, rows, cols, slots, out);
}
extern "C" __global__ void __launch_bounds__(256) softmax_warp_f64(
        const double* z, long long rows, long long cols, int slots, double* out) {
    softmax_warp<double>(z, rows, cols, slots, out);
}
template <typename T>
__device__ void softmax_block_regs(const T* z, long long rows, long long cols, int slots, T* out) {
    // a launch the launcher never makes (block size, a slot count without an instance) shows as NaN
    switch (block_regs_launch_ok<T>(slots) ? slots : 0) {
        case 2: softmax_rows<T, false, 2>(z, rows, cols, nullptr, out); break;
        case 4: softmax_rows<T, false, 4>(z, rows, cols, nullptr, out); break;
        case 8: softmax_rows<T, false, 8>(z, rows, cols, nullptr, out); break;
        case 16: softmax_rows<T, false, 16>(z, rows, cols, nullptr, out); break;
        case 32:   // float only: block_regs_launch_ok refuses 32 doubles
            if constexpr (sizeof(T) == 4) softmax_rows<T, false, 32>(z, rows, cols, nullptr, out);
            break;
        default: gn_fill_nan(out, rows * cols); break;
    }
}

extern "C" __global__ void __launch_bounds__(1024) softmax_block_regs_f32(
        const float* z, long long rows, long long cols, int slots, float* out) {
    softmax_block_regs<float>(z, rows, cols, slots, out);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_block_regs_f64(
        const double* z, long long rows, long long cols, int slots, double* out) {
    softmax_block_regs<double>(z, rows, cols, slots, out);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_block_f32(
        const float* z, long long rows, long long cols, int use_cache, float* out) {
    softmax_rows<float, false, 0>(z, rows, cols, shared_row_cache<float>(use_cache), out);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_block_f64(
        const double* z, long long rows, long long cols, int use_cache, double* out) {
    softmax_rows<double, false, 0>(z, rows, cols, shared_row_cache<double>(use_cache), out);
}
