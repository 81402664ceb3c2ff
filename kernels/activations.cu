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

// ---- activation backward with the bias gradient ---------------------------------------------
// grad[r, c] <- grad[r, c] * f'(a[r, c]) in place (the incoming gradient becomes the layer's
// delta), and the column sums of the result, the layer's bias gradient, in the order of
// reduce.cu:column_sums (same block, chunks and lane order, so the sums equal act_backward
// followed by column_sums bit for bit): with one chunk into out, with more into
// partial[chunk, c] for reduce.cu:column_sums_finish. Matches NumpyBackend.act_backward with
// bias_grad. Launch: block (32, 8), grid (32-column tiles, chunks) as column_sums. grad and
// a may alias.
template <typename T, int KIND>
__device__ void act_backward_colsum_loop(T* grad, const T* a, long long rows, long long cols,
                                         long long rows_per_chunk, T p0, T p1, double* partial, T* out) {
    __shared__ double lanes[8][33];  // +1 column keeps the lane-sum reads off one bank
    const long long row_begin = (long long)blockIdx.y * rows_per_chunk;
    long long row_end = row_begin + rows_per_chunk;
    if (row_end > rows) row_end = rows;
    for (long long tile = blockIdx.x; tile * 32 < cols; tile += gridDim.x) {
        const long long col = tile * 32 + threadIdx.x;
        double acc = 0.0;
        if (col < cols) {
            for (long long r = row_begin + threadIdx.y; r < row_end; r += 8) {
                const long long i = r * cols + col;
                const T d = grad[i] * act_derivative<T, KIND>(a[i], p0, p1);
                grad[i] = d;
                acc += (double)d;
            }
        }
        lanes[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && col < cols) {
            double total = lanes[0][threadIdx.x];
            for (int lane = 1; lane < 8; ++lane) total += lanes[lane][threadIdx.x];
            if (gridDim.y == 1) out[col] = (T)total;
            else partial[(long long)blockIdx.y * cols + col] = total;
        }
        __syncthreads();  // lanes is reused by the next tile
    }
}

template <typename T>
__device__ void act_backward_colsum(T* grad, const T* a, long long rows, long long cols, long long rows_per_chunk,
                                    int kind, T p0, T p1, double* partial, T* out) {
    switch (kind) {
#define GN_CASE(KIND) \
        case KIND: act_backward_colsum_loop<T, KIND>(grad, a, rows, cols, rows_per_chunk, p0, p1, partial, out); break;
        GN_FOR_EACH_ACTIVATION(GN_CASE)
#undef GN_CASE
        default:
            gn_fill_nan(grad, rows * cols);
            gn_fill_nan(out, cols);
            break;
    }
}

extern "C" __global__ void act_backward_colsum_f32(float* grad, const float* a, long long rows, long long cols,
                                                   long long rows_per_chunk, int kind, float p0, float p1,
                                                   double* partial, float* out) {
    act_backward_colsum<float>(grad, a, rows, cols, rows_per_chunk, kind, p0, p1, partial, out);
}
extern "C" __global__ void act_backward_colsum_f64(double* grad, const double* a, long long rows, long long cols,
                                                   long long rows_per_chunk, int kind, double p0, double p1,
                                                   double* partial, double* out) {
    act_backward_colsum<double>(grad, a, rows, cols, rows_per_chunk, kind, p0, p1, partial, out);
}
