// Mean squared error at the output, fused with the output activation's derivative.
//
// Activation ids and parameters as in activations.cu (generated from gpunet/activations.py:
// act_derivative, GN_FOR_EACH_ACTIVATION); block_sum_256 and gn_fill_nan come from
// common.cuh. An id without a case writes NaN into grad and block_sums.
// Softmax outputs are row-wise and are left to the reference implementation.

// ---- MSE gradient and per-block squared error ---------------------------------------------
// d = a - y;  grad = (d / rows) * f'(a);  block_sums[block] = sum over the block's elements
// of d^2 (in double). The loss 1/(2 rows) * sum d^2 is then reduced in a fixed order by
// reduce.cu:sum_to_scalar over block_sums. Matches NumpyBackend.mse_grad.
// grad may alias a (each element is read before the same thread writes it).
// Launch: 1-D grid-stride over rows*cols elements, block exactly 256, grid G fixed by the
// size (so block_sums has G entries and the sum order depends on the shape only).
template <typename T, int KIND>
__device__ void mse_grad_loop(const T* a, const T* y, long long size, T n_rows, T p0, T p1,
                              T* grad, double* block_sums) {
    double sq = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const T ai = a[i];
        const T d = ai - y[i];
        sq += (double)d * (double)d;
        grad[i] = (d / n_rows) * act_derivative<T, KIND>(ai, p0, p1);
    }
    const double total = block_sum_256(sq);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
}

template <typename T>
__device__ void mse_grad(const T* a, const T* y, long long rows, long long cols, int kind, T p0, T p1,
                         T* grad, double* block_sums) {
    const long long size = rows * cols;
    const T n_rows = T(rows);
    switch (kind) {
#define GN_CASE(KIND) case KIND: mse_grad_loop<T, KIND>(a, y, size, n_rows, p0, p1, grad, block_sums); break;
        GN_FOR_EACH_ACTIVATION(GN_CASE)
#undef GN_CASE
        default:
            gn_fill_nan(grad, size);
            if (threadIdx.x == 0) block_sums[blockIdx.x] = gn_nan<double>();
            break;
    }
}

extern "C" __global__ void mse_grad_f32(const float* a, const float* y, long long rows, long long cols,
                                        int kind, float p0, float p1, float* grad, double* block_sums) {
    mse_grad<float>(a, y, rows, cols, kind, p0, p1, grad, block_sums);
}
extern "C" __global__ void mse_grad_f64(const double* a, const double* y, long long rows, long long cols,
                                        int kind, double p0, double p1, double* grad, double* block_sums) {
    mse_grad<double>(a, y, rows, cols, kind, p0, p1, grad, block_sums);
}
