// Element-wise activations of the dense layers: bias + activation forward, and the
// activation derivative times the incoming gradient, read from the saved output.
//
// Activation ids are the `kind` attributes of gpunet/activations.py; p0, p1 are its
// `kernel_params`:
//   0 identity    f(z) = z                      f' = 1
//   1 sigmoid     f(z) = c / (1 + exp(-beta z)) f' = beta * a * (1 - a / c)   p0 = c, p1 = beta
//   2 tanh        f(z) = tanh(z)                f' = 1 - a^2
//   3 relu        f(z) = max(z, 0)              f' = [a > 0]
//   4 leaky_relu  f(z) = z >= 0 ? z : slope*z   f' = a > 0 ? 1 : slope          p0 = slope
// (a = f(z) is the saved output.) Softmax (5) is row-wise and lives in softmax_xent.cu.
//
// Arrays are C-contiguous. Each kernel branches on `kind` once, outside its element loop,
// into a loop specialised for that activation. Entry points are extern "C" wrappers named
// <kernel>_f32 / <kernel>_f64 around one template, so NVRTC and nvcc need no name mangling
// and no toolkit header. The scalar helpers (gn_exp, ...) and act_derivative come from
// common.cuh, which gpunet/cuda.py puts in front of every topic.

// f(z) for one element. Written like the NumPy reference so the two round alike.
template <typename T, int KIND>
__device__ __forceinline__ T act_forward(T z, T p0, T p1) {
    if (KIND == 1) {
        // Stable sigmoid: exp only ever sees -|beta z| <= 0, so nothing overflows.
        const T bz = z * p1;
        const T e = gn_exp(-gn_abs(bz));
        const T num = bz >= T(0) ? T(1) : e;  // NaN goes to the e branch and stays NaN
        return (num / (T(1) + e)) * p0;
    } else if (KIND == 2) {
        return gn_tanh(z);
    } else if (KIND == 3) {
        return z < T(0) ? T(0) : z;            // NaN passes through, as np.maximum does
    } else if (KIND == 4) {
        return z < T(0) ? z * p0 : z;
    }
    return z;
}

// ---- bias + activation forward ------------------------------------------------------------
// z[r, c] <- f(z[r, c] + b[c]) in place; z (rows, cols), b (cols,).
// Matches NumpyBackend.bias_act (z += b; act.forward(z, out=z)).
// Launch: 1-D grid-stride over rows*cols elements, block 256, grid capped by the launcher.
// The column index is carried along the loop (one modulo per thread, none per element).
template <typename T, int KIND>
__device__ void bias_act_loop(T* __restrict__ z, const T* __restrict__ b,
                              long long rows, long long cols, T p0, T p1) {
    const long long size = rows * cols;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    long long col = i % cols;
    const long long col_step = stride % cols;
    for (; i < size; i += stride) {
        z[i] = act_forward<T, KIND>(z[i] + b[col], p0, p1);
        col += col_step;
        if (col >= cols) col -= cols;
    }
}

template <typename T>
__device__ void bias_act(T* z, const T* b, long long rows, long long cols, int kind, T p0, T p1) {
    switch (kind) {
        case 1: bias_act_loop<T, 1>(z, b, rows, cols, p0, p1); break;
        case 2: bias_act_loop<T, 2>(z, b, rows, cols, p0, p1); break;
        case 3: bias_act_loop<T, 3>(z, b, rows, cols, p0, p1); break;
        case 4: bias_act_loop<T, 4>(z, b, rows, cols, p0, p1); break;
        default: bias_act_loop<T, 0>(z, b, rows, cols, p0, p1); break;
    }
}

extern "C" __global__ void bias_act_f32(float* z, const float* b, long long rows, long long cols,
                                        int kind, float p0, float p1) {
    bias_act<float>(z, b, rows, cols, kind, p0, p1);
}
extern "C" __global__ void bias_act_f64(double* z, const double* b, long long rows, long long cols,
                                        int kind, double p0, double p1) {
    bias_act<double>(z, b, rows, cols, kind, p0, p1);
}

// ---- activation backward ------------------------------------------------------------------
// grad[i] <- grad[i] * f'(a[i]) in place, f' read from the saved output a (same shape).
// Matches NumpyBackend.act_backward (act.backward(grad, a, out=grad)).
// Launch: 1-D grid-stride over the elements, block 256. grad and a may alias (each element
// is read before it is written by the same thread), so no __restrict__ here.
template <typename T, int KIND>
__device__ void act_backward_loop(T* grad, const T* a, long long size, T p0, T p1) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        grad[i] = grad[i] * act_derivative<T, KIND>(a[i], p0, p1);
    }
}

template <typename T>
__device__ void act_backward(T* grad, const T* a, long long size, int kind, T p0, T p1) {
    switch (kind) {
        case 1: act_backward_loop<T, 1>(grad, a, size, p0, p1); break;
        case 2: act_backward_loop<T, 2>(grad, a, size, p0, p1); break;
        case 3: act_backward_loop<T, 3>(grad, a, size, p0, p1); break;
        case 4: act_backward_loop<T, 4>(grad, a, size, p0, p1); break;
        default: act_backward_loop<T, 0>(grad, a, size, p0, p1); break;
    }
}

extern "C" __global__ void act_backward_f32(float* grad, const float* a, long long size,
                                            int kind, float p0, float p1) {
    act_backward<float>(grad, a, size, kind, p0, p1);
}
extern "C" __global__ void act_backward_f64(double* grad, const double* a, long long size,
                                            int kind, double p0, double p1) {
    act_backward<double>(grad, a, size, kind, p0, p1);
}
