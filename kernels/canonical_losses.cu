// Losses paired with their canonical output link, fused with their gradient: the output layer
// keeps its logits z, and the gradient at z is (f(z) - y) / N.
//
//   sigmoid_bce:  f = sigmoid, binary cross-entropy per element
//                     -[y log s(z) + (1 - y) log(1 - s(z))] = softplus(z) - y z
//                 Matches NumpyBackend.sigmoid_bce (binary and multilabel classification).
//   poisson_exp:  f = exp, half the Poisson deviance per element
//                     exp(z) - y z + y log y - y          (0 log 0 = 0)
//                 Matches NumpyBackend.poisson_exp (a Poisson regressor's log-mean).
//
// Both: grad[i] = (f(z_i) - y_i) / rows, times row_scale[row] when has_scale (per-example
// weights, see gpunet/losses.py); block_sums[block] = the block's sum of the per-element loss
// terms (times row_scale), in double; the mean loss, sum(block_sums) / rows, goes to
// *loss_out from the last block to finish (gn_finish_mean: a fixed order, one launch). In a
// fit step: with has_bias, z_i is z[i] + bias[col] (the logits' bias, left to this kernel by
// the forward pass), written back into z; with has_hits, hits[i] = 1 where the predicted
// label (z_i > 0) is the target's (y_i > 0.5). Arrays a flag turns off are passed but never
// read. grad may alias z (each element is read before the same thread writes it). Stable for any z: exp only ever sees -|z| in the sigmoid, and
// softplus(z) = max(z, 0) + log1p(exp(-|z|)); an overflowing exp(z) in the Poisson case is the
// inf the reference computes too.
// Launch: 1-D grid-stride over rows*cols elements, block exactly 256, grid fixed by the size
// (reduction_grid), so the sum order depends on the shape only. gn_exp, gn_log, gn_log1p,
// gn_abs and block_sum_256 come from common.cuh.

template <typename T>
__device__ __forceinline__ void bce_term(T z, T y, T& link, T& term) {
    const T e = gn_exp(-gn_abs(z));                       // in (0, 1]
    link = (z >= T(0) ? T(1) : e) / (T(1) + e);           // s(z); a NaN z takes the e branch, stays NaN
    term = (z > T(0) ? z : T(0)) + gn_log1p(e) - y * z;   // softplus(z) - y z
}

template <typename T>
__device__ __forceinline__ void poisson_term(T z, T y, T& link, T& term) {
    link = gn_exp(z);
    const T y_log_y = y > T(0) ? y * gn_log(y) : T(0);
    term = link - y * z + y_log_y - y;
}

template <typename T, bool POISSON>
__device__ void canonical_loss(T* z, const T* bias, int has_bias, const T* y, const T* row_scale, int has_scale,
                               long long rows, long long cols, T* grad, double* block_sums, unsigned char* hits,
                               int has_hits, T* loss_out, unsigned* arrivals) {
    const long long size = rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const T n_rows = T(rows);
    double total = 0.0;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < size) {
        // the row and column are carried along the loop (one division per thread, none per element)
        long long row = i / cols, col = i % cols;
        const long long row_step = stride / cols, col_step = stride % cols;
        for (; i < size; i += stride) {
            T zi = z[i];
            if (has_bias) {
                zi = zi + bias[col];
                z[i] = zi;        // the logits, for what reads them after the step
            }
            const T yi = y[i];
            T link, term;
            if constexpr (POISSON) {
                poisson_term<T>(zi, yi, link, term);
            } else {
                bce_term<T>(zi, yi, link, term);
            }
            if (has_hits) hits[i] = (zi > T(0)) == (yi > T(0.5)) ? 1 : 0;
            T g = (link - yi) / n_rows;
            if (has_scale) {
                const T r = row_scale[row];
                g = g * r;
                term = term * r;
            }
            grad[i] = g;
            total += (double)term;
            row += row_step;
            col += col_step;
            if (col >= cols) {
                col -= cols;
                row += 1;
            }
        }
    }
    const double block_total = block_sum_256(total);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = block_total;
    gn_finish_mean(block_sums, (long long)gridDim.x, (double)rows, loss_out, arrivals);
}

extern "C" __global__ void sigmoid_bce_f32(
        float* z, const float* bias, int has_bias, const float* y, const float* row_scale, int has_scale, long long rows,
        long long cols, float* grad, double* block_sums, unsigned char* hits, int has_hits, float* loss_out,
        unsigned* arrivals) {
    canonical_loss<float, false>(z, bias, has_bias, y, row_scale, has_scale, rows, cols, grad, block_sums, hits,
                                  has_hits, loss_out, arrivals);
}
extern "C" __global__ void sigmoid_bce_f64(
        double* z, const double* bias, int has_bias, const double* y, const double* row_scale, int has_scale, long long rows,
        long long cols, double* grad, double* block_sums, unsigned char* hits, int has_hits, double* loss_out,
        unsigned* arrivals) {
    canonical_loss<double, false>(z, bias, has_bias, y, row_scale, has_scale, rows, cols, grad, block_sums, hits,
                                  has_hits, loss_out, arrivals);
}
extern "C" __global__ void poisson_exp_f32(
        float* z, const float* bias, int has_bias, const float* y, const float* row_scale, int has_scale, long long rows,
        long long cols, float* grad, double* block_sums, unsigned char* hits, int has_hits, float* loss_out,
        unsigned* arrivals) {
    canonical_loss<float, true>(z, bias, has_bias, y, row_scale, has_scale, rows, cols, grad, block_sums, hits,
                                  has_hits, loss_out, arrivals);
}
extern "C" __global__ void poisson_exp_f64(
        double* z, const double* bias, int has_bias, const double* y, const double* row_scale, int has_scale, long long rows,
        long long cols, double* grad, double* block_sums, unsigned char* hits, int has_hits, double* loss_out,
        unsigned* arrivals) {
    canonical_loss<double, true>(z, bias, has_bias, y, row_scale, has_scale, rows, cols, grad, block_sums, hits,
                                  has_hits, loss_out, arrivals);
}
