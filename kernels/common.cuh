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
