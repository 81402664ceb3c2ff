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
// terms (times row_scale), in double. The mean loss, sum(block_sums) / rows, is reduced in a
// fixed order by reduce.cu:sum_to_scalar. grad may alias z (each element is read before the
// same thread writes it). Stable for any z: exp only ever sees -|z| in the sigmoid, and
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
__device__ void canonical_loss(const T* z, const T* y, const T* row_scale, int has_scale, long long rows,
                               long long cols, T* grad, double* block_sums) {
    const long long size = rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const T n_rows = T(rows);
    double total = 0.0;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < size) {
        // the row is carried along the loop (one division per thread, none per element)
        long long row = i / cols, col = i % cols;
        const long long row_step = stride / cols, col_step = stride % cols;
        for (; i < size; i += stride) {
            T link, term;
            if constexpr (POISSON) {
                poisson_term<T>(z[i], y[i], link, term);
            } else {
                bce_term<T>(z[i], y[i], link, term);
            }
            T g = (link - y[i]) / n_rows;
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
}

extern "C" __global__ void sigmoid_bce_f32(const float* z, const float* y, const float* row_scale, int has_scale,
                                           long long rows, long long cols, float* grad, double* block_sums) {
    canonical_loss<float, false>(z, y, row_scale, has_scale, rows, cols, grad, block_sums);
}
extern "C" __global__ void sigmoid_bce_f64(const double* z, const double* y, const double* row_scale, int has_scale,
                                           long long rows, long long cols, double* grad, double* block_sums) {
    canonical_loss<double, false>(z, y, row_scale, has_scale, rows, cols, grad, block_sums);
}
extern "C" __global__ void poisson_exp_f32(const float* z, const float* y, const float* row_scale, int has_scale,
                                           long long rows, long long cols, float* grad, double* block_sums) {
    canonical_loss<float, true>(z, y, row_scale, has_scale, rows, cols, grad, block_sums);
}
extern "C" __global__ void poisson_exp_f64(const double* z, const double* y, const double* row_scale, int has_scale,
                                           long long rows, long long cols, double* grad, double* block_sums) {
    canonical_loss<double, true>(z, y, row_scale, has_scale, rows, cols, grad, block_sums);
}
