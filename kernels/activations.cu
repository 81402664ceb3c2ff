// Element-wise activations of the dense layers: bias + activation forward, and the
// activation derivative times the incoming gradient, read from the saved output.
//
// The activations themselves are declared once, in gpunet/activations.py: each class with a
// `kernel_id` gives its id, its two kernel parameters p0, p1 (`kernel_params`) and the bodies
// of f(z) and f'(a) (a = f(z), the saved output). gpunet/cuda/sources.py writes them in front
// of this file as act_forward<T, KIND>, act_derivative<T, KIND> and GN_FOR_EACH_ACTIVATION,
// the list of ids. Softmax is row-wise and lives in softmax_xent.cu.
//
// Arrays are C-contiguous. Each kernel switches on `kind` once, outside its element loop,
// into a loop specialised for that activation; an id without a case writes NaN (never a
// silent identity). Entry points are extern "C" wrappers named <kernel>_f32 / <kernel>_f64
// around one template, so NVRTC and nvcc need no name mangling and no toolkit header. The
// scalar helpers (gn_exp, gn_fill_nan, ...) come from common.cuh.

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
#define GN_CASE(KIND) case KIND: bias_act_loop<T, KIND>(z, b, rows, cols, p0, p1); break;
        GN_FOR_EACH_ACTIVATION(GN_CASE)
#undef GN_CASE
        default: gn_fill_nan(z, rows * cols); break;
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
#define GN_CASE(KIND) case KIND: act_backward_loop<T, KIND>(grad, a, size, p0, p1); break;
        GN_FOR_EACH_ACTIVATION(GN_CASE)
#undef GN_CASE
        default: gn_fill_nan(grad, size); break;
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
