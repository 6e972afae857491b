// Fast LCNN lookup inference kernels for layers/lookup.py (new; the Lua code only trained and counted lookups).
//
// A lookup layer computes y = align(pad(dict(x))): `dict` is a 1x1 convolution onto P dictionary channels and
// `align` a very sparse kH x kW convolution with stride (sH, sW). Inference here runs it as:
//   1. one GEMM for the dictionary (MKL through at::mm);
//   2. a scatter of the dictionary responses into a zero-padded buffer split into sH*sW stride phases, so that
//      every tap of a strided convolution becomes a stride-1 shift inside one phase plane; the batch is the
//      innermost dimension ("CHWN"), so neighbouring outputs of a row and of the batch are adjacent floats;
//   3. per output channel a CSR list of (flat plane offset, weight) taps; a tile of up to 8 SIMD vectors of
//      adjacent outputs is accumulated in registers, one broadcast-FMA per tap, then bias (folded batch norm)
//      and ReLU are applied while the tile is written out;
//   4. optionally a max pooling on the CHWN result.
// Special cases: a fully connected lookup at batch 1 (one output position) is one gathered dot product per output;
// a fully connected dictionary at batch 1 is a matrix-vector product that skips zero inputs (half of them after a
// ReLU), which `linear` also offers to the dense path.
// Tiles run over the flattened (row, column, batch) index of the padded phase plane, so lanes whose column lies
// beyond the output width are computed and dropped; the buffer carries a small zeroed tail for the last tile.
//
// Instruction sets: the file is built with the compiler's baseline flags; the hot loops are instantiated three
// times with GCC target attributes (AVX-512, AVX2+FMA, SSE2) and chosen at run time from CPUID, so a build
// cached on one machine never executes unsupported instructions on another.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

constexpr int kMaxVectors = 8;

struct LookupArgs {
  const float* buf;     // phase planes of the padded dictionary responses, batch innermost
  float* out;           // (O, Ho, Wo, N)
  const int64_t* rowptr;
  const void* idx;      // per tap: plane offset in units of N (uint16 or int32)
  const float* val;
  const float* bias;
  int64_t N, O, Ho, Wo;
  int64_t row;          // lanes per padded phase row (Wq * N)
  int64_t Q;            // lanes spanned by one output plane
  int64_t tile_lanes;
  int64_t ntiles;
  bool relu;
};

template <typename T>
inline __attribute__((always_inline)) T relu_if(T v, bool relu) {
  return relu ? std::max(v, T(0)) : v;
}

// Copy the valid lanes of one computed tile (q0 .. q0+lanes) to the output, adding the bias.
inline __attribute__((always_inline)) void store_tile(const LookupArgs& a, int64_t o, int64_t q0, int64_t lanes,
                                                      const float* acc) {
  const float b = a.bias[o];
  const int64_t valid = a.Wo * a.N;
  float* plane = a.out + o * a.Ho * valid;
  int64_t q = q0;
  const int64_t qend = std::min(q0 + lanes, a.Q);
  while (q < qend) {
    const int64_t i = q / a.row;
    const int64_t r = q - i * a.row;
    if (r >= valid) {
      q = (i + 1) * a.row;
      continue;
    }
    const int64_t stop = std::min(qend, i * a.row + valid);
    float* dst = plane + i * valid + r;
    const float* src = acc + (q - q0);
    const int64_t len = stop - q;
    if (a.relu) {
      for (int64_t t = 0; t < len; ++t) dst[t] = std::max(src[t] + b, 0.f);
    } else {
      for (int64_t t = 0; t < len; ++t) dst[t] = src[t] + b;
    }
    q = stop;
  }
}

template <int VB, int V, typename I>
inline __attribute__((always_inline)) void tile(const LookupArgs& a, int64_t o, int64_t q0) {
  typedef float vec __attribute__((vector_size(VB)));
  typedef float uvec __attribute__((vector_size(VB), aligned(4), may_alias));
  constexpr int L = VB / 4;
  // Narrow tiles would wait on the FMA latency of too few accumulators: give them independent chains over
  // alternating taps instead.
  constexpr int CH = V >= 4 ? 1 : (V >= 2 ? 2 : 4);
  vec acc[CH][V];
#pragma GCC unroll 8
  for (int c = 0; c < CH; ++c)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[c][v] = vec{};
  const I* idx = static_cast<const I*>(a.idx);
  const float* base = a.buf + q0;
  const int64_t N = a.N;
  const int64_t k1 = a.rowptr[o + 1];
  int64_t k = a.rowptr[o];
  for (; k + CH <= k1; k += CH) {
#pragma GCC unroll 4
    for (int c = 0; c < CH; ++c) {
      const float* p = base + static_cast<int64_t>(idx[k + c]) * N;
      const vec w = vec{} + a.val[k + c];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[c][v] += w * *reinterpret_cast<const uvec*>(p + v * L);
    }
  }
  for (; k < k1; ++k) {
    const float* p = base + static_cast<int64_t>(idx[k]) * N;
    const vec w = vec{} + a.val[k];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[0][v] += w * *reinterpret_cast<const uvec*>(p + v * L);
  }
  alignas(64) float res[V * L];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
#pragma GCC unroll 4
    for (int c = 1; c < CH; ++c) acc[0][v] += acc[c][v];
    *reinterpret_cast<vec*>(res + v * L) = acc[0][v];
  }
  store_tile(a, o, q0, V * L, res);
}

// Work items are (tile, output channel), tile-major: all channels of one tile read the same few rows of the
// dictionary planes while they are in L1/L2.
template <int VB, typename I>
inline __attribute__((always_inline)) void tiles_impl(const LookupArgs& a, int64_t begin, int64_t end) {
  constexpr int L = VB / 4;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t t = it / a.O;
    const int64_t o = it - t * a.O;
    const int64_t q0 = t * a.tile_lanes;
    const int64_t lanes = std::min(a.tile_lanes, a.Q - q0);
    switch ((lanes + L - 1) / L) {
      case 8: tile<VB, 8, I>(a, o, q0); break;
      case 7: tile<VB, 7, I>(a, o, q0); break;
      case 6: tile<VB, 6, I>(a, o, q0); break;
      case 5: tile<VB, 5, I>(a, o, q0); break;
      case 4: tile<VB, 4, I>(a, o, q0); break;
      case 3: tile<VB, 3, I>(a, o, q0); break;
      case 2: tile<VB, 2, I>(a, o, q0); break;
      default: tile<VB, 1, I>(a, o, q0); break;
    }
  }
}

// A fully connected lookup at batch 1 has a single output position: nothing to vectorise over but the taps, so
// each output is one dot product of its tap values with the dictionary responses they gather.
template <typename I>
inline __attribute__((always_inline)) void gather_impl(const LookupArgs& a, int64_t begin, int64_t end) {
  const I* idx = static_cast<const I*>(a.idx);
  for (int64_t o = begin; o < end; ++o) {
    float s = 0.f;
    for (int64_t k = a.rowptr[o]; k < a.rowptr[o + 1]; ++k) s += a.val[k] * a.buf[idx[k]];
    a.out[o] = relu_if(s + a.bias[o], a.relu);
  }
}

#define LCNN_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2")))
#define LCNN_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2")))

// o[j] = max(r[2j], r[2j+1], r[2j+2]) for j in [jlo, jhi), 16 columns per step: the even, odd and next-even
// inputs are pulled out of two pairs of loads by permutes (the 3x3 stride-2 pooling of AlexNet and ResNet; on
// small planes a scalar loop spends more time in loop overhead than in max operations).
LCNN_TARGET_AVX512 inline void pool_row_k3s2_avx512(const float* r, float* o, int64_t jlo, int64_t jhi) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  auto mask = [](int64_t n) {
    return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (n <= 0 ? 0 : (1u << n) - 1));
  };
  for (int64_t j0 = jlo; j0 < jhi; j0 += 16) {
    const int64_t n = std::min<int64_t>(16, jhi - j0), need = 2 * n + 1;  // inputs r[2j0 .. 2j0 + 2n]
    const float* q = r + 2 * j0;
    const __m512 a = _mm512_maskz_loadu_ps(mask(need), q), b = _mm512_maskz_loadu_ps(mask(need - 16), q + 16);
    const __m512 a2 = _mm512_maskz_loadu_ps(mask(need - 2), q + 2);
    const __m512 b2 = _mm512_maskz_loadu_ps(mask(need - 18), q + 18);
    const __m512 pair = _mm512_max_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
    const __m512 m = _mm512_max_ps(pair, _mm512_permutex2var_ps(a2, even, b2));
    _mm512_mask_storeu_ps(o + j0, mask(n), m);
  }
}

struct PoolArgs {
  const float* in;
  float* out;
  int64_t H, W, inner, Ho, Wo;
  int64_t kH, kW, sH, sW, pH, pW;
  bool relu;
};

// One output row for a single value per position: the window rows are first reduced column by column into `col`
// (contiguous, vectorised), then each output takes the max over its window of `col`; columns whose window lies
// inside the input run branch-free (3-wide stride 2, AlexNet's and ResNet's pooling, has its own AVX-512 loop).
template <int VB>
inline __attribute__((always_inline)) void pool_row_single(const PoolArgs& p, const float* src, float* o,
                                                           int64_t h0, int64_t h1, float* col) {
  const int64_t W = p.W, Wo = p.Wo, kW = p.kW, sW = p.sW, pW = p.pW;
  const int64_t jlo = std::min(Wo, (pW + sW - 1) / sW);
  const int64_t jhi = std::max(jlo, std::min(Wo, W + pW - kW >= 0 ? (W + pW - kW) / sW + 1 : 0));
  std::memcpy(col, src + h0 * W, sizeof(float) * W);
  for (int64_t h = h0 + 1; h < h1; ++h) {
    const float* r = src + h * W;
    for (int64_t w = 0; w < W; ++w) col[w] = std::max(col[w], r[w]);
  }
  const float* cc = col - pW;
  bool done = false;
  if constexpr (VB == 64) {
    if (kW == 3 && sW == 2) {
      pool_row_k3s2_avx512(cc, o, jlo, jhi);
      done = true;
    }
  }
  if (done) {
  } else if (kW == 3 && sW == 2) {
    for (int64_t j = jlo; j < jhi; ++j) o[j] = std::max(std::max(cc[2 * j], cc[2 * j + 1]), cc[2 * j + 2]);
  } else if (kW == 3 && sW == 1) {
    for (int64_t j = jlo; j < jhi; ++j) o[j] = std::max(std::max(cc[j], cc[j + 1]), cc[j + 2]);
  } else {
    for (int64_t j = jlo; j < jhi; ++j) {
      float m = cc[j * sW];
      for (int64_t dw = 1; dw < kW; ++dw) m = std::max(m, cc[j * sW + dw]);
      o[j] = m;
    }
  }
  auto edge = [&](int64_t j) {
    const int64_t w0 = std::max<int64_t>(j * sW - pW, 0), w1 = std::min(j * sW - pW + kW, W);
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t w = w0; w < w1; ++w) m = std::max(m, col[w]);
    o[j] = m;
  };
  for (int64_t j = 0; j < jlo; ++j) edge(j);
  for (int64_t j = jhi; j < Wo; ++j) edge(j);
  if (p.relu)
    for (int64_t j = 0; j < Wo; ++j) o[j] = std::max(o[j], 0.f);
}

template <int VB>
inline __attribute__((always_inline)) void pool_impl(const PoolArgs& p, int64_t begin, int64_t end) {
  const int64_t inner = p.inner;
  std::vector<float> col(inner == 1 ? p.W : 0);
  for (int64_t pl = begin; pl < end; ++pl) {
    const float* src = p.in + pl * p.H * p.W * inner;
    float* dst = p.out + pl * p.Ho * p.Wo * inner;
    for (int64_t i = 0; i < p.Ho; ++i) {
      const int64_t h0 = std::max<int64_t>(i * p.sH - p.pH, 0), h1 = std::min(i * p.sH - p.pH + p.kH, p.H);
      if (inner == 1) {
        pool_row_single<VB>(p, src, dst + i * p.Wo, h0, h1, col.data());
        continue;
      }
      for (int64_t j = 0; j < p.Wo; ++j) {
        const int64_t w0 = std::max<int64_t>(j * p.sW - p.pW, 0), w1 = std::min(j * p.sW - p.pW + p.kW, p.W);
        float* o = dst + (i * p.Wo + j) * inner;
        const float init = p.relu ? 0.f : -std::numeric_limits<float>::infinity();
        for (int64_t n = 0; n < inner; ++n) o[n] = init;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const float* v = src + (h * p.W + w) * inner;
            for (int64_t n = 0; n < inner; ++n) o[n] = std::max(o[n], v[n]);
          }
      }
    }
  }
}

struct GemvArgs {
  const float* x;       // the input values that are nonzero, in order
  const int64_t* rows;  // their row numbers in wt
  int64_t nnz;
  const float* wt;      // (K, M): the weight transposed, one row per input
  const float* bias;    // M values or null
  float* y;
  int64_t M;
};

constexpr int64_t kGemvChunk = 4096;  // outputs per pass: their accumulators stay in L1

// One chunk of outputs of y = bias + W x: the rows of zero inputs are never read. After a ReLU about half the
// inputs are zero, and a product with one input vector is bound by reading the weights from memory; since the
// rows read jump over the skipped ones, the hardware prefetcher cannot guess them: they are prefetched ahead.
template <int VB>
inline __attribute__((always_inline)) void gemv_impl(const GemvArgs& g, int64_t begin, int64_t end) {
  typedef float vec __attribute__((vector_size(VB)));
  typedef float uvec __attribute__((vector_size(VB), aligned(4), may_alias));
  constexpr int L = VB / 4;
  constexpr int64_t kAhead = 4;  // rows prefetched ahead
  alignas(64) float acc[kGemvChunk];
  for (int64_t c = begin; c < end; ++c) {
    const int64_t m0 = c * kGemvChunk, len = std::min(kGemvChunk, g.M - m0), full = len / L * L;
    std::memset(acc, 0, sizeof(float) * len);
    for (int64_t k = 0; k < g.nnz; ++k) {
      if (k + kAhead < g.nnz) {
        const char* next = reinterpret_cast<const char*>(g.wt + g.rows[k + kAhead] * g.M + m0);
        for (int64_t b = 0; b < len * 4; b += 64) __builtin_prefetch(next + b, 0, 0);
      }
      const float* p = g.wt + g.rows[k] * g.M + m0;
      const vec w = vec{} + g.x[k];
      for (int64_t t = 0; t < full; t += L)
        *reinterpret_cast<vec*>(acc + t) += w * *reinterpret_cast<const uvec*>(p + t);
      for (int64_t t = full; t < len; ++t) acc[t] += g.x[k] * p[t];
    }
    for (int64_t t = 0; t < len; ++t) g.y[m0 + t] = acc[t] + (g.bias ? g.bias[m0 + t] : 0.f);
  }
}

// The same dot products with gather instructions (GCC does not vectorise the gathered reduction by itself).
template <typename I>
LCNN_TARGET_AVX512 inline __m512 gather16_avx512(const I* idx, const float* buf) {
  __m512i v;
  if constexpr (std::is_same_v<I, uint16_t>)
    v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)));
  else
    v = _mm512_loadu_si512(idx);
  return _mm512_i32gather_ps(v, buf, 4);
}

template <typename I>
LCNN_TARGET_AVX2 inline __m256 gather8_avx2(const I* idx, const float* buf) {
  __m256i v;
  if constexpr (std::is_same_v<I, uint16_t>)
    v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
  else
    v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
  return _mm256_i32gather_ps(buf, v, 4);
}

template <typename I>
LCNN_TARGET_AVX512 void gather_avx512(const LookupArgs& a, int64_t begin, int64_t end) {
  const I* idx = static_cast<const I*>(a.idx);
  const float* val = a.val;
  for (int64_t o = begin; o < end; ++o) {
    const int64_t k1 = a.rowptr[o + 1];
    int64_t k = a.rowptr[o];
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; k + 32 <= k1; k += 32) {
      // The taps stream from memory once per call: fetch them well ahead of the gathers.
      __builtin_prefetch(idx + k + 1024, 0, 0);
      __builtin_prefetch(val + k + 512, 0, 0);
      __builtin_prefetch(val + k + 528, 0, 0);
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + k), gather16_avx512(idx + k, a.buf), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + k + 16), gather16_avx512(idx + k + 16, a.buf), acc1);
    }
    for (; k + 16 <= k1; k += 16)
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + k), gather16_avx512(idx + k, a.buf), acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; k < k1; ++k) s += val[k] * a.buf[idx[k]];
    a.out[o] = relu_if(s + a.bias[o], a.relu);
  }
}

template <typename I>
LCNN_TARGET_AVX2 void gather_avx2(const LookupArgs& a, int64_t begin, int64_t end) {
  const I* idx = static_cast<const I*>(a.idx);
  const float* val = a.val;
  for (int64_t o = begin; o < end; ++o) {
    const int64_t k1 = a.rowptr[o + 1];
    int64_t k = a.rowptr[o];
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; k + 16 <= k1; k += 16) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), gather8_avx2(idx + k, a.buf), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k + 8), gather8_avx2(idx + k + 8, a.buf), acc1);
    }
    for (; k + 8 <= k1; k += 8)
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + k), gather8_avx2(idx + k, a.buf), acc0);
    alignas(32) float part[8];
    _mm256_store_ps(part, _mm256_add_ps(acc0, acc1));
    float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; k < k1; ++k) s += val[k] * a.buf[idx[k]];
    a.out[o] = relu_if(s + a.bias[o], a.relu);
  }
}

#define LCNN_ISA_VARIANTS(SUFFIX, VB, TARGET)                                                            \
  TARGET void tiles_u16_##SUFFIX(const LookupArgs& a, int64_t b, int64_t e) { tiles_impl<VB, uint16_t>(a, b, e); } \
  TARGET void tiles_i32_##SUFFIX(const LookupArgs& a, int64_t b, int64_t e) { tiles_impl<VB, int32_t>(a, b, e); }  \
  TARGET void pool_##SUFFIX(const PoolArgs& p, int64_t b, int64_t e) { pool_impl<VB>(p, b, e); }              \
  TARGET void gemv_##SUFFIX(const GemvArgs& g, int64_t b, int64_t e) { gemv_impl<VB>(g, b, e); }

void gather_u16_avx512(const LookupArgs& a, int64_t b, int64_t e) { gather_avx512<uint16_t>(a, b, e); }
void gather_i32_avx512(const LookupArgs& a, int64_t b, int64_t e) { gather_avx512<int32_t>(a, b, e); }
void gather_u16_avx2(const LookupArgs& a, int64_t b, int64_t e) { gather_avx2<uint16_t>(a, b, e); }
void gather_i32_avx2(const LookupArgs& a, int64_t b, int64_t e) { gather_avx2<int32_t>(a, b, e); }
void gather_u16_base(const LookupArgs& a, int64_t b, int64_t e) { gather_impl<uint16_t>(a, b, e); }
void gather_i32_base(const LookupArgs& a, int64_t b, int64_t e) { gather_impl<int32_t>(a, b, e); }
LCNN_ISA_VARIANTS(avx512, 64, LCNN_TARGET_AVX512)
LCNN_ISA_VARIANTS(avx2, 32, LCNN_TARGET_AVX2)
LCNN_ISA_VARIANTS(base, 16, )

typedef void (*ItemFn)(const LookupArgs&, int64_t, int64_t);
typedef void (*PoolFn)(const PoolArgs&, int64_t, int64_t);
typedef void (*GemvFn)(const GemvArgs&, int64_t, int64_t);

struct Isa {
  const char* name;
  int lanes;
  ItemFn tiles_u16, tiles_i32, gather_u16, gather_i32;
  PoolFn pool;
  GemvFn gemv;
};

const Isa kIsas[] = {
    {"avx512", 16, tiles_u16_avx512, tiles_i32_avx512, gather_u16_avx512, gather_i32_avx512, pool_avx512,
     gemv_avx512},
    {"avx2", 8, tiles_u16_avx2, tiles_i32_avx2, gather_u16_avx2, gather_i32_avx2, pool_avx2, gemv_avx2},
    {"base", 4, tiles_u16_base, tiles_i32_base, gather_u16_base, gather_i32_base, pool_base, gemv_base},
};

int best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2")) return 1;
  return 2;
}

int g_isa = best_isa();

std::string isa_name() { return kIsas[g_isa].name; }

// Pick an instruction set by name ("auto" = the best this CPU has); refuses one the CPU lacks.
std::string set_isa(const std::string& name) {
  const int best = best_isa();
  if (name == "auto") {
    g_isa = best;
    return isa_name();
  }
  for (int i = 0; i < 3; ++i) {
    if (name == kIsas[i].name) {
      TORCH_CHECK(i >= best, "lookup kernels: this CPU does not support the ", name, " instruction set");
      g_isa = i;
      return isa_name();
    }
  }
  TORCH_CHECK(false, "lookup kernels: unknown instruction set '", name, "' (auto, avx512, avx2 or base)");
}

// Items per task such that a task holds at least ~2^17 elementary operations: smaller layers run on the calling
// thread, since an OpenMP fork/join costs more than they do (and much more on a busy machine).
int64_t grain_for(int64_t items, int64_t work_per_item) {
  const int64_t min_work = int64_t(1) << 17;
  return std::max<int64_t>(1, min_work / std::max<int64_t>(1, work_per_item));
}

// Output size of a max pooling, with PyTorch's (= Torch7's) ceil-mode rule.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t out = (in + 2 * p - k + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// Max pooling of `planes` planes of H x W positions with `inner` contiguous values per position.
void pool_planes(const float* in, float* out, int64_t planes, int64_t H, int64_t W, int64_t inner,
                 const std::vector<int64_t>& pool, bool relu, int64_t Ho, int64_t Wo) {
  const PoolArgs p{in, out, H, W, inner, Ho, Wo, pool[0], pool[1], pool[2], pool[3], pool[4], pool[5], relu};
  const PoolFn fn = kIsas[g_isa].pool;
  const int64_t work = Ho * Wo * inner * pool[0] * pool[1];
  at::parallel_for(0, planes, grain_for(planes, work), [&](int64_t b, int64_t e) { fn(p, b, e); });
}

// y = bias + W x for a single input vector x (K values) with W given transposed as wt (K, M), skipping the rows
// of zero inputs; writes M values to y.
void gemv_skip_zeros(const float* x, int64_t K, const float* wt, int64_t M, const float* bias, float* y) {
  std::vector<float> vals;
  std::vector<int64_t> rows;
  vals.reserve(K);
  rows.reserve(K);
  for (int64_t k = 0; k < K; ++k) {
    if (x[k] != 0.f) {
      vals.push_back(x[k]);
      rows.push_back(k);
    }
  }
  const GemvArgs g{vals.data(), rows.data(), static_cast<int64_t>(rows.size()), wt, bias, y, M};
  const int64_t chunks = (M + kGemvChunk - 1) / kGemvChunk;
  const GemvFn fn = kIsas[g_isa].gemv;
  at::parallel_for(0, chunks, grain_for(chunks, g.nnz * kGemvChunk), [&](int64_t b, int64_t e) { fn(g, b, e); });
}

// Fully connected layer for one input vector (dense path of a kernel that covers its input at batch 1).
at::Tensor linear_skip_zeros(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && wt.scalar_type() == at::kFloat && wt.dim() == 2 &&
                  wt.is_contiguous() && x.numel() == wt.size(0) && x.device().is_cpu(),
              "lookup kernels: linear wants a float32 input of K values and a contiguous (K, M) weight");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == wt.size(1),
              "lookup kernels: linear bias must hold M float32 values");
  at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({wt.size(1)}, wt.options());
  gemv_skip_zeros(xc.data_ptr<float>(), wt.size(0), wt.data_ptr<float>(), wt.size(1), bias.data_ptr<float>(),
                  y.data_ptr<float>());
  return y;
}

void check_pool(const std::vector<int64_t>& pool) {
  TORCH_CHECK(pool.size() == 7, "lookup kernels: pool must be [kH, kW, sH, sW, padH, padW, ceil]");
  TORCH_CHECK(pool[0] > 0 && pool[1] > 0 && pool[2] > 0 && pool[3] > 0 && pool[4] >= 0 && pool[5] >= 0 &&
                  2 * pool[4] <= pool[0] && 2 * pool[5] <= pool[1],
              "lookup kernels: invalid max pooling parameters");
}

// (N, C, H, W) view of a (C, H, W, N) buffer.
at::Tensor as_nchw(const at::Tensor& chwn) { return chwn.permute({3, 0, 1, 2}); }

// True when x is laid out (C, H, W, N) in memory (always the case for a contiguous batch of one).
bool is_chwn(const at::Tensor& x) { return x.permute({1, 2, 3, 0}).is_contiguous(); }

// Max pooling (optionally followed by ReLU) that keeps the input's layout: CHWN stays CHWN, anything else is
// pooled as contiguous NCHW.
at::Tensor max_pool(const at::Tensor& x, std::vector<int64_t> pool, bool relu) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "lookup kernels: max_pool wants a 4-D float32 CPU tensor");
  check_pool(pool);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = pooled_size(H, pool[0], pool[2], pool[4], pool[6]);
  const int64_t Wo = pooled_size(W, pool[1], pool[3], pool[5], pool[6]);
  TORCH_CHECK(Ho > 0 && Wo > 0, "lookup kernels: max pooling window larger than its input");
  if (is_chwn(x) && N > 1) {
    at::Tensor src = x.permute({1, 2, 3, 0});
    at::Tensor out = at::empty({C, Ho, Wo, N}, x.options());
    pool_planes(src.data_ptr<float>(), out.data_ptr<float>(), C, H, W, N, pool, relu, Ho, Wo);
    return as_nchw(out);
  }
  at::Tensor src = x.contiguous();
  at::Tensor out = at::empty({N, C, Ho, Wo}, x.options());
  pool_planes(src.data_ptr<float>(), out.data_ptr<float>(), N * C, H, W, 1, pool, relu, Ho, Wo);
  return out;
}

// Write dictionary responses D (strides given as (p, n, h, w)) into zero-padded stride-phase planes:
// plane (p, a, b) holds D[p, n, hq*sH + a - pH, wq*sW + b - pW] at [hq][wq][n], zero outside the input.
void scatter_phases(const float* D, int64_t sp, int64_t sn, int64_t sh, int64_t sw, float* B, int64_t P, int64_t N,
                    int64_t H, int64_t W, int64_t sH, int64_t sW, int64_t pH, int64_t pW, int64_t Hq, int64_t Wq) {
  const int64_t S = sH * sW, plane = Hq * Wq * N;
  at::parallel_for(0, P * S, grain_for(P * S, plane), [&](int64_t begin, int64_t end) {
    for (int64_t pl = begin; pl < end; ++pl) {
      const int64_t p = pl / S, ph = pl - p * S, a = ph / sW, b = ph - a * sW;
      float* dst = B + pl * plane;
      // Columns wq in [wlo, whi) map inside the input; the rest of each row is padding.
      const int64_t wlo = std::min(Wq, std::max<int64_t>(0, (pW - b + sW - 1) / sW));
      const int64_t whi = std::max(wlo, std::min(Wq, (W + pW - b + sW - 1) / sW));
      for (int64_t hq = 0; hq < Hq; ++hq) {
        const int64_t h = hq * sH + a - pH;
        float* drow = dst + hq * Wq * N;
        if (h < 0 || h >= H) {
          std::memset(drow, 0, sizeof(float) * Wq * N);
          continue;
        }
        std::memset(drow, 0, sizeof(float) * wlo * N);
        std::memset(drow + whi * N, 0, sizeof(float) * (Wq - whi) * N);
        const float* srow = D + p * sp + h * sh + (b - pW) * sw;
        if (N == 1) {
          const int64_t step = sW * sw;
          for (int64_t wq = wlo; wq < whi; ++wq) drow[wq] = srow[wq * step];
        } else if (sn == 1) {
          for (int64_t wq = wlo; wq < whi; ++wq) std::memcpy(drow + wq * N, srow + wq * sW * sw, sizeof(float) * N);
        } else {
          for (int64_t wq = wlo; wq < whi; ++wq) {
            const float* src = srow + wq * sW * sw;
            float* d = drow + wq * N;
            for (int64_t n = 0; n < N; ++n) d[n] = src[n * sn];
          }
        }
      }
    }
  });
}

// The fused lookup convolution: dictionary GEMM, phase scatter, sparse taps with bias and ReLU, optional pool.
// geom = [kH, kW, sH, sW, padH, padW]; idx holds, per tap, its plane offset in units of the batch size for this
// input's height and width (uint16 stored as int16, or int32); pool = [] or [kH, kW, sH, sW, padH, padW, ceil].
at::Tensor lookup_conv(const at::Tensor& x, const at::Tensor& dict_w, const std::optional<at::Tensor>& dict_wt,
                       const at::Tensor& rowptr, const at::Tensor& idx, const at::Tensor& val, const at::Tensor& bias,
                       std::vector<int64_t> geom, bool relu, std::vector<int64_t> pool) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "lookup conv: input must be a 4-D float32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(geom.size() == 6, "lookup conv: geom must be [kH, kW, sH, sW, padH, padW]");
  TORCH_CHECK(dict_w.dim() == 2 && dict_w.is_contiguous() && dict_w.scalar_type() == at::kFloat,
              "lookup conv: dictionary weight must be a contiguous float32 (P, C) matrix");
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.scalar_type() == at::kLong && rowptr.is_contiguous() && rowptr.numel() >= 1,
              "lookup conv: rowptr must be a contiguous int64 vector");
  TORCH_CHECK(val.scalar_type() == at::kFloat && val.is_contiguous() && bias.scalar_type() == at::kFloat &&
                  bias.is_contiguous(), "lookup conv: values and bias must be contiguous float32");
  TORCH_CHECK((idx.scalar_type() == at::kShort || idx.scalar_type() == at::kInt) && idx.is_contiguous() &&
                  idx.numel() == val.numel(), "lookup conv: tap offsets must be int16 or int32, one per value");
  const int64_t kH = geom[0], kW = geom[1], sH = geom[2], sW = geom[3], pH = geom[4], pW = geom[5];
  TORCH_CHECK(kH > 0 && kW > 0 && sH > 0 && sW > 0 && pH >= 0 && pW >= 0, "lookup conv: invalid geometry");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = dict_w.size(0), O = rowptr.numel() - 1;
  TORCH_CHECK(rowptr.data_ptr<int64_t>()[O] == val.numel(), "lookup conv: rowptr does not end at the number of taps");
  TORCH_CHECK(dict_w.size(1) == C, "lookup conv: input has ", C, " channels, the dictionary expects ", dict_w.size(1));
  TORCH_CHECK(bias.numel() == O, "lookup conv: bias size does not match the number of output channels");
  const int64_t Hp = H + 2 * pH, Wp = W + 2 * pW;
  TORCH_CHECK(Hp >= kH && Wp >= kW, "lookup conv: kernel ", kH, "x", kW, " larger than padded input ", Hp, "x", Wp);
  const int64_t Ho = (Hp - kH) / sH + 1, Wo = (Wp - kW) / sW + 1;
  const int64_t Hq = (Hp + sH - 1) / sH, Wq = (Wp + sW - 1) / sW, S = sH * sW;
  const Isa& isa = kIsas[g_isa];

  LookupArgs a;
  a.N = N;
  a.O = O;
  a.Ho = Ho;
  a.Wo = Wo;
  a.row = Wq * N;
  a.Q = (Ho - 1) * a.row + Wo * N;
  a.tile_lanes = static_cast<int64_t>(kMaxVectors) * isa.lanes;
  a.ntiles = (a.Q + a.tile_lanes - 1) / a.tile_lanes;
  a.relu = relu && pool.empty();
  // A single output position at batch 1 (a fully connected layer) has nothing to vectorise over but its taps.
  const bool gather = a.Q == 1;

  // The last tile may read up to one tile of lanes past the planes: keep a zeroed tail.
  const int64_t planes_size = P * S * Hq * Wq * N;
  const int64_t total = planes_size + a.tile_lanes + 16;
  at::Tensor buf = at::empty({total}, x.options());
  float* B = buf.data_ptr<float>();
  const bool direct = S == 1 && pH == 0 && pW == 0 && (N == 1 || is_chwn(x));
  if (direct && N == 1 && H * W == 1 && dict_wt.has_value()) {
    // A fully connected dictionary at batch 1: a matrix-vector product that can skip zero inputs.
    const at::Tensor& wt = *dict_wt;
    TORCH_CHECK(wt.dim() == 2 && wt.size(0) == C && wt.size(1) == P && wt.is_contiguous() &&
                    wt.scalar_type() == at::kFloat, "lookup conv: transposed dictionary must be a contiguous (C, P)");
    at::Tensor xc = x.contiguous();
    gemv_skip_zeros(xc.data_ptr<float>(), C, wt.data_ptr<float>(), P, nullptr, B);
  } else if (direct) {
    // Dictionary responses already have the plane layout: write the GEMM straight into the buffer.
    at::Tensor xin = x.permute({1, 2, 3, 0}).reshape({C, H * W * N});
    at::Tensor dst = buf.narrow(0, 0, planes_size).view({P, H * W * N});
    at::mm_out(dst, dict_w, xin);
  } else if (N == 1 || is_chwn(x)) {
    at::Tensor xin = x.permute({1, 2, 3, 0}).reshape({C, H * W * N});
    at::Tensor D = at::mm(dict_w, xin);
    scatter_phases(D.data_ptr<float>(), H * W * N, 1, W * N, N, B, P, N, H, W, sH, sW, pH, pW, Hq, Wq);
  } else {
    // One GEMM per image: a batched matmul would broadcast (copy) the dictionary weight N times.
    at::Tensor xin = x.contiguous().view({N, C, H * W});
    at::Tensor D = at::empty({N, P, H * W}, x.options());
    for (int64_t n = 0; n < N; ++n) {
      at::Tensor Dn = D[n];
      at::mm_out(Dn, dict_w, xin[n]);
    }
    scatter_phases(D.data_ptr<float>(), H * W, P * H * W, W, 1, B, P, N, H, W, sH, sW, pH, pW, Hq, Wq);
  }
  std::memset(B + planes_size, 0, sizeof(float) * (total - planes_size));

  at::Tensor out = at::empty({O, Ho, Wo, N}, x.options());
  a.buf = B;
  a.out = out.data_ptr<float>();
  a.rowptr = rowptr.data_ptr<int64_t>();
  a.idx = idx.data_ptr();
  a.val = val.data_ptr<float>();
  a.bias = bias.data_ptr<float>();
  const bool u16 = idx.scalar_type() == at::kShort;
  if (gather) {
    ItemFn fn = u16 ? isa.gather_u16 : isa.gather_i32;
    const int64_t work = (val.numel() / std::max<int64_t>(1, O) + 1) * Ho * Wo * N;
    at::parallel_for(0, O, grain_for(O, work), [&](int64_t b, int64_t e) { fn(a, b, e); });
  } else {
    ItemFn fn = u16 ? isa.tiles_u16 : isa.tiles_i32;
    const int64_t items = a.ntiles * O;
    const int64_t work = (val.numel() / std::max<int64_t>(1, O) + 1) * kMaxVectors;
    at::parallel_for(0, items, grain_for(items, work), [&](int64_t b, int64_t e) { fn(a, b, e); });
  }
  if (pool.empty()) return as_nchw(out);
  check_pool(pool);
  const int64_t Po = pooled_size(Ho, pool[0], pool[2], pool[4], pool[6]);
  const int64_t Qo = pooled_size(Wo, pool[1], pool[3], pool[5], pool[6]);
  TORCH_CHECK(Po > 0 && Qo > 0, "lookup conv: max pooling window larger than the convolution output");
  at::Tensor pooled = at::empty({O, Po, Qo, N}, x.options());
  pool_planes(out.data_ptr<float>(), pooled.data_ptr<float>(), O, Ho, Wo, N, pool, relu, Po, Qo);
  return as_nchw(pooled);
}

}  // namespace

TORCH_LIBRARY(lcnn_lookup, m) {
  m.def("conv(Tensor x, Tensor dict_w, Tensor? dict_wt, Tensor rowptr, Tensor idx, Tensor val, Tensor bias, "
        "int[] geom, bool relu, int[] pool) -> Tensor",
        &lookup_conv);
  m.def("linear(Tensor x, Tensor wt, Tensor bias) -> Tensor", &linear_skip_zeros);
  m.def("max_pool(Tensor x, int[] pool, bool relu) -> Tensor", &max_pool);
  m.def("isa() -> str", &isa_name);
  m.def("set_isa(str name) -> str", &set_isa);
}
