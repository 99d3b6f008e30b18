// The native CPU kernels of the fast matching mode (frfsr/ops/fast_match.py).
//
// frfsr_window_match: windowed cosine patch matching, the kernel of frfsr::window_match. Same
// definition as the PyTorch reference (frfsr/ops/window.py): every query patch of a
// cell x cell search cell is compared, for each of the cell's first need[cell] flows, with
// the key patches whose corners lie in the cell's square moved by the flow and widened by
// radius; the best <q, k> / (||k|| + 1e-5) wins, ties to the lowest key index. The caller
// divides by ||q|| + 1e-5. Per search cell and flow, everything stays in the core's caches:
// the pixel products G (query block pixels x key block pixels, a register-blocked product
// read straight from the channels-last key, no gathered copy), the p x p tap sums (shifted
// vector adds), and the running best per query patch. Cells are handed to the worker threads
// one at a time, in the order given (largest need first), so the threads stay balanced.
//
// frfsr_coarse_topk: the k largest dot products per query column (the candidates' top-k),
// without storing the similarity matrix (see topk_search).
//
// Built on first use by frfsr/ops/native/__init__.py with -O3 -march=native: AVX-512 where
// the CPU has it, else AVX2 + FMA, else plain C++.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace {

// The vector operations of one instruction set, W its register width in bits (512 or 256).
#define FRFSR_VECTOR_OPS(W)                                                          \
  inline vec vload(const float* p) { return _mm##W##_loadu_ps(p); }                  \
  inline void vstore(float* p, vec v) { _mm##W##_storeu_ps(p, v); }                  \
  inline vec vset1(float x) { return _mm##W##_set1_ps(x); }                          \
  inline vec vfma(vec a, vec b, vec c) { return _mm##W##_fmadd_ps(a, b, c); }        \
  inline vec vadd(vec a, vec b) { return _mm##W##_add_ps(a, b); }                    \
  inline vec vzero() { return _mm##W##_setzero_ps(); }

#if defined(__AVX512F__)
typedef __m512 vec;
constexpr int VL = 16;  // floats per vector
constexpr int NJ = 8;   // key pixels per register block
constexpr int NT = 3;   // query vectors per register block (NJ x NT accumulators)
FRFSR_VECTOR_OPS(512)
inline unsigned vgt(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }  // lanes where a > b
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
constexpr int VL = 8, NJ = 4, NT = 3;
FRFSR_VECTOR_OPS(256)
inline unsigned vgt(vec a, vec b) { return unsigned(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ))); }
#else
typedef float vec;
constexpr int VL = 1, NJ = 4, NT = 4;
inline vec vload(const float* p) { return *p; }
inline void vstore(float* p, vec v) { *p = v; }
inline vec vset1(float x) { return x; }
inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
inline vec vadd(vec a, vec b) { return a + b; }
inline vec vzero() { return 0.f; }
inline unsigned vgt(vec a, vec b) { return a > b ? 1u : 0u; }
#endif

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// G[a * ld + i] = sum_c kp[a][c] * qT[c * ld + i] for a < NJ, i in [i0, i0 + NTT * VL). All loops
// but the one over channels have fixed counts and are unrolled, so the accumulators live in
// registers only (a store count known at run time made GCC keep a copy in memory too).
template <int NTT>
inline void products(const float* const* kp, const float* qT, int64_t ld, int64_t i0, int64_t C, float* G) {
    vec acc[NJ][NTT];
#pragma GCC unroll 16
    for (int a = 0; a < NJ; ++a)
#pragma GCC unroll 4
        for (int t = 0; t < NTT; ++t) acc[a][t] = vzero();
    const float* qc = qT + i0;
    for (int64_t c = 0; c < C; ++c, qc += ld) {
        vec qv[NTT];
#pragma GCC unroll 4
        for (int t = 0; t < NTT; ++t) qv[t] = vload(qc + t * VL);
#pragma GCC unroll 16
        for (int a = 0; a < NJ; ++a) {
            const vec kv = vset1(kp[a][c]);
#pragma GCC unroll 4
            for (int t = 0; t < NTT; ++t) acc[a][t] = vfma(kv, qv[t], acc[a][t]);
        }
    }
#pragma GCC unroll 16
    for (int a = 0; a < NJ; ++a)
#pragma GCC unroll 4
        for (int t = 0; t < NTT; ++t) vstore(G + a * ld + i0 + t * VL, acc[a][t]);
}

struct Problem {
    const float* q;        // (B, hc * s + p - 1, wc * s + p - 1, C) channels-last, zero padded
    const float* k;        // (B, H, W, C) channels-last
    const float* kn;       // (B, hk, wk) key patch norms
    const int64_t* flows;  // (B * hc * wc, M, 2) (dy, dx)
    const int64_t* need;   // (B * hc * wc) flows searched per cell
    const int64_t* order;  // (B * hc * wc) the cells in the order they are handed out
    int64_t B, hc, wc, M, C, H, W, s, r, p;
    float* best;           // (B * hc * wc, s * s) best <q, k> / (||k|| + eps), -inf if none
    int64_t* index;        // (B * hc * wc, s * s) its key index, -1 if none
};

void search(const Problem& P, std::atomic<int64_t>& next) {
    const int64_t s = P.s, p = P.p, C = P.C, H = P.H, W = P.W;
    const int64_t A = s + p - 1, V = s + 2 * P.r, T = V + p - 1;  // query block, square, key block sides
    const int64_t AA = A * A, TT = T * T;
    const int64_t IP = round_up(AA, VL);                 // query pixels, padded to whole vectors
    const int64_t ld = round_up(IP + p - 1, VL);         // row length of qT and G (shifted reads stay inside)
    const int64_t ldr = round_up(IP + (p - 1) * A, VL) + VL;
    const int64_t hp = P.hc * s + p - 1, wp = P.wc * s + p - 1;
    const int64_t hk = H - p + 1, wk = W - p + 1;
    const int64_t ncell = P.B * P.hc * P.wc;
    const float ninf = -std::numeric_limits<float>::infinity();

    std::vector<float> qT(C * ld, 0.f), G((TT + NJ) * ld, 0.f), R(T * V * ldr, 0.f), zero(C, 0.f);
    std::vector<const float*> kp(TT + NJ, zero.data());
    std::vector<float> bs(IP);
    std::vector<int64_t> bi(IP);

    for (int64_t n = next.fetch_add(1); n < ncell; n = next.fetch_add(1)) {
        const int64_t cell = P.order[n];
        const int64_t b = cell / (P.hc * P.wc), cy = (cell / P.wc) % P.hc, cx = cell % P.wc;
        // the query block, channel-major: qT[c * ld + i], i = row * A + column
        for (int64_t i = 0; i < AA; ++i) {
            const float* src = P.q + ((b * hp + cy * s + i / A) * wp + cx * s + i % A) * C;
            for (int64_t c = 0; c < C; ++c) qT[c * ld + i] = src[c];
        }
        std::fill(bs.begin(), bs.end(), ninf);
        std::fill(bi.begin(), bi.end(), int64_t(-1));
        const float* kn = P.kn + b * hk * wk;
        for (int64_t m = 0; m < P.need[cell]; ++m) {
            const int64_t by = cy * s + P.flows[(cell * P.M + m) * 2] - P.r;   // first corner of the square
            const int64_t bx = cx * s + P.flows[(cell * P.M + m) * 2 + 1] - P.r;
            if (by + V <= 0 || by >= hk || bx + V <= 0 || bx >= wk) continue;  // no valid corner
            // the next flow's key block on its way into the cache while this one is computed
            if (m + 1 < P.need[cell]) {
                const int64_t ny = cy * s + P.flows[(cell * P.M + m + 1) * 2] - P.r;
                const int64_t nx = std::max<int64_t>(0, cx * s + P.flows[(cell * P.M + m + 1) * 2 + 1] - P.r);
                const int64_t nx1 = std::min<int64_t>(W, nx + T);
                for (int64_t y = std::max<int64_t>(0, ny); y < std::min<int64_t>(H, ny + T); ++y)
                    if (nx < nx1) {
                        const char* row = reinterpret_cast<const char*>(P.k + ((b * H + y) * W + nx) * C);
                        for (int64_t o = 0; o < (nx1 - nx) * C * 4; o += 64) __builtin_prefetch(row + o);
                    }
            }
            // key block pixels; those outside the key only reach corners that are skipped below
            for (int64_t j = 0; j < TT; ++j) {
                const int64_t y = by + j / T, x = bx + j % T;
                kp[j] = (y < 0 || y >= H || x < 0 || x >= W) ? zero.data() : P.k + ((b * H + y) * W + x) * C;
            }
            // G[j * ld + i] = <key block pixel j, query block pixel i>
            // (the last block may run past TT: those rows of G are spare, their key pixels zero)
            for (int64_t j0 = 0; j0 < TT; j0 += NJ) {
                int64_t i0 = 0;
                for (; i0 + NT * VL <= IP; i0 += NT * VL) products<NT>(&kp[j0], qT.data(), ld, i0, C, &G[j0 * ld]);
                for (; i0 < IP; i0 += VL) products<1>(&kp[j0], qT.data(), ld, i0, C, &G[j0 * ld]);
            }
            // taps along x: R[(jy * V + vx) * ldr + i] = sum_tx G[(jy * T + vx + tx) * ld + i + tx]
            for (int64_t jy = 0; jy < T; ++jy)
                for (int64_t vx = 0; vx < V; ++vx) {
                    float* rr = &R[(jy * V + vx) * ldr];
                    const float* g = &G[(jy * T + vx) * ld];
                    for (int64_t i = 0; i < IP; i += VL) {
                        vec a = vload(g + i);
                        for (int64_t tx = 1; tx < p; ++tx) a = vadd(a, vload(g + tx * ld + i + tx));
                        vstore(rr + i, a);
                    }
                }
            // taps along y, the key norm, and the running best of every query patch (uy, ux),
            // i = uy * A + ux: corr = sum_ty R[((vy + ty) * V + vx) * ldr + i + ty * A]
            for (int64_t vy = 0; vy < V; ++vy) {
                const int64_t ky = by + vy;
                if (ky < 0 || ky >= hk) continue;
                for (int64_t vx = 0; vx < V; ++vx) {
                    const int64_t kx = bx + vx;
                    if (kx < 0 || kx >= wk) continue;
                    const int64_t ki = ky * wk + kx;
                    const float inv = 1.0f / (kn[ki] + 1e-5f);
                    const float* rr = &R[(vy * V + vx) * ldr];
                    for (int64_t uy = 0; uy < s; ++uy)
                        for (int64_t ux = 0; ux < s; ++ux) {
                            const int64_t i = uy * A + ux;
                            float corr = 0.f;
                            for (int64_t ty = 0; ty < p; ++ty) corr += rr[ty * V * ldr + i + ty * A];
                            const float sc = corr * inv;
                            if (sc > bs[i] || (sc == bs[i] && ki < bi[i])) {
                                bs[i] = sc;
                                bi[i] = ki;
                            }
                        }
                }
            }
        }
        for (int64_t uy = 0; uy < s; ++uy)
            for (int64_t ux = 0; ux < s; ++ux) {
                P.best[cell * s * s + uy * s + ux] = bs[uy * A + ux];
                P.index[cell * s * s + uy * s + ux] = bi[uy * A + ux];
            }
    }
}

// ---------------------------------------------------------------- coarse top-k
// For every query column of qT (D x nq, channel-major) the k key rows of kd (nk x D) with the
// largest dot products, best first, ties to the lowest key index (keys are scanned in
// increasing order and only a strictly larger value displaces one). The products are
// computed in register blocks of NT * VL queries x NJ keys and compared at once with the
// queries' current k-th best, so the similarity matrix is never stored.
struct TopK {
    const float* qT;
    const float* kd;
    int64_t nq, nk, D, k;
    int64_t* index;     // (nq, k)
};

void topk_search(const TopK& P, std::atomic<int64_t>& next) {
    constexpr int64_t QB = NT * VL;                  // queries per block
    const int64_t nblocks = (P.nq + QB - 1) / QB, D = P.D, k = P.k;
    const float ninf = -std::numeric_limits<float>::infinity();
    std::vector<float> qb(D * QB), G(NJ * QB), val(QB * k), thr(QB);
    std::vector<int64_t> idx(QB * k);
    std::vector<float> zero(D, 0.f);
    std::vector<const float*> kp(NJ);
    for (int64_t blk = next.fetch_add(1); blk < nblocks; blk = next.fetch_add(1)) {
        const int64_t q0 = blk * QB, nqb = std::min<int64_t>(QB, P.nq - q0);
        for (int64_t c = 0; c < D; ++c)
            for (int64_t i = 0; i < QB; ++i) qb[c * QB + i] = i < nqb ? P.qT[c * P.nq + q0 + i] : 0.f;
        std::fill(val.begin(), val.end(), ninf);
        std::fill(idx.begin(), idx.end(), int64_t(-1));
        std::fill(thr.begin(), thr.end(), ninf);
        std::fill(thr.begin() + nqb, thr.end(), std::numeric_limits<float>::infinity());
        for (int64_t j0 = 0; j0 < P.nk; j0 += NJ) {
            const int64_t nj = std::min<int64_t>(NJ, P.nk - j0);
            for (int64_t a = 0; a < NJ; ++a) kp[a] = a < nj ? P.kd + (j0 + a) * D : zero.data();
            products<NT>(kp.data(), qb.data(), QB, 0, D, G.data());
            for (int64_t a = 0; a < nj; ++a) {
                const float* g = &G[a * QB];
                for (int64_t i0 = 0; i0 < QB; i0 += VL) {
                  // (padding queries have a zero column and an infinite threshold: never inserted)
                  for (unsigned m = vgt(vload(g + i0), vload(&thr[i0])); m; m &= m - 1) {
                    const int64_t i = i0 + __builtin_ctz(m);
                    const float v = g[i];
                    // insert (v, j0 + a) into query i's list, kept sorted best first
                    float* vl = &val[i * k];
                    int64_t* il = &idx[i * k];
                    int64_t pos = k - 1;
                    while (pos > 0 && v > vl[pos - 1]) {
                        vl[pos] = vl[pos - 1];
                        il[pos] = il[pos - 1];
                        --pos;
                    }
                    vl[pos] = v;
                    il[pos] = j0 + a;
                    thr[i] = vl[k - 1];
                  }
                }
            }
        }
        for (int64_t i = 0; i < nqb; ++i)
            for (int64_t t = 0; t < k; ++t) P.index[(q0 + i) * k + t] = idx[i * k + t];
    }
}

// Runs work(next) on `threads` threads (fewer if some cannot be started), the work items
// handed out through the shared counter `next`; returns 0, or 1 if a worker threw (memory).
template <class Work>
int run_on_threads(int threads, Work work) {
    std::atomic<int64_t> next(0);
    std::atomic<bool> failed(false);
    auto guarded = [&work, &next, &failed]() {
        try {
            work(next);
        } catch (...) {
            failed = true;
        }
    };
    std::vector<std::thread> pool;
    try {
        for (int t = 1; t < threads; ++t) pool.emplace_back(guarded);
    } catch (...) {
    }
    guarded();
    for (auto& th : pool) th.join();
    return failed ? 1 : 0;
}

}  // namespace

extern "C" {

// Which vector path this build took: 16 (AVX-512), 8 (AVX2 + FMA) or 1 (plain C++).
int frfsr_vector_width() { return VL; }

// Returns 0 on success, 1 if memory for a worker's buffers ran out (the outputs are then
// incomplete). Runs on `threads` threads, fewer if some cannot be started.
int frfsr_window_match(const float* q, const float* k, const float* kn, const int64_t* flows, const int64_t* need,
                       const int64_t* order, int64_t B, int64_t hc, int64_t wc, int64_t M, int64_t C, int64_t H,
                       int64_t W, int64_t s, int64_t r, int64_t p, float* best, int64_t* index, int threads) {
    const Problem P{q, k, kn, flows, need, order, B, hc, wc, M, C, H, W, s, r, p, best, index};
    return run_on_threads(threads, [&P](std::atomic<int64_t>& next) { search(P, next); });
}

// The k best keys of every query (see topk_search); returns 0, or 1 if memory ran out.
int frfsr_coarse_topk(const float* qT, const float* kd, int64_t nq, int64_t nk, int64_t D, int64_t k,
                      int64_t* index, int threads) {
    const TopK P{qT, kd, nq, nk, D, k, index};
    return run_on_threads(threads, [&P](std::atomic<int64_t>& next) { topk_search(P, next); });
}

}  // extern "C"
