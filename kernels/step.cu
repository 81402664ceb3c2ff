// The bookkeeping around a training step of `fit`, each piece fused into one launch: the
// batch gather before the forward pass, and after the backward pass the "finish" that turns
// the batch loss, the classifier's hits and the flat gradient into the epoch's running sums,
// the non-finite flag and the clipping factor the optimizer reads.
// A regressor's running metric (per-output squared error) has a kernel of its own.
//
// Like reduce.cu, every sum is accumulated in double in an order fixed by the shape, never
// with atomics: a step's results are bitwise reproducible. block_sum_256 comes from
// common.cuh (once per kernel); the finish needs two block sums, so it has its own.

// ---- the batch gather ----------------------------------------------------------------------
// dst_k[r, :] = src_k[idx[r], :] for r < rows, for up to three row-major arrays k (features,
// targets, weights), copied as 32-bit words (every gpunet dtype is a multiple of 4 bytes
// wide): words_k per row, 0 for an absent array. An index outside [0, src_rows) fills its
// rows with all-one words: NaN features and weights, label -1, which the loss turns into a
// NaN and the step into a flagged, skipped one (never a read out of bounds).
// The indices are idx[first + r] with first = *step * step_stride: a step of a CUDA graph
// reads its batch's place in the epoch's order from device memory (eager steps pass a zero
// step). Matches NumpyBackend.gather_rows. Launch: 1-D grid-stride over
// rows * (w0 + w1 + w2) words, block 256.
extern "C" __global__ void gather_rows_u32(const long long* idx, const long long* step, long long step_stride,
                                           long long rows, long long src_rows,
                                           const unsigned* src0, unsigned* dst0, long long words0,
                                           const unsigned* src1, unsigned* dst1, long long words1,
                                           const unsigned* src2, unsigned* dst2, long long words2) {
    const long long per_row = words0 + words1 + words2;
    const long long total = rows * per_row;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = *step * step_stride;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const long long r = i / per_row;
        long long k = i - r * per_row;
        const long long s = idx[first + r];
        const bool ok = s >= 0 && s < src_rows;
        if (k < words0) {
            dst0[r * words0 + k] = ok ? src0[s * words0 + k] : 0xffffffffu;
            continue;
        }
        k -= words0;
        if (k < words1) {
            dst1[r * words1 + k] = ok ? src1[s * words1 + k] : 0xffffffffu;
            continue;
        }
        k -= words1;
        dst2[r * words2 + k] = ok ? src2[s * words2 + k] : 0xffffffffu;
    }
}

// ---- a graph's step counter ----------------------------------------------------------------
// *counter += 1: the last node of a captured step, so that the next replay reads its own
// batch and its own row of the optimizer's per-step scalars. Launch: one block, one thread.
extern "C" __global__ void advance_step_i64(long long* counter) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *counter += 1;
}

// ---- the finish of a step ------------------------------------------------------------------
// Sum of v over a block of exactly 256 threads in a fixed tree order, valid in thread 0;
// `slots` is the caller's shared array, free again when this returns.
__device__ __forceinline__ double finish_block_sum(double v, double* slots) {
    slots[threadIdx.x] = v;
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if (threadIdx.x < half) slots[threadIdx.x] += slots[threadIdx.x + half];
        __syncthreads();
    }
    const double total = slots[0];
    __syncthreads();
    return total;
}

// One block of 256 threads, after the loss and the backward pass of a step:
//   gss     = sum of grads[i]^2 in double over n_grads entries, or, with use_grad_parts, the
//             sum of the n_grad_parts partial sums in grad_parts (sumsq_partial's, for long
//             buffers); then rounded to T, as the unfused sumsq gave it
//   bad    |= *loss or gss not finite
//   scale   = clip_norm > 0 ? min(1, clip_norm / (sqrt(gss) + 1e-12)) : 1, in T
//   sums[0] += (double)(*loss * w), w = *weight_total with use_weight_total (the batch's
//              sample-weight sum, left on the device), else (T)batch_weight (its row count)
//   sums[1] += rows r < hit_rows whose hit_cols bytes hits[r, :] are all nonzero (a
//              classifier's right predictions; untouched without count_hits)
// Arrays that a flag turns off are still passed (any array of their type), never read.
// Matches NumpyBackend.finish_step (the CuPy ops it replaces computed the same).
template <typename T>
__device__ void finish_step(const T* loss, const T* grads, long long n_grads, const double* grad_parts,
                            long long n_grad_parts, int use_grad_parts, const unsigned char* hits,
                            long long hit_rows, long long hit_cols, int count_hits, double batch_weight,
                            const T* weight_total, int use_weight_total, double clip_norm, double* sums,
                            bool* bad, T* scale) {
    __shared__ double slots[256];
    double acc = 0.0;
    if (use_grad_parts) {
        for (long long i = threadIdx.x; i < n_grad_parts; i += blockDim.x) acc += grad_parts[i];
    } else {
        for (long long i = threadIdx.x; i < n_grads; i += blockDim.x) {
            const double g = (double)grads[i];
            acc += g * g;
        }
    }
    const double gss = finish_block_sum(acc, slots);

    acc = 0.0;
    if (count_hits) {
        for (long long r = threadIdx.x; r < hit_rows; r += blockDim.x) {
            bool all = true;
            for (long long c = 0; c < hit_cols; ++c) all = all && hits[r * hit_cols + c] != 0;
            acc += all ? 1.0 : 0.0;
        }
    }
    const double hit_count = finish_block_sum(acc, slots);

    if (threadIdx.x == 0) {
        const T l = *loss;
        const T gss_t = (T)gss;
        // isfinite without math.h: x - x is 0 for a finite x, NaN for an infinity or a NaN
        if (!((l - l) == T(0) && (gss_t - gss_t) == T(0))) *bad = true;
        T s = T(1);
        if (clip_norm > 0.0) {
            const T ratio = (T)clip_norm / (gn_sqrt(gss_t) + (T)1e-12);
            s = ratio < T(1) ? ratio : T(1);
        }
        *scale = s;
        sums[0] += (double)(l * (use_weight_total ? *weight_total : (T)batch_weight));
        if (count_hits) sums[1] += hit_count;
    }
}

extern "C" __global__ void __launch_bounds__(256) finish_step_f32(
        const float* loss, const float* grads, long long n_grads, const double* grad_parts, long long n_grad_parts,
        int use_grad_parts, const unsigned char* hits, long long hit_rows, long long hit_cols, int count_hits,
        double batch_weight, const float* weight_total, int use_weight_total, double clip_norm, double* sums,
        bool* bad, float* scale) {
    finish_step<float>(loss, grads, n_grads, grad_parts, n_grad_parts, use_grad_parts, hits, hit_rows, hit_cols,
                       count_hits, batch_weight, weight_total, use_weight_total, clip_norm, sums, bad, scale);
}
extern "C" __global__ void __launch_bounds__(256) finish_step_f64(
        const double* loss, const double* grads, long long n_grads, const double* grad_parts,
        long long n_grad_parts, int use_grad_parts, const unsigned char* hits, long long hit_rows,
        long long hit_cols, int count_hits, double batch_weight, const double* weight_total, int use_weight_total,
        double clip_norm, double* sums, bool* bad, double* scale) {
    finish_step<double>(loss, grads, n_grads, grad_parts, n_grad_parts, use_grad_parts, hits, hit_rows, hit_cols,
                        count_hits, batch_weight, weight_total, use_weight_total, clip_norm, sums, bad, scale);
}

// ---- a regressor's running metric ----------------------------------------------------------
// sums[c] += sum_r (pred(out[r, c]) - targets[r, c])^2, pred the identity (exp_outputs 0) or
// exp (1: a Poisson model's logits), in double. Block (32, 8) as reduce.cu's column_sums
// with one chunk: threadIdx.x walks 32 adjacent columns, threadIdx.y rows y, y + 8, ... in
// order, the 8 lanes added in lane order; grid.x grid-strides over 32-column tiles.
// Matches NumpyBackend.squared_error_sums.
template <typename T>
__device__ void squared_error_sums(const T* out, const T* targets, long long rows, long long cols, int exp_outputs,
                                   double* sums) {
    __shared__ double lanes[8][33];
    for (long long tile = blockIdx.x; tile * 32 < cols; tile += gridDim.x) {
        const long long col = tile * 32 + threadIdx.x;
        double acc = 0.0;
        if (col < cols) {
            for (long long r = threadIdx.y; r < rows; r += 8) {
                const T o = out[r * cols + col];
                const T d = (exp_outputs ? gn_exp(o) : o) - targets[r * cols + col];
                acc += (double)(d * d);
            }
        }
        lanes[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && col < cols) {
            double total = lanes[0][threadIdx.x];
            for (int lane = 1; lane < 8; ++lane) total += lanes[lane][threadIdx.x];
            sums[col] += total;
        }
        __syncthreads();
    }
}

extern "C" __global__ void squared_error_sums_f32(const float* out, const float* targets, long long rows,
                                                  long long cols, int exp_outputs, double* sums) {
    squared_error_sums<float>(out, targets, rows, cols, exp_outputs, sums);
}
extern "C" __global__ void squared_error_sums_f64(const double* out, const double* targets, long long rows,
                                                  long long cols, int exp_outputs, double* sums) {
    squared_error_sums<double>(out, targets, rows, cols, exp_outputs, sums);
}
