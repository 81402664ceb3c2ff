// Optimizer updates over the whole flat parameter buffer, one launch per step.
//
// Layout shared by every optimizer here (see gpunet/mlp.py): params, grads and the state
// buffers are flat, C-contiguous and of one length; the first n_decay entries are weights
// (decayed), the rest biases. The clipping factor `scale` and the `skip` flag (set when
// the loss or gradient went non-finite) are read from device memory, so the host never
// waits for them. When *skip is true no thread writes anything but Adam's count of skipped
// steps (`skipped`, with count_skips), which the optimizer later takes back out of its t.
//
// The arithmetic uses explicitly rounded operations (no fused multiply-add contraction, no
// flush of subnormals) in the order of the NumPy reference, so on finite data the result
// equals the reference bit for bit.
//
// A step of a CUDA graph cannot take new scalar arguments, so every update can instead read
// the scalars that change between steps (the learning rate under a schedule, Adam's bias
// corrections) from row *step of step_table (GN_STEP_TABLE_WIDTH values a row, computed and
// rounded on the host exactly as the arguments would be) when use_table is set.
//
// To add an optimizer: a new section with its formula comment, a template over T using
// the rn_* helpers, and extern "C" <name>_f32 / <name>_f64 wrappers; a launcher in
// gpunet/cuda/launch.py; an override in gpunet/cupy_backend.py (docs/extending.md).

#define GN_STEP_TABLE_WIDTH 4

// ---- correctly rounded arithmetic without contraction or flush-to-zero ---------------------
// CuPy compiles every RawModule with -ftz=true appended after the caller's options (the last
// one wins), which makes each float instruction the compiler emits flush subnormal inputs and
// results to zero, while the NumPy twin keeps them (Adam's exp_avg_sq of a 1e-20 gradient is
// ~1e-43 there). The float helpers are therefore PTX written out without .ftz: the updates
// keep subnormals and stay equal to the reference bit for bit. Double has no flush mode. The
// host build of the kernel emulator (no __CUDA_ARCH__) computes in IEEE float, which keeps
// them too. tests/test_kernel_compile.py checks this topic's PTX for .ftz.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float rn_add(float a, float b) {
    float r; asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float rn_sub(float a, float b) {
    float r; asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float rn_mul(float a, float b) {
    float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float rn_div(float a, float b) {
    float r; asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float rn_sqrt(float a) {
    float r; asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a)); return r;
}
// a != 0 and a < 0 as IEEE compares them (a subnormal is not zero; NaN != 0, !(NaN < 0))
__device__ __forceinline__ bool rn_nonzero(float a) {
    unsigned r; asm("{ .reg .pred p; setp.neu.f32 p, %1, 0f00000000; selp.u32 %0, 1, 0, p; }" : "=r"(r) : "f"(a));
    return r != 0u;
}
__device__ __forceinline__ bool rn_negative(float a) {
    unsigned r; asm("{ .reg .pred p; setp.lt.f32 p, %1, 0f00000000; selp.u32 %0, 1, 0, p; }" : "=r"(r) : "f"(a));
    return r != 0u;
}
#else
__device__ __forceinline__ float rn_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float rn_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float rn_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float rn_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float rn_sqrt(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ bool rn_nonzero(float a) { return a != 0.0f; }
__device__ __forceinline__ bool rn_negative(float a) { return a < 0.0f; }
#endif
__device__ __forceinline__ double rn_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double rn_sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double rn_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double rn_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double rn_sqrt(double a) { return __dsqrt_rn(a); }
__device__ __forceinline__ bool rn_nonzero(double a) { return a != 0.0; }
__device__ __forceinline__ bool rn_negative(double a) { return a < 0.0; }

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
                           const bool* skip, const T* step_table, const long long* step, int use_table) {
    if (*skip) return;
    if (use_table) lr = step_table[*step * GN_STEP_TABLE_WIDTH];
    const T s = *scale;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const T p = params[i];
        T g = rn_mul(grads[i], s);
        if (rn_nonzero(weight_decay) && i < n_decay) g = rn_add(g, rn_mul(weight_decay, p));
        T step = g;
        if (rn_nonzero(momentum)) {
            const T v = rn_add(rn_mul(velocity[i], momentum), g);
            velocity[i] = v;
            step = nesterov ? rn_add(g, rn_mul(momentum, v)) : v;
        }
        params[i] = rn_sub(p, rn_mul(lr, step));
    }
}

extern "C" __global__ void sgd_update_f32(float* params, const float* grads, float* velocity, long long size,
                                          long long n_decay, float lr, float momentum, float weight_decay,
                                          int nesterov, const float* scale, const bool* skip,
                                          const float* step_table, const long long* step, int use_table) {
    sgd_update<float>(params, grads, velocity, size, n_decay, lr, momentum, weight_decay, nesterov, scale, skip,
                    step_table, step, use_table);
}
extern "C" __global__ void sgd_update_f64(double* params, const double* grads, double* velocity, long long size,
                                          long long n_decay, double lr, double momentum, double weight_decay,
                                          int nesterov, const double* scale, const bool* skip,
                                          const double* step_table, const long long* step, int use_table) {
    sgd_update<double>(params, grads, velocity, size, n_decay, lr, momentum, weight_decay, nesterov, scale, skip,
                    step_table, step, use_table);
}

// ---- Adam / AdamW (torch.optim.Adam / AdamW) with coupled L2, decoupled decay, clipping ------
//   g = scale * grad + (i < n_decay ? weight_decay * p : 0)   (when weight_decay != 0)
//   p = p * decay_factor             for i < n_decay          (AdamW: when decoupled != 0)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * (g * g)
//   p = p - (step_size * m) / (sqrt(v) / sqrt_bias_correction2 + eps)
// The host scalars are the reference's Python floats rounded once to T: step_size =
// lr / (1 - beta1^t), sqrt_bias_correction2 = sqrt(1 - beta2^t), decay_factor =
// 1 - lr * decoupled_weight_decay, one_minus_beta1/2 = 1 - beta1/2 (all computed in double).
// The coupled term reads p before the decoupled shrink. Matches NumpyBackend.adam_update.
// Launch: 1-D grid-stride over the buffer, block 256.
template <typename T>
__device__ void adam_update(T* params, const T* grads, T* exp_avg, T* exp_avg_sq, long long size,
                            long long n_decay, T step_size, T beta1, T one_minus_beta1, T beta2,
                            T one_minus_beta2, T sqrt_bias_correction2, T eps, T weight_decay,
                            T decay_factor, int decoupled, const T* scale, const bool* skip, long long* skipped,
                            int count_skips, const T* step_table, const long long* step, int use_table) {
    if (*skip) {
        if (count_skips && blockIdx.x == 0 && threadIdx.x == 0) *skipped += 1;   // t is taken back later
        return;
    }
    if (use_table) {
        const T* row = step_table + *step * GN_STEP_TABLE_WIDTH;
        step_size = row[0];
        sqrt_bias_correction2 = row[1];
        decay_factor = row[2];
    }
    const T s = *scale;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        T p = params[i];
        T g = rn_mul(grads[i], s);
        if (rn_nonzero(weight_decay) && i < n_decay) g = rn_add(g, rn_mul(weight_decay, p));
        if (decoupled && i < n_decay) p = rn_mul(p, decay_factor);
        const T m = rn_add(rn_mul(exp_avg[i], beta1), rn_mul(one_minus_beta1, g));
        const T v = rn_add(rn_mul(exp_avg_sq[i], beta2), rn_mul(one_minus_beta2, rn_mul(g, g)));
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        const T denom = rn_add(rn_div(rn_sqrt(v), sqrt_bias_correction2), eps);
        params[i] = rn_sub(p, rn_div(rn_mul(step_size, m), denom));
    }
}

extern "C" __global__ void adam_update_f32(float* params, const float* grads, float* exp_avg, float* exp_avg_sq,
                                           long long size, long long n_decay, float step_size, float beta1,
                                           float one_minus_beta1, float beta2, float one_minus_beta2,
                                           float sqrt_bias_correction2, float eps, float weight_decay,
                                           float decay_factor, int decoupled, const float* scale, const bool* skip,
                                           long long* skipped, int count_skips, const float* step_table,
                                           const long long* step, int use_table) {
    adam_update<float>(params, grads, exp_avg, exp_avg_sq, size, n_decay, step_size, beta1, one_minus_beta1,
                       beta2, one_minus_beta2, sqrt_bias_correction2, eps, weight_decay, decay_factor, decoupled,
                       scale, skip, skipped, count_skips, step_table, step, use_table);
}
extern "C" __global__ void adam_update_f64(double* params, const double* grads, double* exp_avg, double* exp_avg_sq,
                                           long long size, long long n_decay, double step_size, double beta1,
                                           double one_minus_beta1, double beta2, double one_minus_beta2,
                                           double sqrt_bias_correction2, double eps, double weight_decay,
                                           double decay_factor, int decoupled, const double* scale, const bool* skip,
                                           long long* skipped, int count_skips, const double* step_table,
                                           const long long* step, int use_table) {
    adam_update<double>(params, grads, exp_avg, exp_avg_sq, size, n_decay, step_size, beta1, one_minus_beta1,
                        beta2, one_minus_beta2, sqrt_bias_correction2, eps, weight_decay, decay_factor, decoupled,
                        scale, skip, skipped, count_skips, step_table, step, use_table);
}

// ---- RMSprop (torch.optim.RMSprop) with centering, momentum, L2 and clipping ------------------
//   g = scale * grad + (i < n_decay ? weight_decay * p : 0)   (when weight_decay != 0)
//   s = alpha * s + (1 - alpha) * (g * g)
//   centered: a = alpha * a + (1 - alpha) * g,  d = sqrt(max(s - a * a, 0)) + eps
//   else:     d = sqrt(s) + eps
//   momentum: b = momentum * b + g / d,  p = p - lr * b
//   else:     p = p - lr * (g / d)
// one_minus_alpha = 1 - alpha computed in double on the host. The max keeps a NaN (as
// NumPy's maximum does). grad_avg is not touched unless centered, momentum_buf not unless
// momentum != 0 (the launcher passes params in their place). Matches
// NumpyBackend.rmsprop_update. Launch: 1-D grid-stride over the buffer, block 256.
template <typename T>
__device__ void rmsprop_update(T* params, const T* grads, T* square_avg, T* grad_avg, T* momentum_buf,
                               long long size, long long n_decay, T lr, T alpha, T one_minus_alpha, T eps,
                               T momentum, T weight_decay, int centered, const T* scale, const bool* skip,
                               const T* step_table, const long long* step, int use_table) {
    if (*skip) return;
    if (use_table) lr = step_table[*step * GN_STEP_TABLE_WIDTH];
    const T s = *scale;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < size; i += stride) {
        const T p = params[i];
        T g = rn_mul(grads[i], s);
        if (rn_nonzero(weight_decay) && i < n_decay) g = rn_add(g, rn_mul(weight_decay, p));
        const T sq = rn_add(rn_mul(square_avg[i], alpha), rn_mul(one_minus_alpha, rn_mul(g, g)));
        square_avg[i] = sq;
        T var = sq;
        if (centered) {
            const T a = rn_add(rn_mul(grad_avg[i], alpha), rn_mul(one_minus_alpha, g));
            grad_avg[i] = a;
            var = rn_sub(sq, rn_mul(a, a));
            if (rn_negative(var)) var = T(0);
        }
        const T denom = rn_add(rn_sqrt(var), eps);
        T step = rn_div(g, denom);
        if (rn_nonzero(momentum)) {
            step = rn_add(rn_mul(momentum_buf[i], momentum), step);
            momentum_buf[i] = step;
        }
        params[i] = rn_sub(p, rn_mul(lr, step));
    }
}

extern "C" __global__ void rmsprop_update_f32(float* params, const float* grads, float* square_avg, float* grad_avg,
                                              float* momentum_buf, long long size, long long n_decay, float lr,
                                              float alpha, float one_minus_alpha, float eps, float momentum,
                                              float weight_decay, int centered, const float* scale, const bool* skip,
                                              const float* step_table, const long long* step, int use_table) {
    rmsprop_update<float>(params, grads, square_avg, grad_avg, momentum_buf, size, n_decay, lr, alpha,
                          one_minus_alpha, eps, momentum, weight_decay, centered, scale, skip, step_table, step,
                          use_table);
}
extern "C" __global__ void rmsprop_update_f64(double* params, const double* grads, double* square_avg,
                                              double* grad_avg, double* momentum_buf, long long size,
                                              long long n_decay, double lr, double alpha, double one_minus_alpha,
                                              double eps, double momentum, double weight_decay, int centered,
                                              const double* scale, const bool* skip, const double* step_table,
                                              const long long* step, int use_table) {
    rmsprop_update<double>(params, grads, square_avg, grad_avg, momentum_buf, size, n_decay, lr, alpha,
                           one_minus_alpha, eps, momentum, weight_decay, centered, scale, skip, step_table, step,
                           use_table);
}
