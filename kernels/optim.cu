// Optimizer updates over the whole flat parameter buffer, one launch per step.
//
// Layout shared by every optimizer here (see gpunet/mlp.py): params, grads and the state
// buffers are flat, C-contiguous and of one length; the first n_decay entries are weights
// (decayed), the rest biases. The clipping factor `scale` and the `skip` flag (set when
// the loss or gradient went non-finite) are read from device memory, so the host never
// waits for them. When *skip is true no thread writes anything.
//
// The arithmetic uses explicitly rounded operations (no fused multiply-add contraction)
// in the order of the NumPy reference, so on finite data the result equals the reference
// bit for bit.
//
// To add an optimizer: a new section with its formula comment, a template over T using
// the rn_* helpers, and extern "C" <name>_f32 / <name>_f64 wrappers; a launcher in
// gpunet/cuda.py; an override in gpunet/cupy_backend.py.

// ---- correctly rounded arithmetic without contraction --------------------------------------
__device__ __forceinline__ float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float rn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double rn_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float rn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double rn_mul(double a, double b) { return __dmul_rn(a, b); }

// ---- SGD with momentum / Nesterov, L2 weight decay and gradient clipping -------------------
//   g = scale * grad + (i < n_decay ? weight_decay * p : 0)     (the decay term only when
//                                                                weight_decay != 0)
//   v = momentum * v + g                                        (when momentum != 0)
//   p = p - lr * (nesterov ? g + momentum * v : v)              (p - lr * g when momentum == 0)
// Matches NumpyBackend.sgd_update. velocity is not touched when momentum == 0 (the launcher
// then passes params in its place). scale and skip point at one element each.
// Launch: 1-D grid-stride over the buffer, block 256.
template <typename T>
__device__ void sgd_update(T* params, const T* grads, T* velocity, long long size, long long n_decay,
                           T lr, T momentum, T weight_decay, int nesterov, const T* scale,
                           const bool* skip) {
    if (*skip) return;
    const T s = *scale;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const T p = params[i];
        T g = rn_mul(grads[i], s);
        if (weight_decay != T(0) && i < n_decay) g = rn_add(g, rn_mul(weight_decay, p));
        T step = g;
        if (momentum != T(0)) {
            const T v = rn_add(rn_mul(velocity[i], momentum), g);
            velocity[i] = v;
            step = nesterov ? rn_add(g, rn_mul(momentum, v)) : v;
        }
        params[i] = rn_sub(p, rn_mul(lr, step));
    }
}

extern "C" __global__ void sgd_update_f32(float* params, const float* grads, float* velocity, long long size,
                                          long long n_decay, float lr, float momentum, float weight_decay,
                                          int nesterov, const float* scale, const bool* skip) {
    sgd_update<float>(params, grads, velocity, size, n_decay, lr, momentum, weight_decay, nesterov, scale, skip);
}
extern "C" __global__ void sgd_update_f64(double* params, const double* grads, double* velocity, long long size,
                                          long long n_decay, double lr, double momentum, double weight_decay,
                                          int nesterov, const double* scale, const bool* skip) {
    sgd_update<double>(params, grads, velocity, size, n_decay, lr, momentum, weight_decay, nesterov, scale, skip);
}
