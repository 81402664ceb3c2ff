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
// again in the second pass; either pass reads kLoads values per thread before using one.
// Each thread reads back only what it wrote, so the kept copy needs no barrier.
template <typename T, bool WARP_PER_ROW, int SLOTS>
struct RowShare {
    static constexpr int kStride = WARP_PER_ROW ? 32 : GN_BLOCK_REGS_THREADS;  // when SLOTS > 0
    static constexpr int kLoads = 8;   // SLOTS == 0: loads in flight per thread
    T v[SLOTS > 0 ? SLOTS : 1];
    T* cache;

    // Read the share (keeping it) and return the stats of the whole row. The row's values
    // are z[j] + bias[j] when a bias is given (the logits' bias, folded in here), else z[j].
    __device__ __forceinline__ RowStats<T> load(const T* z, const T* bias, long long cols, const RowGroup& g) {
        RowStats<T> st;
        st.max = gn_neg_inf<T>();
        st.sum = T(0);
        if (SLOTS > 0) {
            // all loads first, so that they are in flight together; padding -inf adds nothing
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) {   // a row of <= 32 * 1024 columns: int indices
                const int j = g.lane + k * kStride;
                v[k] = j < cols ? value(z, bias, j) : gn_neg_inf<T>();
            }
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) stats_push(st, v[k]);
        } else {
            // kLoads loads issued before the first is used (a store to shared memory would
            // otherwise wait for each): the bytes in flight that a memory-bound row needs
            long long j = g.lane;
            for (; j + (kLoads - 1) * g.width < cols; j += kLoads * g.width) {
                T x[kLoads];
#pragma unroll
                for (int k = 0; k < kLoads; ++k) x[k] = value(z, bias, j + k * g.width);
#pragma unroll
                for (int k = 0; k < kLoads; ++k) {
                    if (cache != nullptr) cache[j + k * g.width] = x[k];
                    stats_push(st, x[k]);
                }
            }
            for (; j < cols; j += g.width) {
                const T x = value(z, bias, j);
                if (cache != nullptr) cache[j] = x;
                stats_push(st, x);
            }
        }
        return group_merge<T, WARP_PER_ROW>(st);
    }

    // emit(j, value j) for each column j of the share, from the kept copy when there is one.
    template <typename Emit>
    __device__ __forceinline__ void for_each(const T* z, const T* bias, long long cols, const RowGroup& g,
                                             Emit emit) const {
        if (SLOTS > 0) {
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) {
                const int j = g.lane + k * kStride;
                if (j < cols) emit(j, v[k]);
            }
        } else if (cache != nullptr) {
            for (long long j = g.lane; j < cols; j += g.width) emit(j, cache[j]);
        } else {
            // the second read, kLoads at a time (emit may store over z: only what was read)
            long long j = g.lane;
            for (; j + (kLoads - 1) * g.width < cols; j += kLoads * g.width) {
                T x[kLoads];
#pragma unroll
                for (int k = 0; k < kLoads; ++k) x[k] = value(z, bias, j + k * g.width);
#pragma unroll
                for (int k = 0; k < kLoads; ++k) emit(j + k * g.width, x[k]);
            }
            for (; j < cols; j += g.width) emit(j, value(z, bias, j));
        }
    }

    static __device__ __forceinline__ T value(const T* z, const T* bias, long long j) {
        return bias != nullptr ? z[j] + bias[j] : z[j];
    }
};

// The smallest v over the row group (every thread gets it): the first column that holds
// the row's maximum, for the argmax a classifier predicts (ties go to the first, as
// NumPy's argmax).
template <bool WARP_PER_ROW>
__device__ __forceinline__ long long group_min(long long v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const long long other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = other < v ? other : v;
    }
    if (WARP_PER_ROW) return v;
    __shared__ long long warp_min[32];
    if ((threadIdx.x & 31) == 0) warp_min[threadIdx.x >> 5] = v;
    __syncthreads();
    long long total = warp_min[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) total = warp_min[w] < total ? warp_min[w] : total;
    __syncthreads();  // the shared slots are reused by the next row
    return total;
}

// The block's dynamic shared memory as a row cache of T (null when the launch gave none).
template <typename T>
__device__ __forceinline__ T* shared_row_cache(int use_cache) {
    extern __shared__ double gn_dynamic_smem[];  // double: aligned for either type
    return use_cache ? reinterpret_cast<T*>(gn_dynamic_smem) : nullptr;
}

// ---- fused softmax + cross-entropy + gradient ---------------------------------------------
// For each row n with label y = labels[n] and values z_nj (plus bias[j] when has_bias):
//   row_loss[n] = s_n * (log sum_j exp(z_nj - m) - (z_ny - m))          (m = max_j z_nj)
//   grad[n, j]  = ((exp((z_nj - m) - log sum exp) - [j == y]) / rows) * s_n
// with s_n = row_scale[n] when has_scale, else 1 (unscaled, bit for bit). With has_bias the
// logits' bias is added here (the forward pass leaves it to this kernel) and z + bias is
// written back into logits; with has_hits, hits[n] = 1 when the first column holding the
// row's maximum is y (the classifier's prediction is right), else 0. Matches
// NumpyBackend.softmax_xent; the mean loss, sum(row_loss) / rows, goes to *loss_out from the
// last block to finish (gn_finish_mean: a fixed order, one launch). grad may alias logits:
// a row is read in full before the group's merge, and afterwards each element is written by
// the thread that read it. A label outside
// [0, cols) gives a NaN row loss (so the step is flagged non-finite on the device) instead
// of a read out of bounds. Arrays a flag turns off are passed but never read.
// Launch: softmax_xent_warp_*: block 256 (8 rows per block), `slots` in {1, 4, 32} with
// 32 * slots >= cols (cols <= 1024). softmax_xent_block_*: one block (256, 512 or 1024
// threads) per row; with use_cache, dynamic shared memory of cols * sizeof(T) bytes.
// Grids are capped; both grid-stride over rows.
template <typename T>
struct XentArgs {
    T* logits;
    const T* bias;         // null: none
    const long long* labels;
    const T* row_scale;    // null: none
    long long rows, cols;
    T* grad;
    double* row_loss;
    unsigned char* hits;   // null: none
};

template <typename T>
__device__ __forceinline__ XentArgs<T> xent_args(T* logits, const T* bias, int has_bias, const long long* labels,
                                                 const T* row_scale, int has_scale, long long rows, long long cols,
                                                 T* grad, double* row_loss, unsigned char* hits, int has_hits) {
    XentArgs<T> a;
    a.logits = logits;
    a.bias = has_bias ? bias : nullptr;
    a.labels = labels;
    a.row_scale = has_scale ? row_scale : nullptr;
    a.rows = rows;
    a.cols = cols;
    a.grad = grad;
    a.row_loss = row_loss;
    a.hits = has_hits ? hits : nullptr;
    return a;
}

template <typename T, bool WARP_PER_ROW, int SLOTS>
__device__ void softmax_xent_rows(const XentArgs<T>& a, T* cache) {
    const RowGroup g = row_group<WARP_PER_ROW>();
    const T n_rows = T(a.rows);
    const long long cols = a.cols;
    for (long long row = g.first_row; row < a.rows; row += g.row_step) {
        T* z = a.logits + row * cols;
        T* out = a.grad + row * cols;
        RowShare<T, WARP_PER_ROW, SLOTS> share;
        share.cache = cache;
        const RowStats<T> st = share.load(z, a.bias, cols, g);
        const T log_sum = gn_log(st.sum);
        const long long y = a.labels[row];
        const T scale = a.row_scale != nullptr ? a.row_scale[row] : T(1);
        long long first_max = cols;
        share.for_each(z, a.bias, cols, g, [&](long long j, T x) {
            const T shifted = x - st.max;
            T p = gn_exp(shifted - log_sum);
            if (j == y) {
                const T loss = log_sum - shifted;
                a.row_loss[row] = (double)(a.row_scale != nullptr ? loss * scale : loss);
                p -= T(1);
            }
            if (x == st.max && j < first_max) first_max = j;
            if (a.bias != nullptr) z[j] = x;     // the logits, for what reads them after the step
            out[j] = a.row_scale != nullptr ? (p / n_rows) * scale : p / n_rows;
        });
        if (a.hits != nullptr) {
            const long long predicted = group_min<WARP_PER_ROW>(first_max);
            if (g.lane == 0) a.hits[row] = predicted == y ? 1 : 0;
        }
        if (g.lane == 0 && (y < 0 || y >= cols)) a.row_loss[row] = gn_nan<double>();
    }
}

template <typename T>
__device__ void softmax_xent_warp(const XentArgs<T>& a, int slots) {
    switch (slots) {
        case 1: softmax_xent_rows<T, true, 1>(a, nullptr); break;
        case 4: softmax_xent_rows<T, true, 4>(a, nullptr); break;
        case 32: softmax_xent_rows<T, true, 32>(a, nullptr); break;
        default:
            gn_fill_nan(a.grad, a.rows * a.cols);
            gn_fill_nan(a.row_loss, a.rows);
            break;
    }
}

// Every entry point takes the same arguments but its last int: `slots` (warp, block_regs)
// or `use_cache` (block).
extern "C" __global__ void __launch_bounds__(256) softmax_xent_warp_f32(
        float* logits, const float* bias, int has_bias, const long long* labels, const float* row_scale,
        int has_scale, long long rows, long long cols, float* grad, double* row_loss, unsigned char* hits,
        int has_hits, float* loss_out, unsigned* arrivals, int slots) {
    softmax_xent_warp<float>(xent_args(logits, bias, has_bias, labels, row_scale, has_scale, rows, cols,
                                   grad, row_loss, hits, has_hits), slots);
    gn_finish_mean(row_loss, rows, (double)rows, loss_out, arrivals);
}
extern "C" __global__ void __launch_bounds__(256) softmax_xent_warp_f64(
        double* logits, const double* bias, int has_bias, const long long* labels, const double* row_scale,
        int has_scale, long long rows, long long cols, double* grad, double* row_loss, unsigned char* hits,
        int has_hits, double* loss_out, unsigned* arrivals, int slots) {
    softmax_xent_warp<double>(xent_args(logits, bias, has_bias, labels, row_scale, has_scale, rows, cols,
                                   grad, row_loss, hits, has_hits), slots);
    gn_finish_mean(row_loss, rows, (double)rows, loss_out, arrivals);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_f32(
        float* logits, const float* bias, int has_bias, const long long* labels, const float* row_scale,
        int has_scale, long long rows, long long cols, float* grad, double* row_loss, unsigned char* hits,
        int has_hits, float* loss_out, unsigned* arrivals, int use_cache) {
    softmax_xent_rows<float, false, 0>(xent_args(logits, bias, has_bias, labels, row_scale, has_scale, rows, cols,
                                   grad, row_loss, hits, has_hits), shared_row_cache<float>(use_cache));
    gn_finish_mean(row_loss, rows, (double)rows, loss_out, arrivals);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_f64(
        double* logits, const double* bias, int has_bias, const long long* labels, const double* row_scale,
        int has_scale, long long rows, long long cols, double* grad, double* row_loss, unsigned char* hits,
        int has_hits, double* loss_out, unsigned* arrivals, int use_cache) {
    softmax_xent_rows<double, false, 0>(xent_args(logits, bias, has_bias, labels, row_scale, has_scale, rows, cols,
                                   grad, row_loss, hits, has_hits), shared_row_cache<double>(use_cache));
    gn_finish_mean(row_loss, rows, (double)rows, loss_out, arrivals);
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
__device__ void softmax_xent_block_regs(const XentArgs<T>& a, int slots) {
    // a launch the launcher never makes (block size, a slot count without an instance) shows as NaN
    switch (block_regs_launch_ok<T>(slots) ? slots : 0) {
        case 2: softmax_xent_rows<T, false, 2>(a, nullptr); break;
        case 4: softmax_xent_rows<T, false, 4>(a, nullptr); break;
        case 8: softmax_xent_rows<T, false, 8>(a, nullptr); break;
        case 16: softmax_xent_rows<T, false, 16>(a, nullptr); break;
        case 32:   // float only: block_regs_launch_ok refuses 32 doubles
            if constexpr (sizeof(T) == 4) softmax_xent_rows<T, false, 32>(a, nullptr);
            break;
        default:
            gn_fill_nan(a.grad, a.rows * a.cols);
            gn_fill_nan(a.row_loss, a.rows);
            break;
    }
}

extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_regs_f32(
        float* logits, const float* bias, int has_bias, const long long* labels, const float* row_scale,
        int has_scale, long long rows, long long cols, float* grad, double* row_loss, unsigned char* hits,
        int has_hits, float* loss_out, unsigned* arrivals, int slots) {
    softmax_xent_block_regs<float>(xent_args(logits, bias, has_bias, labels, row_scale, has_scale, rows, cols,
                                   grad, row_loss, hits, has_hits), slots);
    gn_finish_mean(row_loss, rows, (double)rows, loss_out, arrivals);
}
extern "C" __global__ void __launch_bounds__(1024) softmax_xent_block_regs_f64(
        double* logits, const double* bias, int has_bias, const long long* labels, const double* row_scale,
        int has_scale, long long rows, long long cols, double* grad, double* row_loss, unsigned char* hits,
        int has_hits, double* loss_out, unsigned* arrivals, int slots) {
    softmax_xent_block_regs<double>(xent_args(logits, bias, has_bias, labels, row_scale, has_scale, rows, cols,
                                   grad, row_loss, hits, has_hits), slots);
    gn_finish_mean(row_loss, rows, (double)rows, loss_out, arrivals);
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
        const RowStats<T> st = share.load(z, nullptr, cols, g);
        share.for_each(z, nullptr, cols, g, [&](long long j, T x) { out[j] = gn_exp(x - st.max) / st.sum; });
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
