// Row-wise softmax, and softmax fused with the cross-entropy loss and its gradient.
//
// Each row of logits z (rows, cols) is handled by one "row group": a warp when the row is
// short (cols <= 1024, 8 rows per 256-thread block), a whole block when it is long. A group
// reads its row once, keeping an online running max m and sum s = sum exp(z - m) per thread
// (rescaled when m grows), merges those pairs across the group in a fixed tree order
// (shuffles, then shared memory in warp order), and then makes a second pass over the row,
// which is served from L1/L2, to write the outputs. No atomics: every result is bitwise
// reproducible for a given shape and launch configuration.
//
// The launcher picks the variant (warp_per_row = 1 or 0), block size and grid; grids are
// capped and the kernels grid-stride over rows.

// ---- scalar helpers ------------------------------------------------------------------------
__device__ __forceinline__ float gn_exp(float x) { return expf(x); }
__device__ __forceinline__ double gn_exp(double x) { return exp(x); }
__device__ __forceinline__ float gn_log(float x) { return logf(x); }
__device__ __forceinline__ double gn_log(double x) { return log(x); }

// -inf and NaN from their bit patterns: NVRTC has no math.h to define macros for them.
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float((int)0xff800000u); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}
__device__ __forceinline__ double nan_f64() { return __longlong_as_double(0x7ff8000000000000ll); }

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
    } else if (x != neg_inf<T>()) {
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

template <typename T, bool WARP_PER_ROW>
__device__ __forceinline__ RowStats<T> row_stats(const T* z, long long cols, const RowGroup& g) {
    RowStats<T> st;
    st.max = neg_inf<T>();
    st.sum = T(0);
    for (long long j = g.lane; j < cols; j += g.width) stats_push(st, z[j]);
    return group_merge<T, WARP_PER_ROW>(st);
}

// ---- fused softmax + cross-entropy + gradient ---------------------------------------------
// For each row n with label y = labels[n]:
//   row_loss[n] = log sum_j exp(z_nj - m) - (z_ny - m)            (double, m = max_j z_nj)
//   grad[n, j]  = (exp((z_nj - m) - log sum exp) - [j == y]) / rows
// Matches NumpyBackend.softmax_xent (the mean loss is reduced afterwards by
// reduce.cu:sum_to_scalar in a fixed order). grad may alias logits: a row is read in full
// before the group's merge, and in the second pass each element is read by the thread that
// then writes it. A label outside [0, cols) gives a NaN row loss (so the step is flagged
// non-finite on the device) instead of a read out of bounds.
// Launch: warp_per_row: block 256 (8 rows per block); else one block (256..1024 threads,
// a multiple of 32) per row; grid-stride over rows.
template <typename T, bool WARP_PER_ROW>
__device__ void softmax_xent_rows(const T* logits, const long long* labels, long long rows,
                                  long long cols, T* grad, double* row_loss) {
    const RowGroup g = row_group<WARP_PER_ROW>();
    const T n_rows = T(rows);
    for (long long row = g.first_row; row < rows; row += g.row_step) {
        const T* z = logits + row * cols;
        T* out = grad + row * cols;
        const RowStats<T> st = row_stats<T, WARP_PER_ROW>(z, cols, g);
        const T log_sum = gn_log(st.sum);
        const long long y = labels[row];
        for (long long j = g.lane; j < cols; j += g.width) {
            const T shifted = z[j] - st.max;
            T p = gn_exp(shifted - log_sum);
            if (j == y) {
                row_loss[row] = (double)(log_sum - shifted);
                p -= T(1);
            }
            out[j] = p / n_rows;
        }
        if (g.lane == 0 && (y < 0 || y >= cols)) row_loss[row] = nan_f64();
    }
}

template <typename T>
__device__ void softmax_xent(const T* logits, const long long* labels, long long rows, long long cols,
                             int warp_per_row, T* grad, double* row_loss) {
    if (warp_per_row) softmax_xent_rows<T, true>(logits, labels, rows, cols, grad, row_loss);
    else softmax_xent_rows<T, false>(logits, labels, rows, cols, grad, row_loss);
}

extern "C" __global__ void softmax_xent_f32(const float* logits, const long long* labels, long long rows,
                                            long long cols, int warp_per_row, float* grad,
                                            double* row_loss) {
    softmax_xent<float>(logits, labels, rows, cols, warp_per_row, grad, row_loss);
}
extern "C" __global__ void softmax_xent_f64(const double* logits, const long long* labels, long long rows,
                                            long long cols, int warp_per_row, double* grad,
                                            double* row_loss) {
    softmax_xent<double>(logits, labels, rows, cols, warp_per_row, grad, row_loss);
}

// ---- row-wise softmax (inference) ----------------------------------------------------------
// out[n, j] = exp(z_nj - m_n) / sum_k exp(z_nk - m_n).   Matches NumpyBackend.softmax.
// out may alias z. Launch as softmax_xent.
template <typename T, bool WARP_PER_ROW>
__device__ void softmax_rows(const T* z_all, long long rows, long long cols, T* out_all) {
    const RowGroup g = row_group<WARP_PER_ROW>();
    for (long long row = g.first_row; row < rows; row += g.row_step) {
        const T* z = z_all + row * cols;
        T* out = out_all + row * cols;
        const RowStats<T> st = row_stats<T, WARP_PER_ROW>(z, cols, g);
        for (long long j = g.lane; j < cols; j += g.width) out[j] = gn_exp(z[j] - st.max) / st.sum;
    }
}

template <typename T>
__device__ void softmax(const T* z, long long rows, long long cols, int warp_per_row, T* out) {
    if (warp_per_row) softmax_rows<T, true>(z, rows, cols, out);
    else softmax_rows<T, false>(z, rows, cols, out);
}

extern "C" __global__ void softmax_f32(const float* z, long long rows, long long cols, int warp_per_row,
                                       float* out) {
    softmax<float>(z, rows, cols, warp_per_row, out);
}
extern "C" __global__ void softmax_f64(const double* z, long long rows, long long cols, int warp_per_row,
                                       double* out) {
    softmax<double>(z, rows, cols, warp_per_row, out);
}
