// The kernels of layers/csrc/lookup.cpp for one instruction set (new; no Lua counterpart).
//
// lookup.cpp includes this file three times, each time in its own namespace under `#pragma GCC target`, with
// LCNN_VB = bytes per vector (64: AVX-512, 32: AVX2+FMA, 16: SSE2). Everything in here, small helpers included,
// is then compiled for that instruction set: GCC keeps the generic vector arithmetic in whole registers (a helper
// compiled for the baseline and inlined later gets its vectors split lane by lane) and uses broadcast operands.
// The argument structs, the drivers and the choice of instruction set live in lookup.cpp.

constexpr int VB = LCNN_VB;
constexpr int L = VB / 4;  // float lanes per vector
typedef float vec __attribute__((vector_size(VB)));
typedef float uvec __attribute__((vector_size(VB), aligned(4), may_alias));
typedef int ivec __attribute__((vector_size(VB)));

// GEMM columns per item: 3 vectors with AVX-512 (8 x 3 accumulators of 32 registers), 2 otherwise.
constexpr int kGemmVectors = VB == 64 ? 3 : 2;
constexpr int kGemmCols = kGemmVectors * L;

inline vec vload(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline void vstore(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }

inline vec splat(float x) {
  const vec v = {x};
  return __builtin_shuffle(v, ivec{});
}

// ReLU that keeps NaN, as torch.relu does (`v > 0 ? v : 0` gives 0 for it).
inline vec vmax0(vec v) { return v < 0 ? 0 : v; }

// max(a, b), NaN when either is NaN (as PyTorch's max pooling: a window holding a NaN gives NaN); std::max and
// MAXPS return one given operand when the comparison is unordered.
inline float nan_max(float a, float b) { return a > b || a != a ? a : b; }
inline vec nan_max(vec a, vec b) { return a > b || a != a ? a : b; }

#if LCNN_VB == 64
// The same for 16 lanes: MAXPS(x, a) keeps a NaN of a, then VFIXUPIMMPS puts NaN where x is one (its table: a
// quiet NaN x gives x, a signalling one x made quiet, any other x leaves the max); two instructions, no masks.
inline __m512 nan_max16(__m512 a, __m512 x) {
  return _mm512_fixupimm_ps(_mm512_max_ps(x, a), x, _mm512_set1_epi32(0x21), 0);
}
#endif

// Store the first n lanes (all of them when n >= L).
inline void vstore_n(float* p, vec v, int64_t n) {
  if (n >= L) {
    vstore(p, v);
    return;
  }
#if LCNN_VB == 64
  // A masked store: the lane-by-lane copy below becomes a `rep movs`, which costs ~30 cycles to start.
  if (n > 0) _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), (__m512)v);
#else
  alignas(64) float t[L];
  *reinterpret_cast<vec*>(t) = v;
  for (int64_t i = 0; i < n; ++i) p[i] = t[i];
#endif
}

// Load the first n lanes, zero in the others.
inline vec vload_n(const float* p, int64_t n) {
  if (n >= L) return vload(p);
#if LCNN_VB == 64
  if (n <= 0) return vec{};
  return (vec)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
#endif
  alignas(64) float t[L] = {};
  for (int64_t i = 0; i < n; ++i) t[i] = p[i];
  return *reinterpret_cast<const vec*>(t);
}

// ------------------------------------------------------------------------------------------------------------
// GEMM (see GemmArgs): one item is one panel of kMR rows of A times one block of columns of one image.

// Column j of the vector: with padded planes, at row h, column w of the input (h, w worked out by the caller once
// per vector for all rows of a panel, rather than by a 64-bit division per row).
inline void gemm_store(const GemmArgs& g, float* row, const float* res_row, const int32_t* scatter, int64_t j,
                       int64_t h, int64_t w, vec v, int64_t n, float bias) {
  if (g.bias) v += bias;
  if (scatter) {
#if LCNN_VB == 64
    if (g.sW == 2) {
      // At stride 2 the even lanes of a vector's piece of one input row go to one phase plane and the odd ones to
      // the other, each to consecutive columns: one permute, then per piece two half-vector stores, their bases
      // shifted so that lane l lands at position l / 2 (a hardware scatter took ~12% of ResNet-18-accurate's
      // 64 -> 128 layer, as much as a second pass over a temporary did).
      const __m512 x = _mm512_permutexvar_ps(
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15), (__m512)v);
      const __m256 even = _mm512_castps512_ps256(x), odd = _mm512_extractf32x8_ps(x, 1);
      auto span = [](int64_t lo, int64_t hi) { return static_cast<__mmask8>(((1u << hi) - 1) & ~((1u << lo) - 1)); };
      for (int64_t t = 0; t < n; w = 0) {
        const int64_t stop = std::min<int64_t>(n, t + g.W - w);
        const int64_t e0 = (t + 1) / 2, e1 = (stop + 1) / 2, o0 = t / 2, o1 = stop / 2;
        if (e0 < e1) _mm256_mask_storeu_ps(row + scatter[j + 2 * e0] - e0, span(e0, e1), even);
        if (o0 < o1) _mm256_mask_storeu_ps(row + scatter[j + 2 * o0 + 1] - o0, span(o0, o1), odd);
        t = stop;
      }
      return;
    }
    const __mmask16 lanes = static_cast<__mmask16>((1u << n) - 1);
    _mm512_mask_i32scatter_ps(row, lanes, _mm512_maskz_loadu_epi32(lanes, scatter + j), (__m512)v, 4);
#else
    alignas(64) float lanes[L];
    *reinterpret_cast<vec*>(lanes) = v;
    for (int64_t t = 0; t < n; ++t) row[scatter[j + t]] = lanes[t];
#endif
    return;
  }
  if (g.W == 0) {
    if (res_row) v += vload_n(res_row + j, n);
    if (g.relu) v = vmax0(v);
    vstore_n(row + j, v, n);
    return;
  }
  // Padded planes: column j = h*W + w goes to row h of the plane; split the vector where it crosses input rows.
  if (w + n <= g.W) {
    vstore_n(row + h * g.Wp + w + g.pad_off, v, n);
    return;
  }
#if LCNN_VB == 64
  // Each piece is a masked store whose base is shifted so that lane t lands at its column.
  for (int64_t t = 0; t < n; ++h, w = 0) {
    const int64_t stop = std::min<int64_t>(n, t + g.W - w);
    _mm512_mask_storeu_ps(row + h * g.Wp + w + g.pad_off - t,
                          static_cast<__mmask16>(((1u << stop) - 1) & ~((1u << t) - 1)), (__m512)v);
    t = stop;
  }
#else
  alignas(64) float lanes[L];
  *reinterpret_cast<vec*>(lanes) = v;
  for (int64_t t = 0; t < n; ++h, w = 0) {
    const int64_t stop = std::min<int64_t>(n, t + g.W - w);
    std::memcpy(row + h * g.Wp + w + g.pad_off, lanes + t, sizeof(float) * (stop - t));
    t = stop;
  }
#endif
}

// Rows k >= kfull load the last vector masked to the block's columns: for the rows before, a full vector reads on
// into the next row (lanes that are never stored), while from kfull on it would read past the image's data.
template <int NV>
inline __attribute__((always_inline)) void gemm_tile(const GemmArgs& g, const float* __restrict a,
                                                     const float* __restrict b, int64_t ldb, int64_t kfull,
                                                     int64_t img, int64_t m0, int64_t j0, int64_t cols) {
  vec acc[kMR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = vec{};
  const bool stream = g.K >= 1024;
  auto step = [&](int64_t k, const vec (&bv)[NV]) __attribute__((always_inline)) {
    const float* ak = a + k * kMR;
    // A long panel (a fully connected weight) streams from memory: fetch it ~1000 cycles ahead, into every cache
    // level (on a Xeon, a non-temporal prefetch left AlexNet's fc8 at batch 16 three times slower).
    if (stream && (k & 1) == 0) __builtin_prefetch(ak + 1024, 0, 3);
#pragma GCC unroll 8
    for (int m = 0; m < kMR; ++m) {
      const vec am = splat(ak[m]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] += am * bv[v];
    }
  };
  for (int64_t k = 0; k < kfull; ++k) {
    vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + k * ldb + v * L);
    step(k, bv);
  }
  for (int64_t k = kfull; k < g.K; ++k) {
    vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = vload(b + k * ldb + v * L);
    bv[NV - 1] = vload_n(b + k * ldb + (NV - 1) * L, cols - (NV - 1) * L);
    step(k, bv);
  }
  const int64_t rows = std::min<int64_t>(kMR, g.M - m0);
  const int32_t* scatter = g.scatter ? g.scatter + img * g.scatter_img : nullptr;
  int64_t hs[NV] = {}, ws[NV] = {};
  if (g.W)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      hs[v] = (j0 + v * L) / g.W;
      ws[v] = j0 + v * L - hs[v] * g.W;
    }
  for (int m = 0; m < rows; ++m) {
    float* row = g.c + img * g.c_img + (m0 + m) * g.ldc;
    const float* res_row = g.res ? g.res + img * g.c_img + (m0 + m) * g.ldc : nullptr;
    const float bias = g.bias ? g.bias[m0 + m] : 0.f;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t n = std::min<int64_t>(L, cols - v * L);
      if (n > 0) gemm_store(g, row, res_row, scatter, j0 + v * L, hs[v], ws[v], acc[m][v], n, bias);
    }
  }
}

#if LCNN_VB == 64
// src[0], src[s], ..., src[15 s]: by permutes of contiguous loads for s = 2 and 4 (the strides of AlexNet's and
// ResNet's strided layers; the masks keep the last load at src[15 s]), by a gather otherwise.
inline __m512 strided16(const float* src, int64_t s) {
  if (s == 2) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(_mm512_loadu_ps(src), even, _mm512_maskz_loadu_ps(0x7FFF, src + 16));
  }
  if (s == 4) {
    const __m512i pick = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(src), pick, _mm512_loadu_ps(src + 16));
    const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(src + 32), pick, _mm512_maskz_loadu_ps(0x1FFF, src + 48));
    return _mm512_shuffle_f32x4(lo, hi, 0x44);
  }
  const __m512i step = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(s)));
  return _mm512_i32gather_ps(step, src, 4);
}
#endif

// Columns j0 .. j0 + cols of a strided 1x1 convolution's input (see GemmArgs::in_W) of one image (src, its data
// ending at end), as K rows of `width` floats at dst; what a row has past `cols` is left as it is.
inline void gather_strided(const GemmArgs& g, const float* src, const float* end, int64_t j0, int64_t cols,
                           float* dst, int64_t width) {
  // The block's runs of columns along one output row: where each starts in the block, its length, and where it
  // reads in a plane.
  int64_t at[kGemmCols], len[kGemmCols], from[kGemmCols], runs = 0;
  for (int64_t c = 0; c < cols; ++runs) {
    const int64_t j = j0 + c, ho = j / g.out_W, wo = j - ho * g.out_W, h = ho * g.in_sH;
    at[runs] = c;
    len[runs] = std::min(cols - c, g.out_W - wo);
    from[runs] = (g.in_rows ? h / g.in_rows * g.in_strip + h % g.in_rows * g.in_W : h * g.in_W) + wo * g.in_sW;
    c += len[runs];
  }
  const int64_t s = g.in_sW;
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t r = 0; r < runs; ++r) {
      const float* in = src + k * g.ldb + from[r];
      float* out = dst + k * width + at[r];
      const int64_t n = len[r];
      int64_t t = 0;
      if (s == 1) {
        std::memcpy(out, in, sizeof(float) * n);
        continue;
      }
#if LCNN_VB == 64
      // Sixteen at a time while the last input read (lane 15's) lies within the image.
      for (; t < n && in + (t + 15) * s < end; t += 16)
        _mm512_mask_storeu_ps(out + t, n - t >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - t)) - 1),
                              strided16(in + t * s, s));
#endif
      for (; t < n; ++t) out[t] = in[t * s];
    }
}

void gemm(const GemmArgs& g, int64_t begin, int64_t end) {
  const int64_t panels = (g.M + kMR - 1) / kMR, blocks = (g.ncols + kGemmCols - 1) / kGemmCols;
  // The next block's columns sit in K rows far apart (an image's channels), too many streams for the hardware
  // prefetcher: each panel of a block fetches its share of those rows into L2, so that the next block's first
  // panel does not wait on memory (ResNet-18-accurate's 64 -> 128 dictionary at batch 16: ~8% off its layer).
  const int64_t share = (g.K + panels - 1) / panels;
  // A strided input's block is gathered into a dense copy; consecutive items of one thread usually share the
  // block, so the copy is reused.
  thread_local std::vector<float> tail;
  int64_t tail_key = -1;
  // The item's (image, block, panel) are stepped along rather than divided out of its number each time.
  int64_t panel = begin % panels, blk = (begin / panels) % blocks, img = begin / (panels * blocks);
  auto next_item = [&]() {
    if (++panel == panels) {
      panel = 0;
      if (++blk == blocks) {
        blk = 0;
        ++img;
      }
    }
  };
  for (int64_t it = begin; it < end; next_item(), ++it) {
    // The last image may have fewer columns (a shorter last strip, see Act): the items past them are empty.
    const int64_t ncols = g.last_cols && img + 1 == g.images ? g.last_cols : g.ncols;
    const int64_t j0 = blk * kGemmCols, cols = std::min<int64_t>(kGemmCols, ncols - j0), nv = (cols + L - 1) / L;
    if (cols <= 0) continue;
    const float* b = g.b + img * g.b_img + j0;
    int64_t ldb = g.ldb, kfull = g.K;
    if (!g.in_W && blk + 1 < blocks)
      for (int64_t k = panel * share, k1 = std::min(g.K, k + share); k < k1; ++k)
        for (int64_t c = 0; c < kGemmCols; c += 16) __builtin_prefetch(b + k * g.ldb + kGemmCols + c, 0, 2);  // a line
    if (g.in_W) {
      // A strided input: the block's columns gathered from every in_sH-th row and in_sW-th column.
      const int64_t width = nv * L;
      if (tail_key != img * blocks + blk) {
        tail.assign(g.K * width, 0.f);
        const float* src = g.b + img * g.b_img;
        gather_strided(g, src, src + g.b_img, j0, cols, tail.data(), width);
        tail_key = img * blocks + blk;
      }
      b = tail.data();
      ldb = width;
    } else if (cols % L) {
      // Columns that do not fill whole vectors are read in place. They used to be copied into a zero-padded block
      // once per call of this function, and at 2 threads run_stages hands a small GEMM out an item per call: the
      // narrow block of AlexNet-fast's 13x13 dictionaries (169 = 3 x 48 + 25 columns) was copied for each of its 4
      // panels, and one thread doing all 16 items that way took 39 us against 30 us in one call. The image's data
      // ends after column ncols of row K - 1; rows from kfull on would read past it.
      const int64_t end = (g.K - 1) * g.ldb + ncols, reach = j0 + nv * L;
      kfull = end < reach ? 0 : std::min(g.K, (end - reach) / g.ldb + 1);
    }
    const float* a = g.a + img * g.a_img + panel * (g.a_panel ? g.a_panel : g.K * kMR);
    if (nv >= kGemmVectors) gemm_tile<kGemmVectors>(g, a, b, ldb, kfull, img, panel * kMR, j0, cols);
    else if (nv == 2) gemm_tile<2>(g, a, b, ldb, kfull, img, panel * kMR, j0, cols);
    else gemm_tile<1>(g, a, b, ldb, kfull, img, panel * kMR, j0, cols);
  }
}

// ------------------------------------------------------------------------------------------------------------
// Taps (see TapArgs).

// base + offset as one register: left alone, GCC hoists base + v * L for every vector of a tile out of the tap
// loop and then spends one address addition per load (and spills, with eight of them).
template <typename I>
inline const float* tap_address(const float* base, I offset) {
  const float* p = base + static_cast<int64_t>(offset);
  asm("" : "+r"(p));
  return p;
}

// acc[v] += sum of value * base[offset + v * L] over the taps k, k + 1, ... of a channel (up to k1, and with
// Bounded, only while offset < bound: a row's taps are sorted by offset); k is left at the first tap not taken.
template <int V, typename I, bool Bounded>
inline __attribute__((always_inline)) void tile_acc(const TapArgs& a, int64_t& k, int64_t k1, int64_t bound,
                                                    const float* base, vec (&out)[V]) {
  // Narrow tiles would wait on the FMA latency of too few accumulators: give them independent chains over
  // alternating taps instead.
  constexpr int CH = V >= 4 ? 1 : (V >= 2 ? 2 : 4);
  vec acc[CH][V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) acc[0][v] = out[v];
#pragma GCC unroll 8
  for (int c = 1; c < CH; ++c)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[c][v] = vec{};
  const I* idx = static_cast<const I*>(a.idx);
  for (; k + CH <= k1 && (!Bounded || idx[k + CH - 1] < bound); k += CH) {
#pragma GCC unroll 4
    for (int c = 0; c < CH; ++c) {
      const float* p = tap_address(base, idx[k + c]);
      const vec w = splat(a.val[k + c]);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[c][v] += w * vload(p + v * L);
    }
  }
  for (; k < k1 && (!Bounded || idx[k] < bound); ++k) {
    const float* p = tap_address(base, idx[k]);
    const vec w = splat(a.val[k]);
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[0][v] += w * vload(p + v * L);
  }
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
#pragma GCC unroll 4
    for (int c = 1; c < CH; ++c) acc[0][v] += acc[c][v];
    out[v] = acc[0][v];
  }
}

// Where tile t starts: it lies in strip `strip` of the output (see TapArgs::strip_rows), whose lane q0 (counted
// from the strip's first row) is row i0 of the strip, column j0; it reads the planes from lane `at`; `next` is
// the output offset in the strip of the next tile's first row. Worked out once per tile, since all of a tile's
// channels share it (a 64-bit division costs about as much as a tap).
struct TileGeom {
  int64_t q0, i0, j0, next, strip, at;
  int64_t rows, Q;  // the strip's rows, and the lanes they span, (rows - 1) * Wq + Wo (q0 >= Q: an empty tile)
};

inline TileGeom tile_geom(const TapArgs& a, int64_t t) {
  const int64_t strip = t / a.strip_tiles, q0 = (t - strip * a.strip_tiles) * kTileVectors * L, i0 = q0 / a.Wq;
  const int64_t rows = (strip + 1) * a.strip_tiles == a.ntiles ? a.last_rows : a.strip_rows;
  return {q0, i0, q0 - i0 * a.Wq, (q0 + kTileVectors * L) / a.Wq * a.Wo, strip, strip * a.strip_rows * a.Wq + q0,
          rows, (rows - 1) * a.Wq + a.Wo};
}

// Write the valid lanes of the V vectors of a tile (lanes q0 .. q0 + V*L of the padded plane) to the output
// plane, adding bias and residual and applying ReLU.
template <int V>
inline __attribute__((always_inline)) void store_tile(const TapArgs& a, float* plane, const float* res_plane,
                                                      const TileGeom& tg, const vec (&acc)[V], float bias) {
  const int64_t q0 = tg.q0;
#if LCNN_VB == 64
  // The lanes of each vector that fall on padding columns are squeezed out in registers; the others land
  // contiguously in the output rows.
  int64_t i = tg.i0, j = tg.j0;
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    if (v > 0) {
      for (j += L; j >= a.Wq; j -= a.Wq) ++i;
    }
    const int64_t q = q0 + L * v;
    uint32_t mask = a.vmask[j];
    const int64_t rem = tg.Q - q;
    if (rem < L) mask &= rem > 0 ? (1u << rem) - 1 : 0;
    if (!mask) continue;
    const __mmask16 packed = static_cast<__mmask16>((1u << __builtin_popcount(mask)) - 1);
    const int64_t off = i * a.Wo + a.dstart[j];
    __m512 x = _mm512_maskz_compress_ps(static_cast<__mmask16>(mask), (__m512)acc[v]);
    x = _mm512_add_ps(x, _mm512_set1_ps(bias));
    if (res_plane) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(packed, res_plane + off));
    if (a.relu) x = _mm512_max_ps(_mm512_setzero_ps(), x);  // MAXPS returns its second operand for NaN
    _mm512_mask_storeu_ps(plane + off, packed, x);
  }
#else
  alignas(64) float lanes[V * L];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) *reinterpret_cast<vec*>(lanes + v * L) = acc[v];
  const int64_t stop = std::min<int64_t>(V * L, tg.Q - q0);
  for (int64_t l = 0, i = tg.i0, j = tg.j0; l < stop; ++l) {
    if (j < a.Wo) {
      float x = lanes[l] + bias;
      if (res_plane) x += res_plane[i * a.Wo + j];
      plane[i * a.Wo + j] = a.relu ? std::max(x, 0.f) : x;
    }
    if (++j == a.Wq) {
      j = 0;
      ++i;
    }
  }
#endif
}

// Store a finished tile of channel o, then fetch that channel's lines for its next tile: it comes after all the
// other channels of this one, and one stream per channel is too many for the hardware prefetcher.
template <int V>
inline __attribute__((always_inline)) void finish_tile(const TapArgs& a, int64_t n, int64_t o, const TileGeom& tg,
                                                       const vec (&acc)[V]) {
  const int64_t plane_off = n * a.O * a.Ho * a.Wo + tg.strip * a.strip_stride + o * a.channel_stride;
  float* plane = a.out + plane_off;
  const float* res = a.res ? a.res + plane_off : nullptr;
  store_tile<V>(a, plane, res, tg, acc, a.bias[o]);
  const int64_t next = tg.next;
  if (next < tg.rows * a.Wo) {
    const int64_t stop = std::min<int64_t>(tg.rows * a.Wo, next + kTileVectors * L);
    for (int64_t f = next; f < stop; f += 16) {
      __builtin_prefetch(plane + f, 1, 3);
      if (res) __builtin_prefetch(res + f, 0, 3);
    }
  }
}

template <int V, typename I>
inline __attribute__((always_inline)) void tile_out(const TapArgs& a, int64_t n, int64_t o, const TileGeom& tg) {
  vec acc[V] = {};
  int64_t k = a.rowptr[o];
  tile_acc<V, I, false>(a, k, a.rowptr[o + 1], 0, a.buf + tg.at, acc);
  finish_tile<V>(a, n, o, tg, acc);
}

// A tile of a group of channels with the dictionary planes taken in blocks (a.span offsets each, so that the
// rows a tile reads from one block stay in L1): block by block over the group's channels, each channel resuming
// its taps where the previous block stopped, its partial sums kept in a per-thread scratch.
template <int V, typename I>
inline __attribute__((always_inline)) void blocked_tile(const TapArgs& a, int64_t n, int64_t o0, int64_t o1,
                                                        const TileGeom& tg) {
  thread_local std::vector<int64_t> pos_buf;
  thread_local std::vector<float> part_buf;
  if (static_cast<int64_t>(pos_buf.size()) < o1 - o0) pos_buf.resize(o1 - o0);
  int64_t* pos = pos_buf.data();
  float* part = scratch(part_buf, (o1 - o0) * V * L);
  for (int64_t o = o0; o < o1; ++o) pos[o - o0] = a.rowptr[o];
  const int64_t blocks = a.nblocks;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t bound = b + 1 == blocks ? std::numeric_limits<int64_t>::max() : (b + 1) * a.span;
    for (int64_t o = o0; o < o1; ++o) {
      vec acc[V];
      float* saved = part + (o - o0) * V * L;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[v] = b == 0 ? vec{} : vload(saved + v * L);
      int64_t k = pos[o - o0];
      tile_acc<V, I, true>(a, k, a.rowptr[o + 1], bound, a.buf + tg.at, acc);
      pos[o - o0] = k;
      if (b + 1 == blocks) {
        finish_tile<V>(a, n, o, tg, acc);
      } else {
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) vstore(saved + v * L, acc[v]);
      }
    }
  }
}

// Items (image, tile, channel), tile-major: all channels of one tile read the same few rows of the dictionary
// planes while they are in L1/L2. With blocked planes, items are (image, tile, group of channels). With
// a.channel_major, items are (image, channel, tile) (see TapArgs).
template <typename I>
inline void taps_impl(const TapArgs& a, int64_t begin, int64_t end) {
  if (begin >= end) return;
  const int64_t per_tile = a.nblocks > 1 ? (a.O + a.group - 1) / a.group : a.O;
  // The item's (image, tile, channel) are stepped along rather than divided out of its number each time.
  int64_t c, t, n = begin / (per_tile * a.ntiles);  // tiles of all strips of an image
  if (a.channel_major) {
    t = begin % a.ntiles;
    c = (begin / a.ntiles) % per_tile;
  } else {
    c = begin % per_tile;
    t = (begin / per_tile) % a.ntiles;
  }
  TileGeom tg = tile_geom(a, t);
  int64_t vectors = (std::min<int64_t>(kTileVectors * L, tg.Q - tg.q0) + L - 1) / L;
  for (int64_t it = begin; it < end; ++it) {
    if (vectors <= 0) {
      // A tile past the end of a shorter last strip (see TileGeom): nothing to compute.
    } else if (a.nblocks > 1) {
      const int64_t o0 = c * a.group, o1 = std::min(a.O, o0 + a.group);
      switch (vectors) {
        case 8: blocked_tile<8, I>(a, n, o0, o1, tg); break;
        case 7: blocked_tile<7, I>(a, n, o0, o1, tg); break;
        case 6: blocked_tile<6, I>(a, n, o0, o1, tg); break;
        case 5: blocked_tile<5, I>(a, n, o0, o1, tg); break;
        case 4: blocked_tile<4, I>(a, n, o0, o1, tg); break;
        case 3: blocked_tile<3, I>(a, n, o0, o1, tg); break;
        case 2: blocked_tile<2, I>(a, n, o0, o1, tg); break;
        default: blocked_tile<1, I>(a, n, o0, o1, tg); break;
      }
    } else {
      switch (vectors) {
        case 8: tile_out<8, I>(a, n, c, tg); break;
        case 7: tile_out<7, I>(a, n, c, tg); break;
        case 6: tile_out<6, I>(a, n, c, tg); break;
        case 5: tile_out<5, I>(a, n, c, tg); break;
        case 4: tile_out<4, I>(a, n, c, tg); break;
        case 3: tile_out<3, I>(a, n, c, tg); break;
        case 2: tile_out<2, I>(a, n, c, tg); break;
        default: tile_out<1, I>(a, n, c, tg); break;
      }
    }
    if (it + 1 == end) break;
    if (a.channel_major) {
      if (++t == a.ntiles) {
        t = 0;
        if (++c == per_tile) {
          c = 0;
          ++n;
        }
      }
      if (a.ntiles == 1) continue;  // the same tile
    } else if (++c == per_tile) {
      c = 0;
      if (++t == a.ntiles) {
        t = 0;
        ++n;
      }
    } else {
      continue;  // the same tile
    }
    tg = tile_geom(a, t);
    vectors = (std::min<int64_t>(kTileVectors * L, tg.Q - tg.q0) + L - 1) / L;
  }
}

void taps_u16(const TapArgs& a, int64_t b, int64_t e) { taps_impl<uint16_t>(a, b, e); }
void taps_i32(const TapArgs& a, int64_t b, int64_t e) { taps_impl<int32_t>(a, b, e); }

// ------------------------------------------------------------------------------------------------------------
// Max pooling of rows.

// One pooled row from input rows h0 .. h1 (already clipped to the input) of a plane of width W and row stride
// ld, written as max(pooled + bias, 0) with ReLU, else pooled + bias.
inline void pool_row(const PoolGeom& p, const float* src, int64_t ld, int64_t W, int64_t h0, int64_t h1, float* o,
                     float* col, float bias, bool relu) {
  const int64_t Wo = p.Wo, kW = p.kW, sW = p.sW, pW = p.pW;
#if LCNN_VB == 64
  if (kW == 3 && sW == 2) {
    // AlexNet's and ResNet's pooling, 16 outputs per step, in registers: output j takes columns 2j - pW .. 2j - pW
    // + 2; the rows are reduced on the loads of columns c0 .. c0 + 15, c0 + 16 .. c0 + 31 and the same shifted by
    // two (masked loads fill columns outside the plane with -inf), then even, odd and next-even columns are pulled
    // out by permutes.
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    auto inside = [W](int64_t c0) {  // lanes t with 0 <= c0 + t < W
      const int64_t lo = std::max<int64_t>(0, -c0), hi = std::min<int64_t>(16, W - c0);
      return static_cast<__mmask16>(hi <= lo ? 0 : ((1u << hi) - 1) & ~((1u << lo) - 1));
    };
    for (int64_t j = 0; j < Wo; j += 16) {
      const int64_t c0 = 2 * j - pW;
      const __mmask16 m0 = inside(c0), m1 = inside(c0 + 16), m2 = inside(c0 + 2), m3 = inside(c0 + 18);
      __m512 a = ninf, b = ninf, a2 = ninf, b2 = ninf;
      for (int64_t h = h0; h < h1; ++h) {
        const float* r = src + h * ld + c0;
        a = nan_max16(a, _mm512_mask_loadu_ps(ninf, m0, r));
        b = nan_max16(b, _mm512_mask_loadu_ps(ninf, m1, r + 16));
        a2 = nan_max16(a2, _mm512_mask_loadu_ps(ninf, m2, r + 2));
        b2 = nan_max16(b2, _mm512_mask_loadu_ps(ninf, m3, r + 18));
      }
      const __m512 pair = nan_max16(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
      __m512 m = _mm512_add_ps(nan_max16(pair, _mm512_permutex2var_ps(a2, even, b2)), _mm512_set1_ps(bias));
      if (relu) m = _mm512_max_ps(_mm512_setzero_ps(), m);
      const int64_t n = std::min<int64_t>(16, Wo - j);
      _mm512_mask_storeu_ps(o + j, static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1), m);
    }
    return;
  }
#endif
  // The window rows are first reduced column by column into `col` (contiguous, vectorised), then each output
  // takes the max over its window of `col`; columns whose window lies inside the input run branch-free.
  const int64_t jlo = std::min(Wo, (pW + sW - 1) / sW);
  const int64_t jhi = std::max(jlo, std::min(Wo, W + pW - kW >= 0 ? (W + pW - kW) / sW + 1 : 0));
  std::memcpy(col, src + h0 * ld, sizeof(float) * W);
  for (int64_t h = h0 + 1; h < h1; ++h) {
    const float* r = src + h * ld;
    for (int64_t w = 0; w < W; ++w) col[w] = nan_max(col[w], r[w]);
  }
  const float* cc = col - pW;
  if (kW == 3 && sW == 2) {
    for (int64_t j = jlo; j < jhi; ++j) o[j] = nan_max(nan_max(cc[2 * j], cc[2 * j + 1]), cc[2 * j + 2]);
  } else if (kW == 3 && sW == 1) {
    for (int64_t j = jlo; j < jhi; ++j) o[j] = nan_max(nan_max(cc[j], cc[j + 1]), cc[j + 2]);
  } else {
    for (int64_t j = jlo; j < jhi; ++j) {
      float m = cc[j * sW];
      for (int64_t dw = 1; dw < kW; ++dw) m = nan_max(m, cc[j * sW + dw]);
      o[j] = m;
    }
  }
  auto edge = [&](int64_t j) {
    const int64_t w0 = std::max<int64_t>(j * sW - pW, 0), w1 = std::min(j * sW - pW + kW, W);
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t w = w0; w < w1; ++w) m = nan_max(m, col[w]);
    o[j] = m;
  };
  for (int64_t j = 0; j < jlo; ++j) edge(j);
  for (int64_t j = jhi; j < Wo; ++j) edge(j);
  if (relu)
    for (int64_t j = 0; j < Wo; ++j) o[j] = std::max(o[j] + bias, 0.f);
  else if (bias != 0.f)
    for (int64_t j = 0; j < Wo; ++j) o[j] += bias;
}

// One tile (lanes q0 .. q0 + V*L) of the group's channels [o0, o1) into rows + (o - o0) * stride, the dictionary
// planes taken in a.nblocks blocks (see blocked_tile), the partial sums kept where the tile goes.
template <int V, typename I>
inline __attribute__((always_inline)) void pooled_tile(const TapArgs& a, int64_t o0, int64_t o1, int64_t q0,
                                                       float* dst, int64_t stride) {
  thread_local std::vector<int64_t> pos_buf;
  if (static_cast<int64_t>(pos_buf.size()) < o1 - o0) pos_buf.resize(o1 - o0);
  int64_t* pos = pos_buf.data();
  for (int64_t o = o0; o < o1; ++o) pos[o - o0] = a.rowptr[o];
  for (int64_t b = 0; b < a.nblocks; ++b) {
    const int64_t bound = b + 1 == a.nblocks ? std::numeric_limits<int64_t>::max() : (b + 1) * a.span;
    for (int64_t o = o0; o < o1; ++o) {
      float* d = dst + (o - o0) * stride;
      vec acc[V];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[v] = b == 0 ? vec{} : vload(d + v * L);
      int64_t k = pos[o - o0];
      tile_acc<V, I, true>(a, k, a.rowptr[o + 1], bound, a.buf + q0, acc);
      pos[o - o0] = k;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) vstore(d + v * L, acc[v]);
    }
  }
}

// Items (image, band of pooled rows, group of channels): the convolution rows under the band are computed for the
// group's channels into a per-thread scratch, tile by tile and channel by channel within a tile (the dictionary
// rows a tile reads stay in L1 across the channels), then pooled; bias and ReLU are applied to the pooled values
// (both are monotonic, so this equals pooling the activations).
template <typename I>
inline void pooled_impl(const TapArgs& a, int64_t begin, int64_t end) {
  constexpr int TL = kTileVectors * L;
  const PoolGeom& pg = a.pool;
  const int64_t groups = (a.O + a.group - 1) / a.group;
  thread_local std::vector<float> rows_buf, col_buf;
  float* col = scratch(col_buf, a.Wo + L);
  for (int64_t it = begin; it < end; ++it) {
    const int64_t grp = it % groups, bnd = (it / groups) % a.nbands, n = it / (groups * a.nbands);
    const int64_t o0 = grp * a.group, o1 = std::min(a.O, o0 + a.group);
    const int64_t i0 = bnd * a.band, i1 = std::min(pg.Ho, i0 + a.band);
    int64_t r0, r1, unused;
    pool_rows(pg, i0, a.Ho, r0, unused);
    pool_rows(pg, i1 - 1, a.Ho, unused, r1);
    const int64_t qa = r0 * a.Wq, qb = (r1 - 1) * a.Wq + a.Wo;
    const int64_t stride = (qb - qa + TL - 1) / TL * TL;
    float* rows = scratch(rows_buf, (o1 - o0) * stride);
    for (int64_t q0 = qa; q0 < qb; q0 += TL) {
      float* dst = rows + (q0 - qa);
      switch ((std::min<int64_t>(TL, qb - q0) + L - 1) / L) {
        case 8: pooled_tile<8, I>(a, o0, o1, q0, dst, stride); break;
        case 7: pooled_tile<7, I>(a, o0, o1, q0, dst, stride); break;
        case 6: pooled_tile<6, I>(a, o0, o1, q0, dst, stride); break;
        case 5: pooled_tile<5, I>(a, o0, o1, q0, dst, stride); break;
        case 4: pooled_tile<4, I>(a, o0, o1, q0, dst, stride); break;
        case 3: pooled_tile<3, I>(a, o0, o1, q0, dst, stride); break;
        case 2: pooled_tile<2, I>(a, o0, o1, q0, dst, stride); break;
        default: pooled_tile<1, I>(a, o0, o1, q0, dst, stride); break;
      }
    }
    // Where pooled row i0 starts in the output's strips (the rows after it are stepped, not divided out per row).
    const int64_t strip0 = i0 / a.strip_rows, local0 = i0 - strip0 * a.strip_rows;
    for (int64_t o = o0; o < o1; ++o) {
      const float* conv = rows + (o - o0) * stride;
      float* plane = a.out + n * a.O * pg.Ho * pg.Wo + o * a.channel_stride;
      for (int64_t i = i0, strip = strip0, local = local0; i < i1; ++i, ++local) {
        if (local == a.strip_rows) {
          ++strip;
          local = 0;
        }
        int64_t h0, h1;
        pool_rows(pg, i, a.Ho, h0, h1);
        float* row = plane + strip * a.strip_stride + local * pg.Wo;
        pool_row(pg, conv + (h0 - r0) * a.Wq, a.Wq, a.Wo, 0, h1 - h0, row, col, a.bias[o], a.relu);
      }
    }
  }
}

void pooled_u16(const TapArgs& a, int64_t b, int64_t e) { pooled_impl<uint16_t>(a, b, e); }
void pooled_i32(const TapArgs& a, int64_t b, int64_t e) { pooled_impl<int32_t>(a, b, e); }

// Standalone max pooling of NCHW planes (after a dense convolution).
void pool(const PoolArgs& p, int64_t begin, int64_t end) {
  thread_local std::vector<float> col_buf;
  float* col = scratch(col_buf, p.W);
  for (int64_t pl = begin; pl < end; ++pl) {
    const float* src = p.in + pl * p.H * p.W;
    float* dst = p.out + pl * p.g.Ho * p.g.Wo;
    for (int64_t i = 0; i < p.g.Ho; ++i) {
      int64_t h0, h1;
      pool_rows(p.g, i, p.H, h0, h1);
      pool_row(p.g, src, p.W, p.W, h0, h1, dst + i * p.g.Wo, col, 0.f, p.relu);
    }
  }
}

// Max pooling of a channels-last input (N, H, W, C) into NCHW planes, one pooled row of one image per item: each
// output's window is reduced over all channels at once (contiguous in that layout) into a row buffer (Wo x C),
// which is then written out channel by channel. A convolution whose output goes through this pooling can run
// channels-last without a pass that converts its output back.
void pool_nhwc(const PoolArgs& p, int64_t begin, int64_t end) {
  thread_local std::vector<float> row_buf;
  const PoolGeom& g = p.g;
  const int64_t C = p.C, full = C / L * L;
  float* buf = scratch(row_buf, g.Wo * C);
  const vec ninf = splat(-std::numeric_limits<float>::infinity());
  for (int64_t it = begin; it < end; ++it) {
    const int64_t n = it / g.Ho, i = it % g.Ho;
    int64_t h0, h1;
    pool_rows(g, i, p.H, h0, h1);
    for (int64_t j = 0; j < g.Wo; ++j) {
      const int64_t w0 = std::max<int64_t>(j * g.sW - g.pW, 0), w1 = std::min(j * g.sW - g.pW + g.kW, p.W);
      float* acc = buf + j * C;
      for (int64_t c = 0; c < full; c += L) vstore(acc + c, ninf);
      for (int64_t c = full; c < C; ++c) acc[c] = -std::numeric_limits<float>::infinity();
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          const float* x = p.in + ((n * p.H + h) * p.W + w) * C;
          for (int64_t c = 0; c < full; c += L) {
            vstore(acc + c, nan_max(vload(acc + c), vload(x + c)));
          }
          for (int64_t c = full; c < C; ++c) acc[c] = nan_max(acc[c], x[c]);
        }
    }
    float* out = p.out + (n * C * g.Ho + i) * g.Wo;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < g.Wo; ++j) {
        const float v = buf[j * C + c];
        out[c * g.Ho * g.Wo + j] = p.relu && v < 0.f ? 0.f : v;
      }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Fully connected lookups: one output position. The taps may come block-major (see TapArgs::blocks): block by
// block, each output's taps into responses of that block, so that every block pass reads one contiguous stream of
// taps while its responses stay in cache; an output's partial sums are added in block order.

inline float finish(const TapArgs& a, int64_t o, float s) {
  s += a.bias[o];
  if (a.res) s += a.res[o];
  return a.relu ? std::max(s, 0.f) : s;
}

// Batch of one: sum of value * response over taps [k, k1). The responses are read one by one and put together
// into vectors (4 loads into a 128-bit register, then four of those into one vector): on AMD's Zen cores that is
// about 1.5x the throughput of the hardware gather (which takes about a cycle per element). With Hw (AVX-512 on
// an Intel core with AVX512-FP16, Sapphire Rapids on, whose gathers are fast) the vector is one hardware gather:
// AlexNet-fast's fc6 at batch 1 took ~15% less time on a Xeon. The lanes are the same either way, so is the sum.
// The taps stream from memory once per forward (the weights of the layers after this one push them out of the
// last-level cache between forwards): they are fetched ~2 KB ahead into L1.
#if LCNN_VB >= 32
template <typename I>
inline __m128 gather4(const float* buf, const I* idx) {
  __m128 v = _mm_load_ss(buf + idx[0]);
  v = _mm_insert_ps(v, _mm_load_ss(buf + idx[1]), 0x10);
  v = _mm_insert_ps(v, _mm_load_ss(buf + idx[2]), 0x20);
  return _mm_insert_ps(v, _mm_load_ss(buf + idx[3]), 0x30);
}
#endif

template <typename I, bool Hw>
inline float gather_dot(const TapArgs& a, int64_t k, int64_t k1) {
  const I* idx = static_cast<const I*>(a.idx);
  const float* val = a.val;
  const float* buf = a.buf;
  float s = 0.f;
#if LCNN_VB >= 32
  constexpr int64_t kAhead = 512;  // taps: 2 KB of values, 1 KB (uint16) or 2 KB of offsets
  auto fetch = [&](int64_t at) {  // the lines of taps at .. at + L, kAhead taps on
    __builtin_prefetch(val + at + kAhead, 0, 3);
    __builtin_prefetch(idx + at + kAhead, 0, 3);
  };
  auto lanes = [&](int64_t at) {
#if LCNN_VB == 64
    if constexpr (Hw) {
      const __m512i at_idx = sizeof(I) == 2
          ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + at)))
          : _mm512_loadu_si512(idx + at);
      return _mm512_i32gather_ps(at_idx, buf, 4);
    }
    const __m512 lo = _mm512_castps128_ps512(gather4(buf, idx + at));
    return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(lo, gather4(buf, idx + at + 4), 1),
                                                 gather4(buf, idx + at + 8), 2), gather4(buf, idx + at + 12), 3);
#else
    return _mm256_insertf128_ps(_mm256_castps128_ps256(gather4(buf, idx + at)), gather4(buf, idx + at + 4), 1);
#endif
  };
  vec acc0 = vec{}, acc1 = vec{};
  for (; k + 2 * L <= k1; k += 2 * L) {
    fetch(k);
    fetch(k + L);
    acc0 += vload(val + k) * (vec)lanes(k);
    acc1 += vload(val + k + L) * (vec)lanes(k + L);
  }
  if (k + L <= k1) {
    acc0 += vload(val + k) * (vec)lanes(k);
    k += L;
  }
#if LCNN_VB == 64
  if (Hw && k < k1) {
    // The last taps of the run as one masked gather (masked-off lanes load nothing and add zero): AlexNet-fast's
    // fc6 (~88 taps per output and block, so ~8 left over) took ~13% less time than with the 4-wide and single
    // loads below (alone, three alternating runs on a Xeon).
    const __mmask16 m = static_cast<__mmask16>((1u << (k1 - k)) - 1);
    const __m512i at_idx = sizeof(I) == 2
        ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, idx + k))
        : _mm512_maskz_loadu_epi32(m, idx + k);
    const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, at_idx, buf, 4);
    acc1 += (vec)_mm512_mul_ps(_mm512_maskz_loadu_ps(m, val + k), g);
    k = k1;
  }
#endif
  acc0 += acc1;
  alignas(64) float part[L];
  *reinterpret_cast<vec*>(part) = acc0;
  __m128 q = _mm_load_ps(part);
  for (int t = 4; t < L; t += 4) q = _mm_add_ps(q, _mm_load_ps(part + t));
  for (; k + 4 <= k1; k += 4) q = _mm_add_ps(q, _mm_mul_ps(_mm_loadu_ps(val + k), gather4(buf, idx + k)));
  s = (q[0] + q[1]) + (q[2] + q[3]);
#else
  float s1 = 0.f, s2 = 0.f, s3 = 0.f;
  for (; k + 4 <= k1; k += 4) {
    s += val[k] * buf[idx[k]];
    s1 += val[k + 1] * buf[idx[k + 1]];
    s2 += val[k + 2] * buf[idx[k + 2]];
    s3 += val[k + 3] * buf[idx[k + 3]];
  }
  s = (s + s1) + (s2 + s3);
#endif
  for (; k < k1; ++k) s += val[k] * buf[idx[k]];
  return s;
}

template <typename I, bool Hw>
inline void gather_rows(const TapArgs& a, int64_t begin, int64_t end, float* sum) {
  for (int64_t b = 0; b < a.blocks; ++b) {
    const int64_t* rp = a.rowptr + b * (a.O + 1);
    for (int64_t o = begin; o < end; ++o) {
      const float s = gather_dot<I, Hw>(a, rp[o], rp[o + 1]);
      sum[o - begin] = b == 0 ? s : sum[o - begin] + s;
    }
  }
}

template <typename I>
inline void gather_impl(const TapArgs& a, int64_t begin, int64_t end) {
  thread_local std::vector<float> sum_buf;
  float* sum = scratch(sum_buf, end - begin);
#if LCNN_VB == 64
  if (g_fast_gather) gather_rows<I, true>(a, begin, end, sum);
  else
#endif
    gather_rows<I, false>(a, begin, end, sum);
  for (int64_t o = begin; o < end; ++o) a.out[o] = finish(a, o, sum[o - begin]);
}

void gather_u16(const TapArgs& a, int64_t b, int64_t e) { gather_impl<uint16_t>(a, b, e); }
void gather_i32(const TapArgs& a, int64_t b, int64_t e) { gather_impl<int32_t>(a, b, e); }

// Batch of N > 1: dictionary responses batch-innermost (row `offset` holds the N images), one tap is one FMA per
// vector of images. The rows a channel's taps read jump around inside the block, which stays in L2; they are not
// prefetched: independent chains keep enough loads in flight, and prefetching them 12 taps ahead made AlexNet's
// fc6 and fc7 5-10% slower at batch 16 on a Xeon (even at batch 64). Taps [k, k1) of one block into lanes c0 ..
// of output o; the partial sums are kept in the output between blocks. NS > 0: the batch is NS = V * L images,
// known at compile time, so that a row's address is a shift of its offset (a multiplication per tap otherwise,
// which cost ~8% of the layer at batch 16).
template <int V, typename I, int64_t NS = 0>
inline __attribute__((always_inline)) void fc_batch_chunk(const TapArgs& a, int64_t o, int64_t c0, int64_t k,
                                                          int64_t k1, bool first, bool last) {
  // Independent chains over alternating taps, so that a narrow chunk does not wait on the FMA latency.
  constexpr int CH = V >= 4 ? 1 : (V >= 2 ? 2 : 4);
  const I* idx = static_cast<const I*>(a.idx);
  const int64_t N = NS ? NS : a.N;
  const float* base = a.buf + c0;
  float* out = a.out + o * N + c0;
  vec acc[CH][V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) acc[0][v] = first ? vec{} : vload_n(out + v * L, N - c0 - v * L);
#pragma GCC unroll 4
  for (int c = 1; c < CH; ++c)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[c][v] = vec{};
  for (; k + CH <= k1; k += CH) {
#pragma GCC unroll 4
    for (int c = 0; c < CH; ++c) {
      const float* p = tap_address(base, static_cast<int64_t>(idx[k + c]) * N);
      const vec w = splat(a.val[k + c]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[c][v] += w * vload(p + v * L);
    }
  }
  for (; k < k1; ++k) {
    const float* p = base + static_cast<int64_t>(idx[k]) * N;
    const vec w = splat(a.val[k]);
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[0][v] += w * vload(p + v * L);
  }
  const float bias = a.bias[o];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    const int64_t n = std::min<int64_t>(L, N - c0 - v * L);
    if (n <= 0) break;
    vec x = acc[0][v];
#pragma GCC unroll 4
    for (int c = 1; c < CH; ++c) x += acc[c][v];
    if (last) {
      x += bias;
      if (a.res) x += vload_n(a.res + o * N + c0 + v * L, n);
      if (a.relu) x = vmax0(x);
    }
    vstore_n(out + v * L, x, n);
  }
}

template <typename I>
inline void fc_batch_impl(const TapArgs& a, int64_t begin, int64_t end) {
  constexpr int CB = 4 * L;
  for (int64_t b = 0; b < a.blocks; ++b) {
    const int64_t* rp = a.rowptr + b * (a.O + 1);
    const bool first = b == 0, last = b + 1 == a.blocks;
    if (a.N == L || a.N == 2 * L || a.N == 4 * L) {
      for (int64_t o = begin; o < end; ++o) {
        if (a.N == L) fc_batch_chunk<1, I, L>(a, o, 0, rp[o], rp[o + 1], first, last);
        else if (a.N == 2 * L) fc_batch_chunk<2, I, 2 * L>(a, o, 0, rp[o], rp[o + 1], first, last);
        else fc_batch_chunk<4, I, 4 * L>(a, o, 0, rp[o], rp[o + 1], first, last);
      }
      continue;
    }
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t c0 = 0; c0 < a.N; c0 += CB) {
        switch ((std::min<int64_t>(CB, a.N - c0) + L - 1) / L) {
          case 4: fc_batch_chunk<4, I>(a, o, c0, rp[o], rp[o + 1], first, last); break;
          case 3: fc_batch_chunk<3, I>(a, o, c0, rp[o], rp[o + 1], first, last); break;
          case 2: fc_batch_chunk<2, I>(a, o, c0, rp[o], rp[o + 1], first, last); break;
          default: fc_batch_chunk<1, I>(a, o, c0, rp[o], rp[o + 1], first, last); break;
        }
      }
    }
  }
}

void fc_batch_u16(const TapArgs& a, int64_t b, int64_t e) { fc_batch_impl<uint16_t>(a, b, e); }
void fc_batch_i32(const TapArgs& a, int64_t b, int64_t e) { fc_batch_impl<int32_t>(a, b, e); }

// ------------------------------------------------------------------------------------------------------------
// y = W x for one input vector (see GemvArgs). After a ReLU about half the inputs are zero, and a product
// with one input vector is bound by reading the weights from memory; since the rows read jump over the skipped
// ones, the hardware prefetcher cannot guess them: they are prefetched ahead.

void gemv(const GemvArgs& g, int64_t begin, int64_t end) {
  constexpr int64_t kAhead = 8;  // rows prefetched ahead
  alignas(64) float acc[kGemvChunk];
  for (int64_t c = begin; c < end; ++c) {
    const int64_t m0 = c * g.chunk, len = std::min(g.chunk, g.M - m0), full = len / L * L;
    std::memset(acc, 0, sizeof(float) * len);
    auto row = [&](int64_t k) { return g.wt + g.rows[k] * g.M + m0; };
    auto fetch = [&](int64_t k) {
      if (k < g.ahead)
        for (int64_t b = 0; b < len; b += 16) __builtin_prefetch(row(k) + b, 0, 3);
    };
    int64_t k = 0;
    // Four rows per pass over the accumulators (in input order, so each sum is still taken in order).
    for (; k + 4 <= g.nnz; k += 4) {
      for (int64_t r = 0; r < 4; ++r) fetch(k + kAhead + r);
      const float *p0 = row(k), *p1 = row(k + 1), *p2 = row(k + 2), *p3 = row(k + 3);
      const vec w0 = splat(g.x[k]), w1 = splat(g.x[k + 1]), w2 = splat(g.x[k + 2]), w3 = splat(g.x[k + 3]);
      for (int64_t t = 0; t < full; t += L) {
        vec v = vload(acc + t);
        v += w0 * vload(p0 + t);
        v += w1 * vload(p1 + t);
        v += w2 * vload(p2 + t);
        v += w3 * vload(p3 + t);
        vstore(acc + t, v);
      }
      for (int64_t t = full; t < len; ++t)
        acc[t] = (((acc[t] + g.x[k] * p0[t]) + g.x[k + 1] * p1[t]) + g.x[k + 2] * p2[t]) + g.x[k + 3] * p3[t];
    }
    for (; k < g.nnz; ++k) {
      const float* p = row(k);
      const vec w = splat(g.x[k]);
      for (int64_t t = 0; t < full; t += L) vstore(acc + t, vload(acc + t) + w * vload(p + t));
      for (int64_t t = full; t < len; ++t) acc[t] += g.x[k] * p[t];
    }
    std::memcpy(g.y + m0, acc, sizeof(float) * len);
  }
}

// The nonzero entries of x[0, K) and their positions, in order, into vals and rows (each with room for K + 16);
// returns how many. NaN counts as nonzero, -0 as zero, as `x != 0` has them. The AVX-512 form compresses 16 lanes
// in a register and stores them whole (the lanes past the count are overwritten by the next store, or unused):
// compressing stores straight to memory are reported slow on AMD's Zen 4 (not measured here).
int64_t nonzeros(const float* x, int64_t K, float* vals, int64_t* rows) {
  int64_t nnz = 0, k = 0;
#if LCNN_VB == 64
  const __m512i first8 = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  for (; k + 16 <= K; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    const __mmask16 m = _mm512_cmpneq_ps_mask(v, _mm512_setzero_ps());
    const __mmask8 lo = static_cast<__mmask8>(m), hi = static_cast<__mmask8>(m >> 8);
    const __m512i at = _mm512_add_epi64(first8, _mm512_set1_epi64(k));
    _mm512_storeu_ps(vals + nnz, _mm512_maskz_compress_ps(m, v));
    _mm512_storeu_si512(rows + nnz, _mm512_maskz_compress_epi64(lo, at));
    const int64_t nlo = __builtin_popcount(lo);
    const __m512i at_hi = _mm512_add_epi64(at, _mm512_set1_epi64(8));
    _mm512_storeu_si512(rows + nnz + nlo, _mm512_maskz_compress_epi64(hi, at_hi));
    nnz += nlo + __builtin_popcount(hi);
  }
#endif
  // Without a branch: after a ReLU about half the inputs are zero, in no order a predictor could learn (a branch
  // here took ~30 us of fc7's and fc8's products with 4096 inputs at batch 1).
  for (; k < K; ++k) {
    vals[nnz] = x[k];
    rows[nnz] = k;
    nnz += x[k] != 0.f;
  }
  return nnz;
}

// ------------------------------------------------------------------------------------------------------------
// Stride phases of a dictionary over few input channels.

// A dictionary over few input channels (the first layer's RGB): computed straight into the stride-phase planes,
// reading each input row once per phase, instead of a GEMM into a temporary and a scatter. Items are the Hq * sH
// phase rows (hq, a), so that input rows are visited in order; each writes row hq of the planes (p, a, b) for
// every p and b. The input is read once per call, from memory: the rows an item after next reads are fetched.
void phase_dict(const PhaseDictArgs& f, int64_t begin, int64_t end) {
  const int64_t S = f.sH * f.sW, C = f.C, P = f.P, s = f.sW;
  float xs[kPhaseDictMaxC * L];
  for (int64_t it = begin; it < end; ++it) {
    const int64_t hq = it / f.sH, a = it - hq * f.sH, h = hq * f.sH + a - f.pH;
    if (h + 2 < f.H && h + 2 >= 0)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t w = 0; w < f.W; w += 16) __builtin_prefetch(f.x + (c * f.H + h + 2) * f.W + w, 0, 3);
    for (int64_t b = 0; b < f.sW; ++b) {
      auto row = [&](int64_t p) { return f.B + ((p * S + a * f.sW + b) * f.Hq + hq) * f.Wq; };
      if (h < 0 || h >= f.H) {
        for (int64_t p = 0; p < P; ++p) std::memset(row(p), 0, sizeof(float) * f.Wq);
        continue;
      }
      int64_t wlo, whi;
      phase_columns(b, f.W, s, f.pW, f.Wq, wlo, whi);
      for (int64_t p = 0; p < P; ++p) {
        std::memset(row(p), 0, sizeof(float) * wlo);
        std::memset(row(p) + whi, 0, sizeof(float) * (f.Wq - whi));
      }
      const float* src = f.x + h * f.W + wlo * s + b - f.pW;
      for (int64_t i = 0; i < whi - wlo; i += L) {
        const int64_t n = std::min<int64_t>(L, whi - wlo - i);
        for (int64_t c = 0; c < C; ++c) {
          const float* q = src + c * f.H * f.W + i * s;
#if LCNN_VB == 64
          if (n == 16) {
            _mm512_storeu_ps(xs + c * L, strided16(q, s));
            continue;
          }
#endif
          for (int64_t t = 0; t < L; ++t) xs[c * L + t] = t < n ? q[t * s] : 0.f;
        }
        // Four dictionary rows at a time: four independent FMA chains instead of one that waits on each FMA.
        for (int64_t p0 = 0; p0 < P; p0 += 4) {
          vec acc[4] = {};
          for (int64_t c = 0; c < C; ++c) {
            const vec xc = vload(xs + c * L);
#pragma GCC unroll 4
            for (int64_t j = 0; j < 4; ++j) {
              const int64_t p = std::min(p0 + j, P - 1);
              acc[j] += splat(f.w[(p / kMR * C + c) * kMR + p % kMR]) * xc;
            }
          }
          for (int64_t p = p0; p < std::min(P, p0 + 4); ++p) vstore_n(row(p) + wlo + i, acc[p - p0], n);
        }
      }
    }
  }
}
