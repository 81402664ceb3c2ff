// Mean squared error at the output, fused with the output activation's derivative.
//
// Activation ids and parameters as in activations.cu (generated from gpunet/activations.py:
// act_derivative, GN_FOR_EACH_ACTIVATION); block_sum_256 and gn_fill_nan come from
// common.cuh. An id without a case writes NaN into grad and block_sums.
// Softmax outputs are row-wise and are left to the reference implementation.

// ---- MSE gradient and per-block squared error ---------------------------------------------
// d = a - y;  grad = ((d / rows) * s_row) * f'(a);  block_sums[block] = sum over the block's
// elements of s_row * d^2 (in double); s_row = row_scale[row] with has_scale, else 1 (then
// no product: unscaled bit for bit). The loss 1/(2 rows) * sum block_sums goes to *loss_out
// from the last block to finish (gn_finish_mean: a fixed order, one launch). In a fit step,
// with has_bias, a holds z = A W of the output layer: a <- f(z + bias[col]) first (the
// output layer's bias and activation, left to this kernel by the forward pass), written back.
// Matches NumpyBackend.mse_grad. grad may alias a (each element is read before the same
// thread writes it). Arrays a flag turns off are passed but never read.
// Launch: 1-D grid-stride over rows*cols elements, block exactly 256, grid G fixed by the
// size (so block_sums has G entries and the sum order depends on the shape only).
template <typename T, int KIND>
__device__ void mse_grad_loop(T* a, const T* bias, int has_bias, const T* y, const T* row_scale, int has_scale,
                              long long rows, long long cols, T p0, T p1, T* grad, double* block_sums) {
    const long long size = rows * cols;
    const T n_rows = T(rows);
    double sq = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < size) {
        long long row = i / cols, col = i % cols;
        const long long row_step = stride / cols, col_step = stride % cols;
        for (; i < size; i += stride) {
            T ai = a[i];
            if (has_bias) {
                ai = act_forward<T, KIND>(ai + bias[col], p0, p1);
                a[i] = ai;
            }
            const T d = ai - y[i];
            T g = d / n_rows;
            double sq_i = (double)d * (double)d;
            if (has_scale) {
                const T r = row_scale[row];
                g = g * r;
                sq_i = (double)((d * d) * r);
            }
            sq += sq_i;
            grad[i] = g * act_derivative<T, KIND>(ai, p0, p1);
            row += row_step;
            col += col_step;
            if (col >= cols) {
                col -= cols;
                row += 1;
            }
        }
    }
    const double total = block_sum_256(sq);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
}

template <typename T>
__device__ void mse_grad(T* a, const T* bias, int has_bias, const T* y, const T* row_scale, int has_scale,
                         long long rows, long long cols, int kind, T p0, T p1, T* grad, double* block_sums,
                         T* loss_out, unsigned* arrivals) {
    switch (kind) {
#define GN_CASE(KIND) \
        case KIND: \
            mse_grad_loop<T, KIND>(a, bias, has_bias, y, row_scale, has_scale, rows, cols, p0, p1, grad, block_sums); \
            break;
        GN_FOR_EACH_ACTIVATION(GN_CASE)
#undef GN_CASE
        default:
            gn_fill_nan(grad, rows * cols);
            if (threadIdx.x == 0) block_sums[blockIdx.x] = gn_nan<double>();
            break;
    }
    gn_finish_mean(block_sums, (long long)gridDim.x, 2.0 * (double)rows, loss_out, arrivals);
}

extern "C" __global__ void mse_grad_f32(float* a, const float* bias, int has_bias, const float* y,
                                        const float* row_scale, int has_scale, long long rows, long long cols,
                                        int kind, float p0, float p1, float* grad, double* block_sums,
                                        float* loss_out, unsigned* arrivals) {
    mse_grad<float>(a, bias, has_bias, y, row_scale, has_scale, rows, cols, kind, p0, p1, grad, block_sums,
                    loss_out, arrivals);
}
extern "C" __global__ void mse_grad_f64(double* a, const double* bias, int has_bias, const double* y,
                                        const double* row_scale, int has_scale, long long rows, long long cols,
                                        int kind, double p0, double p1, double* grad, double* block_sums,
                                        double* loss_out, unsigned* arrivals) {
    mse_grad<double>(a, bias, has_bias, y, row_scale, has_scale, rows, cols, kind, p0, p1, grad, block_sums,
                     loss_out, arrivals);
}
