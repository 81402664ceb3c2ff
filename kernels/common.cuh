// Device helpers shared by every topic. gpunet/cuda/sources.py compiles each kernels/<topic>.cu as
// this file followed by the topic's source (a `#line` directive keeps error positions in the
// topic file), so a formula that two topics need is written once. No toolkit header: NVRTC
// has none, and these overloads pick the float or double libdevice function themselves.

__device__ __forceinline__ float gn_exp(float x) { return expf(x); }
__device__ __forceinline__ double gn_exp(double x) { return exp(x); }
__device__ __forceinline__ float gn_log(float x) { return logf(x); }
__device__ __forceinline__ double gn_log(double x) { return log(x); }
__device__ __forceinline__ float gn_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gn_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float gn_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double gn_abs(double x) { return fabs(x); }
__device__ __forceinline__ float gn_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ float gn_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double gn_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ double gn_log1p(double x) { return log1p(x); }

// -inf and NaN from their bit patterns: NVRTC has no math.h to define macros for them.
template <typename T> __device__ __forceinline__ T gn_neg_inf();
template <> __device__ __forceinline__ float gn_neg_inf<float>() { return __int_as_float((int)0xff800000u); }
template <> __device__ __forceinline__ double gn_neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}
template <typename T> __device__ __forceinline__ T gn_nan();
template <> __device__ __forceinline__ float gn_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double gn_nan<double>() { return __longlong_as_double(0x7ff8000000000000ll); }

// x[0 .. size) <- NaN, grid-stride over a 1-D launch. What a kernel writes when it is handed
// a case it has no code for (an unknown activation id, a slot count without an instance):
// a result that shows, never a silent stand-in.
template <typename T>
__device__ void gn_fill_nan(T* x, long long size) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) x[i] = gn_nan<T>();
}

// The element-wise activations (act_forward, act_derivative, GN_FOR_EACH_ACTIVATION) follow
// this file: gpunet/cuda/sources.py generates them from the registry in gpunet/activations.py.

// Sum of v over a block of exactly 256 threads, in a fixed tree order; valid in every
// thread. Call at most once per kernel (its shared slot 0 would be overwritten).
__device__ __forceinline__ double block_sum_256(double v) {
    __shared__ double partial[256];
    partial[threadIdx.x] = v;
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

// ---- one-launch reductions: the last block finishes --------------------------------------------
// A kernel that leaves one partial sum per block (or per row) can also reduce them itself:
// every block fences its writes and takes a ticket; the block that draws the last ticket
// (all others have written) sums the partials in a fixed order and resets the counter for
// the next launch: one launch instead of two, and bitwise reproducible. `arrivals` is a zeroed device counter that no other launch uses
// meanwhile (the launcher's, per host thread). True in every thread of the last block.
__device__ __forceinline__ bool gn_last_block(unsigned* arrivals) {
    __shared__ bool last;
    __threadfence();   // this block's partials are visible to whichever block sums them
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        const unsigned blocks = gridDim.x * gridDim.y;
        last = atomicAdd(arrivals, 1u) == blocks - 1;
        if (last) *arrivals = 0u;
    }
    __syncthreads();
    return last;
}

// sum of values[0 .. n) in double, valid in every thread: thread t < 256 adds t, t + 256, ...
// in order, then a fixed tree (the order depends on n only). Every thread of the block calls
// it (blocks of at least 256 threads in x); the partials are read past L1 (other blocks
// wrote them). Once per kernel: its shared slots are not reset for a second call.
__device__ __forceinline__ double gn_ordered_sum(const double* values, long long n) {
    __shared__ double partial[256];
    const bool summing = threadIdx.x < 256 && threadIdx.y == 0;
    if (summing) {
        const volatile double* v = values;
        double acc = 0.0;
        for (long long i = threadIdx.x; i < n; i += 256) acc += v[i];
        partial[threadIdx.x] = acc;
    }
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if (summing && threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

// *out = (sum of parts[0 .. n)) / divisor, rounded to T, by the last block of the grid: a
// loss's mean from its per-row or per-block partial sums, in the same launch (see above).
template <typename T>
__device__ __forceinline__ void gn_finish_mean(const double* parts, long long n, double divisor, T* out,
                                               unsigned* arrivals) {
    if (gn_last_block(arrivals)) {
        const double total = gn_ordered_sum(parts, n);
        if (threadIdx.x == 0 && threadIdx.y == 0) *out = (T)(total / divisor);
    }
}

