// Deterministic reductions: bias gradients (column sums) and the sum of squares of a flat
// vector (global gradient norm).
//
// Every partial sum is accumulated in double and combined in an order fixed by the shape
// and the launch configuration (which the launcher derives from the shape alone), never
// with atomics, so two calls on the same data give bitwise-identical results.

// block_sum_256 (a fixed-order 256-thread block sum) comes from common.cuh.

// ---- bias gradient: column sums ------------------------------------------------------------
// out[c] = sum_r x[r, c] for x (rows, cols) C-contiguous.  Matches NumpyBackend.bias_grad.
// Launch: block (32, 8): threadIdx.x walks 32 adjacent columns (coalesced reads of a row
// segment), threadIdx.y one of 8 row lanes. grid.x grid-strides over 32-column tiles;
// grid.y = chunks splits the rows into chunks of rows_per_chunk. Within a chunk a thread
// sums rows ty, ty+8, ... in order; the 8 lanes are then added in lane order. With one
// chunk the result goes to out; with more, each chunk writes partial[chunk, c] (double)
// and column_sums_finish adds the chunks in chunk order.
template <typename T>
__device__ void column_sums(const T* x, long long rows, long long cols, long long rows_per_chunk,
                            double* partial, T* out) {
    __shared__ double lanes[8][33];  // +1 column keeps the lane-sum reads off one bank
    const long long row_begin = (long long)blockIdx.y * rows_per_chunk;
    long long row_end = row_begin + rows_per_chunk;
    if (row_end > rows) row_end = rows;
    for (long long tile = blockIdx.x; tile * 32 < cols; tile += gridDim.x) {
        const long long col = tile * 32 + threadIdx.x;
        double acc = 0.0;
        if (col < cols) {
            for (long long r = row_begin + threadIdx.y; r < row_end; r += 8) acc += (double)x[r * cols + col];
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

extern "C" __global__ void column_sums_f32(const float* x, long long rows, long long cols,
                                           long long rows_per_chunk, double* partial, float* out) {
    column_sums<float>(x, rows, cols, rows_per_chunk, partial, out);
}
extern "C" __global__ void column_sums_f64(const double* x, long long rows, long long cols,
                                           long long rows_per_chunk, double* partial, double* out) {
    column_sums<double>(x, rows, cols, rows_per_chunk, partial, out);
}

// out[c] = sum_k partial[k, c] for k = 0 .. chunks-1 in order (second pass of column_sums).
// Launch: 1-D grid-stride over cols, block 256.
template <typename T>
__device__ void column_sums_finish(const double* partial, long long chunks, long long cols, T* out) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += stride) {
        double total = 0.0;
        for (long long k = 0; k < chunks; ++k) total += partial[k * cols + c];
        out[c] = (T)total;
    }
}

extern "C" __global__ void column_sums_finish_f32(const double* partial, long long chunks, long long cols,
                                                  float* out) {
    column_sums_finish<float>(partial, chunks, cols, out);
}
extern "C" __global__ void column_sums_finish_f64(const double* partial, long long chunks, long long cols,
                                                  double* out) {
    column_sums_finish<double>(partial, chunks, cols, out);
}

// ---- sum of squares ------------------------------------------------------------------------
// block_sums[b] = sum of x[i]^2 over the elements block b visits (in double): sumsq_partial
// leaves them (the finish of a fit step sums them, kernels/step.cu); sumsq also sums them,
// from the last block to finish (gn_finish_mean), into *out. Matches NumpyBackend.sumsq.
// Launch: 1-D grid-stride, block exactly 256, grid G fixed by the size (G entries written).
template <typename T>
__device__ void sumsq_partial(const T* x, long long size, double* block_sums) {
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const double v = (double)x[i];
        acc += v * v;
    }
    const double total = block_sum_256(acc);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
}

extern "C" __global__ void sumsq_partial_f32(const float* x, long long size, double* block_sums) {
    sumsq_partial<float>(x, size, block_sums);
}
extern "C" __global__ void sumsq_partial_f64(const double* x, long long size, double* block_sums) {
    sumsq_partial<double>(x, size, block_sums);
}
extern "C" __global__ void sumsq_f32(const float* x, long long size, double* block_sums, float* out,
                                     unsigned* arrivals) {
    sumsq_partial<float>(x, size, block_sums);
    gn_finish_mean(block_sums, (long long)gridDim.x, 1.0, out, arrivals);
}
extern "C" __global__ void sumsq_f64(const double* x, long long size, double* block_sums, double* out,
                                     unsigned* arrivals) {
    sumsq_partial<double>(x, size, block_sums);
    gn_finish_mean(block_sums, (long long)gridDim.x, 1.0, out, arrivals);
}
