// Dense matrix products for the training steps that run as one CUDA graph.
//
// Why gpunet has its own GEMM: a CUDA graph is made by capturing a stream, and CuPy refuses
// any cuBLAS call while its stream is being captured (cupy_backends/cuda/libs/cublas.pyx,
// setStream raises NotImplementedError during capture). cuBLAS through other bindings
// (nvmath-python) is not on the GPU machines' image. These kernels need nothing but the
// launch, so a whole step captures; eager steps of large networks keep cuBLAS, which is far
// faster there (gpunet.cuda.graphs decides). Each output is the sum of its K products in
// order k = 0, 1, ..., computed by one thread: bitwise reproducible.
//
// C (M, N) = op(A) op(B), all row-major and C-contiguous: op(A) (M, K) is A stored (M, K), or
// with trans_a A stored (K, M) and read transposed; op(B) (K, N) is B stored (K, N), or with
// trans_b B stored (N, K). The step needs Z = A W (NN), dW = A^T delta (TN) and
// delta W^T (NT). Matches NumpyBackend.matmul (within the rounding of a different order).
//
// Launch: block (16, 16), grid (ceil(N / 64), ceil(M / 64)). A block computes a 64 x 64 tile
// of C, thread (tx, ty) the 4 x 4 outputs at rows ty + 16 i and columns tx + 16 j; the K
// dimension is walked 16 at a time through shared memory (tiles of op(A) and op(B), zero
// past the edges). An (trans_a, trans_b) pair without an instance writes NaN.

#define GN_GEMM_TILE 64
#define GN_GEMM_K 16

template <typename T, bool TRANS_A, bool TRANS_B>
__device__ void gemm_tiles(const T* A, const T* B, T* C, long long M, long long N, long long K) {
    __shared__ T a_tile[GN_GEMM_K][GN_GEMM_TILE + 1];   // a_tile[k][m] = op(A)[m0 + m, k0 + k]
    __shared__ T b_tile[GN_GEMM_K][GN_GEMM_TILE + 1];   // b_tile[k][n] = op(B)[k0 + k, n0 + n]
    const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
    const long long m0 = (long long)blockIdx.y * GN_GEMM_TILE, n0 = (long long)blockIdx.x * GN_GEMM_TILE;
    T acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
    for (long long k0 = 0; k0 < K; k0 += GN_GEMM_K) {
        // 64 x 16 values of each operand, 4 per thread, read along the stored rows
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int idx = t + 256 * r;
            int m, k;
            if (TRANS_A) { k = idx / GN_GEMM_TILE; m = idx % GN_GEMM_TILE; }   // A (K, M): along m
            else { m = idx / GN_GEMM_K; k = idx % GN_GEMM_K; }                  // A (M, K): along k
            const long long gm = m0 + m, gk = k0 + k;
            a_tile[k][m] = (gm < M && gk < K) ? (TRANS_A ? A[gk * M + gm] : A[gm * K + gk]) : T(0);
            int n;
            if (TRANS_B) { n = idx / GN_GEMM_K; k = idx % GN_GEMM_K; }          // B (N, K): along k
            else { k = idx / GN_GEMM_TILE; n = idx % GN_GEMM_TILE; }            // B (K, N): along n
            const long long gn = n0 + n, gkb = k0 + k;
            b_tile[k][n] = (gn < N && gkb < K) ? (TRANS_B ? B[gn * K + gkb] : B[gkb * N + gn]) : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < GN_GEMM_K; ++k) {
            T a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = a_tile[k][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = b_tile[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();   // the tiles are refilled for the next k0
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long row = m0 + ty + 16 * i;
        if (row >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long col = n0 + tx + 16 * j;
            if (col < N) C[row * N + col] = acc[i][j];
        }
    }
}

template <typename T>
__device__ void gemm(const T* A, const T* B, T* C, long long M, long long N, long long K, int trans_a,
                     int trans_b) {
    switch (trans_a * 2 + trans_b) {
        case 0: gemm_tiles<T, false, false>(A, B, C, M, N, K); break;
        case 1: gemm_tiles<T, false, true>(A, B, C, M, N, K); break;
        case 2: gemm_tiles<T, true, false>(A, B, C, M, N, K); break;
        default:   // both transposed: the step never asks for it (x threads of every block
            gn_fill_nan(C, M * N);   // row cover the whole output between them)
            break;
    }
}

extern "C" __global__ void __launch_bounds__(256) gemm_f32(const float* A, const float* B, float* C, long long M,
                                                           long long N, long long K, int trans_a, int trans_b) {
    gemm<float>(A, B, C, M, N, K, trans_a, trans_b);
}
extern "C" __global__ void __launch_bounds__(256) gemm_f64(const double* A, const double* B, double* C, long long M,
                                                           long long N, long long K, int trans_a, int trans_b) {
    gemm<double>(A, B, C, M, N, K, trans_a, trans_b);
}
