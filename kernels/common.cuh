// Device helpers shared by every topic. gpunet/cuda.py compiles each kernels/<topic>.cu as
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

// f'(z) of an element-wise activation, expressed through its output a = f(z). Ids and
// parameters as in activations.cu: 1 sigmoid (p0 = c, p1 = beta), 2 tanh, 3 relu,
// 4 leaky_relu (p0 = slope), anything else identity. Matches Activation.derivative_from_output.
template <typename T, int KIND>
__device__ __forceinline__ T act_derivative(T a, T p0, T p1) {
    if (KIND == 1) {
        return (a * (T(1) - a / p0)) * p1;
    } else if (KIND == 2) {
        return T(1) - a * a;
    } else if (KIND == 3) {
        return a > T(0) ? T(1) : T(0);         // slope 0 at z == 0, as the reference
    } else if (KIND == 4) {
        return a > T(0) ? T(1) : p0;
    }
    return T(1);
}

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
