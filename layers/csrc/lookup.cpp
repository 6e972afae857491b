// Fast LCNN lookup inference kernels for layers/lookup.py (new; the Lua code only trained and counted lookups).
//
// A lookup layer computes y = align(pad(dict(x))): `dict` is a 1x1 convolution onto P dictionary channels and
// `align` a very sparse kH x kW convolution with stride (sH, sW). Inference runs it per image, in NCHW:
//   1. the dictionary is a small GEMM of our own (register-blocked: 8 dictionary rows x up to 3 vectors of pixels,
//      about the machine's peak); for stride 1 it writes straight into zero-bordered planes, for larger strides
//      it stores each response into one of sH*sW stride phases, so that every tap of a strided convolution
//      becomes a stride-1 shift inside one phase plane (over 3 input channels, the first layer's, the dictionary
//      is computed straight into the phases by a kernel of its own);
//   2. per output channel a CSR list of (flat plane offset, weight) taps; a tile of up to 8 SIMD vectors of
//      adjacent positions of the padded plane is accumulated in registers, one broadcast-FMA per tap, tile by
//      tile with all channels of a tile in a row (they read the same rows of the planes); the lanes that fall on
//      padding columns are dropped when the tile is written (AVX-512: compressed in registers), and bias (folded
//      batch norm), a residual input (the sum ending a residual block) and ReLU are applied on the way out. A big
//      dictionary whose channels have many taps is taken in blocks of planes whose rows under a tile fit in L1,
//      the partial sums kept aside;
//   3. a max pooling after the layer is folded into the output loop: a band of convolution rows of a group of
//      channels is computed into a small per-thread scratch (L2) and pooled from there, so the full-size
//      convolution output never goes to memory; bias and ReLU are applied after the max (they are monotonic).
// With a batch, each thread takes whole images (its planes stay in its caches); one image is split over threads.
// Fully connected layers (the kernel covers the whole input) have a single output position: at batch 1 each
// output is a gathered dot product of its taps; for a batch the dictionary responses are kept batch-innermost so
// that one tap is one FMA over the whole batch. Their taps come block-major from lookup.py (for each block of
// responses, every output's taps into it): a block pass reads one contiguous stream of taps from memory while the
// block's responses stay in cache (L1 at batch 1, L2 for a batch). A fully connected dictionary (or dense layer) at
// batch 1 is a matrix-vector product that skips zero inputs, past 512 nonzero ones in parts of consecutive rows
// whose sums are added in order; dense 1x1 and fully connected layers otherwise use the GEMM.
//
// Determinism: every output element (or a matrix-vector product's partial sum) is computed by exactly one thread,
// with its sum always taken in the same order (taps in CSR order, blocks in order, GEMM inputs from first to last,
// parts fixed by the input alone and added in order), however the work is split: results are identical for any
// torch.set_num_threads. All parallel loops go through at::parallel_for (torch's intra-op thread pool).
//
// Instruction sets: the file is built with the compiler's baseline flags; the kernels (lookup_kernels.h) are
// compiled three times under GCC target pragmas (AVX-512, AVX2+FMA, SSE2) and chosen at run time from CPUID, so
// a build cached on one machine never executes unsupported instructions on another.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/_log_softmax_cpu_dispatch.h>
#include <ATen/ops/_softmax_cpu_dispatch.h>
#include <c10/util/FunctionRef.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

namespace {

constexpr int kTileVectors = 8;        // vectors of adjacent outputs accumulated per tap tile
constexpr int kMR = 8;                 // rows of a packed GEMM panel (the layout lookup.py packs weights in)
constexpr int64_t kGemvChunk = 4096;   // most outputs per matrix-vector pass: their accumulators stay in L1
constexpr int64_t kGemvPartRows = 256;  // nonzero inputs per part of a matrix-vector product (gemv_skip_zeros)
constexpr int64_t kGemvMaxParts = 16;
constexpr int64_t kGatherOutputWork = 16;  // an output's work beyond its taps in a batch-1 gather (lookup_conv)

// GEMM: C[m, j] = sum_k A[m, k] B[k, j] (+ bias[m]) (+ residual) (ReLU), image by image. A is packed in panels
// of kMR rows, (panels, K, kMR), rows past M zero. Each item is one panel times one block of columns of one
// image, its sums taken over k in order: results do not depend on how items are split.
struct GemmArgs {
  const float* a;
  int64_t M, K;
  const float* b;          // image i, row k, column j at b[i * b_img + k * ldb + j]
  int64_t ldb, b_img, ncols, images;
  float* c;                // row m of image i starts at c + i * c_img + m * ldc
  int64_t ldc, c_img;
  int64_t W, Wp, pad_off;  // W > 0: column j = h*W + w goes to h*Wp + w + pad_off of its row (padded planes)
  const float* bias;       // per row, or null
  const float* res;        // laid out like c (W == 0 only), or null
  bool relu;
  // Stride phases (a dictionary only: no bias, residual or ReLU): column j of image i goes to c + i * c_img + m *
  // ldc + scatter[i * scatter_img + j]; W is then the input's width and sW its stride across.
  const int32_t* scatter;
  int64_t sW;
  // A strided 1x1 convolution's input (in_W > 0): column j = ho * out_W + wo is read at b + (ho * in_sH) * in_W
  // + wo * in_sW of row k, and every block of columns is gathered into a dense one before use.
  int64_t in_W, in_sH, in_sW, out_W;
  // Image i's rows of a start at a + i * a_img, its panels a_panel apart (0: K * kMR, a packed matrix of its
  // own); with both set, the images are chunks of one matrix's columns (see dict_chunks).
  int64_t a_img = 0, a_panel = 0;
  int64_t scatter_img = 0;
  int64_t last_cols = 0;  // > 0: the columns of the last image, fewer than ncols (a shorter last strip)
  // in_rows > 0: the strided input in strips of in_rows rows (see Act), in_strip floats apart: its row h is read
  // at (h / in_rows) * in_strip + (h % in_rows) * in_W.
  int64_t in_rows = 0, in_strip = 0;
};

// Max pooling geometry; Ho, Wo: the pooled size.
struct PoolGeom {
  int64_t kH, kW, sH, sW, pH, pW, Ho, Wo;
};

// Sparse taps over the dictionary planes of one image (P*sH*sW planes of Hq x Wq; per tap a flat offset).
struct TapArgs {
  const float* buf;       // the dictionary planes of the image being computed
  float* out;             // (N, O, Ho, Wo), or (N, O, pool.Ho, pool.Wo) with pooling
  const float* res;       // residual laid out like out (no pooling), or null
  const int64_t* rowptr;
  const void* idx;
  const float* val;
  const float* bias;
  // Q: lanes spanned by the first strip of an output plane, (strip_rows - 1) * Wq + Wo (with pooling: by the whole
  // convolution plane, (Ho - 1) * Wq + Wo)
  int64_t N, O, Ho, Wo, Wq, Q;
  int64_t blocks;         // fully connected: blocks of responses; rowptr is then (blocks, O + 1), one CSR each
  // The output's rows in strips of strip_rows (last_rows in the last one; see Act), strip_stride floats apart, its
  // channels channel_stride apart; one strip: plain NCHW. Tiles do not cross strips: strip_tiles per strip (the
  // last strip's past its rows are empty), ntiles for all of them.
  int64_t strip_rows, last_rows, strip_stride, channel_stride;
  int64_t strip_tiles, ntiles;
  int64_t span, nblocks;  // dictionary planes taken in nblocks blocks of `span` offsets (nblocks 1: all at once)
  bool relu;
  const uint16_t* vmask;  // AVX-512 store: per column j of the padded row, lanes t with (j + t) % Wq < Wo
  const int32_t* dstart;  // ... and where the first of them lands relative to the row's output
  PoolGeom pool;          // folded max pooling (pool.kH == 0: none), computed in nbands bands of `band` pooled rows
  int64_t band, nbands;
  int64_t group;          // channels per item, with pooling or blocks of planes
  // Items (image, channel, tile) instead of (image, tile, channel): for an image split over threads whose output
  // planes are small (small_plane: one or two tiles with AVX-512; the next layer's dictionary chunks follow the
  // same channels, see dict_chunks). Split by tiles (one thread the first tile of every channel, the other the
  // second), the taps of AlexNet-fast's 192 -> 384 and 384 -> 256 layers took each of 2 threads 72-84% of the time
  // one thread took for all of them in that order; split by channels, 52-56% of one thread's time in their order
  // (64-65% of the tile-major one's, which is faster). Tiles most likely split badly because each core's hardware
  // prefetcher runs on from its half of a row into the other core's, taking its lines (benchmarks/thread_split_speed
  // shows it on 14x14 and bigger buffers; our own prefetch of a channel's next tile is not the cause: turning it off
  // changed nothing). Bigger planes keep tile-major, so that a thread reads the rows of the planes its own GEMM items
  // wrote: channel-major for all layers made ResNet-18-fast at batch 1 ~5% slower at 1 and at 2 threads.
  bool channel_major;
};

struct PoolArgs {
  const float* in;
  float* out;
  int64_t H, W;
  PoolGeom g;
  bool relu;
  int64_t C;  // channels (a channels-last input)
};

// y = W x for one input vector, over its nonzero entries only (gemv_skip_zeros adds the bias and applies the ReLU).
struct GemvArgs {
  const float* x;       // the input values that are nonzero, in order
  const int64_t* rows;  // their row numbers in wt
  int64_t nnz;
  const float* wt;      // (K, M): the weight transposed, one row per input
  float* y;
  int64_t M, chunk;     // outputs, and outputs per item
  int64_t ahead;        // rows of `rows` that may be prefetched (past nnz: the next part's)
};

// Stride-phase planes of a strided convolution's dictionary responses D (P planes of H x W): plane (p, a, b)
// holds D[p, hq*sH + a - pH, wq*sW + b - pW] at [hq][wq], zero outside the input. Columns wq in [wlo, whi) of
// phase b map inside an input row.
inline void phase_columns(int64_t b, int64_t W, int64_t sW, int64_t pW, int64_t Wq, int64_t& wlo, int64_t& whi) {
  wlo = std::min(Wq, std::max<int64_t>(0, (pW - b + sW - 1) / sW));
  whi = std::max(wlo, std::min(Wq, (W + pW - b + sW - 1) / sW));
}

// A dictionary over C <= kPhaseDictMaxC input channels with a stride: computed straight into the phase planes
// from the input x (C planes of H x W) and the packed dictionary w (see GemmArgs).
constexpr int64_t kPhaseDictMaxC = 4;
struct PhaseDictArgs {
  const float* x;
  const float* w;
  float* B;
  int64_t C, P, H, W, sH, sW, pH, pW, Hq, Wq;
};

// Grow a scratch vector without filling it (resize would zero the new part on every call).
inline float* scratch(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

// Input rows [h0, h1) of pooled row i, clipped to an input of H rows.
inline void pool_rows(const PoolGeom& p, int64_t i, int64_t H, int64_t& h0, int64_t& h1) {
  h0 = std::max<int64_t>(i * p.sH - p.pH, 0);
  h1 = std::min(i * p.sH - p.pH + p.kH, H);
}

// Intel cores with AVX512-FP16 (Sapphire Rapids on) gather 16 floats faster than 16 loads put together in
// registers (measured on a Xeon of that kind); on AMD's Zen cores the loads were faster. Older Intel cores, whose
// gathers the Downfall microcode slows, keep the loads too (not measured here).
bool fast_gather() {
  __builtin_cpu_init();
  return __builtin_cpu_is("intel") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512fp16");
}
const bool g_fast_gather = fast_gather();

#define LCNN_VB 64
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,popcnt")
namespace avx512 {
#include "lookup_kernels.h"
}  // namespace avx512
#pragma GCC pop_options
#undef LCNN_VB

#define LCNN_VB 32
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
namespace avx2 {
#include "lookup_kernels.h"
}  // namespace avx2
#pragma GCC pop_options
#undef LCNN_VB

#define LCNN_VB 16
namespace base {
#include "lookup_kernels.h"
}  // namespace base
#undef LCNN_VB

// ------------------------------------------------------------------------------------------------------------
// Instruction-set choice.

typedef void (*GemmFn)(const GemmArgs&, int64_t, int64_t);
typedef void (*TapFn)(const TapArgs&, int64_t, int64_t);
typedef void (*PoolFn)(const PoolArgs&, int64_t, int64_t);
typedef void (*GemvFn)(const GemvArgs&, int64_t, int64_t);
typedef void (*PhaseDictFn)(const PhaseDictArgs&, int64_t, int64_t);
typedef int64_t (*NonzerosFn)(const float*, int64_t, float*, int64_t*);

struct Isa {
  const char* name;
  int lanes;
  int gemm_cols;  // columns of one GEMM item
  GemmFn gemm;
  TapFn taps_u16, taps_i32, pooled_u16, pooled_i32, fc_batch_u16, fc_batch_i32, gather_u16, gather_i32;
  PoolFn pool, pool_nhwc;
  GemvFn gemv;
  PhaseDictFn phase_dict;
  NonzerosFn nonzeros;
};

#define LCNN_ISA_ENTRY(NS)                                                                                      \
  {#NS, NS::L, NS::kGemmCols, NS::gemm, NS::taps_u16, NS::taps_i32, NS::pooled_u16, NS::pooled_i32,            \
   NS::fc_batch_u16, NS::fc_batch_i32, NS::gather_u16, NS::gather_i32, NS::pool, NS::pool_nhwc, NS::gemv,       \
   NS::phase_dict, NS::nonzeros}

const Isa kIsas[] = {LCNN_ISA_ENTRY(avx512), LCNN_ISA_ENTRY(avx2), LCNN_ISA_ENTRY(base)};

int best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
      __builtin_cpu_supports("popcnt"))
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

// ------------------------------------------------------------------------------------------------------------
// Drivers

// Items are split among torch's threads so that each task holds at least ~2^15 vector operations (about 10 us):
// smaller loops run on the calling thread, since waking the pool costs more than they do.
int64_t g_min_task_work = int64_t(1) << 15;

// The least work per task, in vector operations; returns the previous value. Tests set 1 to have every loop
// split among the threads, whatever its size.
int64_t set_min_task_work(int64_t work) {
  TORCH_CHECK(work >= 1, "lookup kernels: the least work per task must be positive");
  std::swap(work, g_min_task_work);
  return work;
}

// The threads a kernel's loops can spread over: one inside a parallel region (run_plan's threads that each take
// whole images), where at::parallel_for runs inline; the work splits below are sized by it.
inline int64_t usable_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

template <typename F>
void parallel_items(int64_t items, int64_t work_per_item, const F& f) {
  const int64_t grain = std::max<int64_t>(1, g_min_task_work / std::max<int64_t>(1, work_per_item));
  at::parallel_for(0, items, grain, f);
}

// Items of one step of a layer, and the work of one item in vector operations.
// `whole`: each thread's segment is taken in one call, for a kernel that streams its range: AlexNet LCNN-fast's fc6
// at batch 1 and 2 threads (its GEMM, then the taps of 4096 outputs over 3 blocks of responses) took 202-231 us with
// the taps in chunks of 29 outputs, 191-194 in two segments, 200-201 before both stages shared a region.
struct Stage {
  int64_t items, work;
  c10::function_ref<void(int64_t, int64_t)> fn;
  bool whole = false;
};

// Stages run in order, each complete before the next starts (the taps read what the dictionary wrote). With
// several threads they share one parallel region instead of one each (a small layer at batch 1 would spend much of
// its time starting regions). Each stage's items are cut into one contiguous segment per thread, and thread k
// starts on segment k of every stage: the items of one stage lie in the same order over the image as those of the
// next (dictionary columns, then tap tiles), so a thread mostly reads what it wrote itself, from its own cache,
// rather than lines of the other core's. A thread done with its segment takes chunks of the others', so that one
// slow thread leaves its share to the rest; it then waits until all of that stage's items are done. Which thread
// computes an item never changes its result.
void run_stages(std::initializer_list<Stage> stages, bool par) {
  const int64_t threads = par ? usable_threads() : 1;
  bool split = false;
  for (const Stage& st : stages)
    split = split || st.items > std::max<int64_t>(1, g_min_task_work / std::max<int64_t>(1, st.work));
  if (threads == 1 || !split) {
    for (const Stage& st : stages)
      if (st.items > 0) st.fn(0, st.items);
    return;
  }
  // Each counter on a cache line of its own: a thread takes chunks of its own segment from its own line, and
  // adds what it did to a stage's count once, when no chunk of that stage is left to take (side by side, and with
  // a count shared by all added to per chunk, those lines would go from core to core at every chunk; that cost was
  // not measured on its own).
  struct alignas(64) Counter {
    std::atomic<int64_t> v;
  };
  const size_t n = stages.size();
  std::vector<Counter> next(n * threads), done(n);
  size_t i = 0;
  for (const Stage& st : stages) {
    for (int64_t k = 0; k < threads; ++k) next[i * threads + k].v = st.items * k / threads;
    done[i++].v = 0;
  }
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t) {
    size_t i = 0;
    for (const Stage& st : stages) {
      // Chunks of a few tasks' worth, so that what is left of a slow thread's segment can be shared out.
      const int64_t grain =
          st.whole ? st.items : std::max<int64_t>(1, g_min_task_work / std::max<int64_t>(1, st.work) / 4);
      int64_t mine = 0;
      for (int64_t j = 0; j < threads; ++j) {
        const int64_t k = (first + j) % threads, end = st.items * (k + 1) / threads;
        for (int64_t b; (b = next[i * threads + k].v.fetch_add(grain)) < end;) {
          const int64_t e = std::min(end, b + grain);
          st.fn(b, e);
          mine += e - b;
        }
      }
      done[i].v.fetch_add(mine);
      while (done[i].v.load(std::memory_order_acquire) < st.items) _mm_pause();
      ++i;
    }
  });
}

// The items run_gemm splits a GEMM into: a block of columns of a panel of rows each, or whole panels with all
// their blocks.
struct GemmItems {
  const GemmArgs& g;
  GemmFn fn;
  int64_t panels, blocks, items, work;
  bool by_panel;

  explicit GemmItems(const GemmArgs& g) : g(g), fn(kIsas[g_isa].gemm) {
    const Isa& isa = kIsas[g_isa];
    const int64_t cb = isa.gemm_cols, threads = usable_threads();
    panels = (g.M + kMR - 1) / kMR;
    blocks = (g.ncols + cb - 1) / cb;
    work = g.K * kMR * cb / isa.lanes;
    // Few column blocks, the last one narrow (a 1x1 convolution over a 7x7 input has 48 + 1 columns): items in
    // their own order, panel by panel, would hand one thread the full blocks and the other the narrow one. Split
    // by panels, each thread gets a share of the panels with all their blocks.
    by_panel = threads > 1 && blocks < 4 * threads && panels >= threads && g.ncols % cb;
    items = g.images * panels * (by_panel ? 1 : blocks);
    if (by_panel) work *= blocks;
  }

  void run(int64_t b, int64_t e) const {
    if (!by_panel) {
      fn(g, b, e);
      return;
    }
    while (b < e) {
      const int64_t img = b / panels, p0 = b - img * panels, p1 = std::min(panels, p0 + e - b);
      for (int64_t blk = 0; blk < blocks; ++blk)
        fn(g, (img * blocks + blk) * panels + p0, (img * blocks + blk) * panels + p1);
      b += p1 - p0;
    }
  }
};

void run_gemm(const GemmArgs& g) {
  const GemmItems gi(g);
  parallel_items(gi.items, gi.work, [&](int64_t b, int64_t e) { gi.run(b, e); });
}

// Output size of a max pooling, with PyTorch's (= Torch7's) ceil-mode rule.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t out = (in + 2 * p - k + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

void check_pool(const std::vector<int64_t>& pool) {
  TORCH_CHECK(pool.size() == 7, "lookup kernels: pool must be [kH, kW, sH, sW, padH, padW, ceil]");
  TORCH_CHECK(pool[0] > 0 && pool[1] > 0 && pool[2] > 0 && pool[3] > 0 && pool[4] >= 0 && pool[5] >= 0 &&
                  2 * pool[4] <= pool[0] && 2 * pool[5] <= pool[1],
              "lookup kernels: invalid max pooling parameters");
}

PoolGeom pool_geom(const std::vector<int64_t>& pool, int64_t H, int64_t W) {
  check_pool(pool);
  const int64_t Ho = pooled_size(H, pool[0], pool[2], pool[4], pool[6]);
  const PoolGeom g{pool[0], pool[1], pool[2], pool[3], pool[4], pool[5], Ho,
                   pooled_size(W, pool[1], pool[3], pool[5], pool[6])};
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "lookup kernels: max pooling window larger than its input");
  return g;
}

// Max pooling (optionally followed by ReLU) of a 4-D tensor into an NCHW one; a channels-last input (a
// channels-last convolution's output) is read as it is.
at::Tensor max_pool(const at::Tensor& x, std::vector<int64_t> pool, bool relu) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "lookup kernels: max_pool wants a 4-D float32 CPU tensor");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolGeom g = pool_geom(pool, H, W);
  at::Tensor out = at::empty({N, C, g.Ho, g.Wo}, x.options());
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    const PoolArgs p{x.data_ptr<float>(), out.data_ptr<float>(), H, W, g, relu, C};
    const PoolFn fn = kIsas[g_isa].pool_nhwc;
    parallel_items(N * g.Ho, g.Wo * C * g.kH * g.kW, [&](int64_t b, int64_t e) { fn(p, b, e); });
    return out;
  }
  at::Tensor src = x.contiguous();
  const PoolArgs p{src.data_ptr<float>(), out.data_ptr<float>(), H, W, g, relu, C};
  const PoolFn fn = kIsas[g_isa].pool;
  parallel_items(N * C, g.Ho * g.Wo * g.kH * g.kW, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return out;
}

// y = bias + W x (ReLU) for one input vector x (K values) with W given transposed as wt (K, M), over the nonzero
// entries of x only. Made on the calling thread, which finds those entries; run as two stages of run_stages, and a
// caller's stage after them in the same parallel region.
struct SparseGemv {
  const float *vals, *wt, *bias;
  const int64_t* rows;
  float *sums, *y;
  int64_t nnz, M, parts, chunk, chunks;
  bool relu;
  GemvFn fn;

  SparseGemv(const float* x, int64_t K, const float* wt, int64_t M, const float* bias, bool relu, float* y)
      : wt(wt), bias(bias), y(y), M(M), relu(relu), fn(kIsas[g_isa].gemv) {
    // The items may run on other threads, whose own vectors these are not.
    thread_local std::vector<float> vals_buf, sums_buf;
    thread_local std::vector<int64_t> rows_buf;
    if (static_cast<int64_t>(rows_buf.size()) < K + 16) rows_buf.resize(K + 16);
    float* v = scratch(vals_buf, K + 16);
    nnz = kIsas[g_isa].nonzeros(x, K, v, rows_buf.data());
    vals = v;
    rows = rows_buf.data();
    // A product with one vector is bound by reading the weights from memory, and every thread adds bandwidth.
    // Past 512 nonzero inputs they are cut into parts of consecutive rows, each part summed on its own and the
    // parts then added in order, so that a thread streams whole rows of its own parts rather than a slice of every
    // row (only when there are fewer parts than threads are the outputs sliced as well). AlexNet LCNN-fast at batch
    // 1 and 2 threads (fc7's dictionary, 4096 -> 512, and fc8, 4096 -> 1000, about 8 parts each) took 0.906 ms
    // against 0.968 with slices only, 8 rounds of 40 forwards alternating in one process, and 1.351 against 1.347
    // at 1 thread; AlexNet LCNN-accurate 4.891 against 4.970 at 2 threads, 9.703 against 9.622 at 1. Parts of
    // 1024 rows were as fast there, but a number of parts the threads cannot share evenly (3 at 2 threads) leaves
    // one thread twice the rows of another; with small parts the difference is at most one part, and then every
    // part's outputs are cut in slices as well, so that the items share out evenly: AlexNet LCNN-fast's fc7
    // dictionary in 7 parts took the two threads 88.5 and 68.1 us, 79.7 and 82.3 in 14 items. The parts depend on
    // the input only, and an output's sum over a part is the same in any slice, so the sums do not change with
    // the thread count.
    const int64_t threads = usable_threads();
    parts = std::clamp<int64_t>(nnz / kGemvPartRows, 1, kGemvMaxParts);
    int64_t slices = (threads + parts - 1) / parts;
    if (parts % threads) slices = std::max(slices, threads / std::gcd(parts, threads));
    chunk = std::min(kGemvChunk, ((M + slices - 1) / slices + 15) / 16 * 16);
    chunks = (M + chunk - 1) / chunk;
    sums = parts == 1 ? y : scratch(sums_buf, parts * M);
  }

  // Stage 1: items are (part, chunk of outputs).
  int64_t product_items() const { return parts * chunks; }
  int64_t product_work() const { return nnz / parts * chunk / 16; }
  void products(int64_t b, int64_t e) const {
    for (int64_t it = b; it < e; ++it) {
      const int64_t part = it / chunks, k0 = nnz * part / parts, k1 = nnz * (part + 1) / parts;
      const GemvArgs g{vals + k0, rows + k0, k1 - k0, wt, sums + part * M, M, chunk, nnz - k0};
      fn(g, it % chunks, it % chunks + 1);
    }
  }

  // Stage 2: items are 16 outputs each, whose parts are added in order (with one part, the sums are y itself).
  // On the calling thread alone after the products, this took 2-3 us of fc7's and fc8's.
  int64_t sum_items() const { return (M + 15) / 16; }
  int64_t sum_work() const { return parts; }
  void add_parts(int64_t b, int64_t e) const {
    for (int64_t m = 16 * b; m < std::min(M, 16 * e); ++m) {
      float v = bias ? bias[m] : 0.f;
      for (int64_t part = 0; part < parts; ++part) v += sums[part * M + m];
      y[m] = relu ? std::max(v, 0.f) : v;
    }
  }

  // Both stages, then `then` if given, in one parallel region.
  void run(const Stage* then = nullptr) const {
    auto product_fn = [&](int64_t b, int64_t e) { products(b, e); };
    auto sum_fn = [&](int64_t b, int64_t e) { add_parts(b, e); };
    const Stage first{product_items(), product_work(), product_fn}, second{sum_items(), sum_work(), sum_fn};
    if (then) run_stages({first, second, *then}, true);
    else run_stages({first, second}, true);
  }
};

// The product in a region of its own (a dense fully connected layer at batch 1).
void gemv_skip_zeros(const float* x, int64_t K, const float* wt, int64_t M, const float* bias, bool relu,
                     float* y) {
  SparseGemv(x, K, wt, M, bias, relu, y).run();
}

// A buffer of dictionary planes, and the layout whose zeros it holds, at which address (the buffer may have moved
// since): borders of padded planes, what the input does not cover in stride phases, the tail past the planes. A
// layout is what decides where a layer writes: P, H, W, sH, sW, pH, pW, chunks, and whether the first layer's own
// kernel fills the phases. The GEMM writes only the rest, so the next layer with that layout (a ResNet stage's
// layers but its first) need not zero them again.
typedef std::array<int64_t, 9> PlaneLayout;
struct Planes {
  std::vector<float> buf;
  PlaneLayout zeroed{};
  const float* zeroed_at = nullptr;
};

// With an image split over threads, that zeroing runs on the calling thread alone while the others wait, and its
// zeros then sit in that core's cache, next to the lines the other cores' GEMM items write. So the calling thread
// keeps a buffer per layout (the most recent kKeptLayouts of them; a network has about 8), zeroed once:
// ResNet-18 LCNN-accurate at batch 1 and 2 threads took 5.26 against 5.61 and 5.34 against 5.43 ms in two runs
// (zeroing alone was ~195 us per forward). One thread, or threads taking whole images, keep one buffer for all
// layers: there, after a layer of another layout, it is in cache, and buffers per layout made ResNet-18
// LCNN-accurate 0.7-1.8% slower at 1 thread.
constexpr size_t kKeptLayouts = 16;
Planes& kept_planes(const PlaneLayout& layout) {
  thread_local std::vector<std::pair<PlaneLayout, Planes>> kept;  // least recently used first
  auto it = std::find_if(kept.begin(), kept.end(), [&](const auto& e) { return e.first == layout; });
  if (it == kept.end()) {
    if (kept.size() == kKeptLayouts) kept.erase(kept.begin());
    kept.emplace_back(layout, Planes{});
  } else {
    std::rotate(it, it + 1, kept.end());
  }
  return kept.back().second;
}

// Planes of at most this many positions are split over the threads by channels (each thread writes all positions
// of its output channels, and reads those of its input channels: see dict_chunks); bigger ones, and those tiled in
// strips (tile_strips), by positions.
inline bool small_plane(int64_t H, int64_t W) { return H * W <= 256; }

// The strips of rows an output plane of Ho x Wo is tiled in (TapArgs::strip_rows; a tile does not cross from one
// to the next): its top and bottom halves (the top one a row longer for an odd number) for planes of at least 8
// rows and 13x13 positions (AlexNet's smallest planes; at 13x13 and 14x14 the halves take as many tiles as the
// whole plane, 2). At batch 1 with threads, a plan keeps such activations in those strips (see Act) and each
// thread takes one. It depends on the shape only, as the bits do: a narrow tile sums its taps in interleaved
// chains, so where the tiles start decides how each output's sum is taken (and a plane in strips is not summed in
// chunks, dict_chunks).
inline int64_t tile_strips(int64_t Ho, int64_t Wo) { return Ho >= 8 && Ho * Wo >= 169 ? 2 : 1; }

// The chunks of input channels a stride-1 layer's dictionary is summed in: each chunk's responses into planes of
// their own, then added in chunk order (so the sums, and the bits, depend on the layer's shape only, never on the
// threads). At batch 1 with threads, a small plane's channels were written by the thread that computed them (the
// taps go channel by channel there), and a product over all channels of a column block read half of them from the
// other core: ResNet-18 LCNN-fast's 256 -> 256 layer at 14x14 took 52 us at 2 threads after its input was written
// that way, 32 us after it was written split by positions, 27 us with the input in both caches. With chunks, each
// thread reads the channels it wrote. Up to 4 chunks, while the partial planes (P per chunk) stay under a quarter
// of the input's channels.
inline int64_t dict_chunks(int64_t C, int64_t P, int64_t H, int64_t W) {
  int64_t k = 1;
  if (small_plane(H, W) && tile_strips(H, W) == 1)
    while (k < 4 && C % (2 * k) == 0 && C >= 2 * k * 4 * P) k *= 2;
  return k;
}

// Plane p's interior in B (P planes of Hp x Wp, an H x W interior at (pH, pW)) plus that of each later chunk's
// planes, `stride` floats apart, in chunk order.
void add_chunks(float* B, int64_t stride, int64_t chunks, int64_t Hp, int64_t Wp, int64_t H, int64_t W, int64_t pH,
                int64_t pW, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t h = 0; h < H; ++h) {
      float* row = B + p * Hp * Wp + (h + pH) * Wp + pW;
      for (int64_t j = 1; j < chunks; ++j) {
        const float* part = row + j * stride;
        for (int64_t w = 0; w < W; ++w) row[w] += part[w];
      }
    }
}

// Zero the border of `count` padded planes of Hp x Wp around an H x W interior at (pH, pW).
void zero_borders(float* B, int64_t count, int64_t Hp, int64_t Wp, int64_t H, int64_t W, int64_t pH, int64_t pW) {
  for (int64_t c = 0; c < count; ++c) {
    float* p = B + c * Hp * Wp;
    std::memset(p, 0, sizeof(float) * pH * Wp);
    std::memset(p + (pH + H) * Wp, 0, sizeof(float) * (Hp - pH - H) * Wp);
    for (int64_t h = pH; h < pH + H; ++h) {
      std::memset(p + h * Wp, 0, sizeof(float) * pW);
      std::memset(p + h * Wp + pW + W, 0, sizeof(float) * (Wp - pW - W));
    }
  }
}

// Zero what the input does not cover in the stride-phase planes of P dictionary channels (see phase_columns).
void zero_phase_borders(float* B, int64_t P, int64_t H, int64_t W, int64_t sH, int64_t sW, int64_t pH, int64_t pW,
                        int64_t Hq, int64_t Wq) {
  for (int64_t a = 0; a < sH; ++a)
    for (int64_t b = 0; b < sW; ++b) {
      int64_t wlo, whi;
      phase_columns(b, W, sW, pW, Wq, wlo, whi);
      for (int64_t p = 0; p < P; ++p) {
        float* plane = B + ((p * sH + a) * sW + b) * Hq * Wq;
        for (int64_t hq = 0; hq < Hq; ++hq) {
          const int64_t h = hq * sH + a - pH;
          float* row = plane + hq * Wq;
          if (h < 0 || h >= H) {
            std::memset(row, 0, sizeof(float) * Wq);
          } else {
            std::memset(row, 0, sizeof(float) * wlo);
            std::memset(row + whi, 0, sizeof(float) * (Wq - whi));
          }
        }
      }
    }
}

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(), "lookup kernels: ", what,
              " must be a contiguous float32 CPU tensor");
}

// A GEMM operand: packed (panels, K, kMR) of a matrix with M rows; returns its data.
const float* packed_data(const std::optional<at::Tensor>& t, int64_t M, int64_t K, const char* what) {
  TORCH_CHECK(t.has_value(), "lookup kernels: this shape needs the packed ", what);
  const at::Tensor& a = *t;
  check_float(a, what);
  TORCH_CHECK(a.dim() == 3 && a.size(0) == (M + kMR - 1) / kMR && a.size(1) == K && a.size(2) == kMR,
              "lookup kernels: ", what, " must be packed as (", (M + kMR - 1) / kMR, ", ", K, ", ", kMR, ")");
  return a.data_ptr<float>();
}

// The batch-innermost (C, H*W*N) copy of an NCHW tensor (a view when it is laid out that way already), for its
// data. One image is batch-innermost as it is, and is returned without the permute and view: each ATen call
// between the kernels finds the dispatcher's code and data evicted by the layer before (AlexNet LCNN-fast's fc6
// spent 7 us in permuting and viewing its 9216 inputs, at 1 and 2 threads).
at::Tensor batch_innermost(const at::Tensor& x) {
  if (x.size(0) == 1) return x.contiguous();
  at::Tensor t = x.permute({1, 2, 3, 0});
  return (t.is_contiguous() ? t : t.contiguous()).view({x.size(1), -1});
}

// (N, O, 1, 1) view of an (O, N) buffer.
at::Tensor from_batch_innermost(const at::Tensor& y) {
  return y.view({y.size(0), y.size(1), 1, 1}).permute({1, 0, 2, 3});
}

// A residual laid out like the output: (N, O, Ho, Wo) contiguous, or (O, N) for a batch of one position.
at::Tensor residual_like(const std::optional<at::Tensor>& residual, int64_t N, int64_t O, int64_t Ho, int64_t Wo,
                         bool batch_inner) {
  TORCH_CHECK(residual->dim() == 4 && residual->size(0) == N && residual->size(1) == O && residual->size(2) == Ho &&
                  residual->size(3) == Wo && residual->scalar_type() == at::kFloat,
              "lookup kernels: residual input has shape ", residual->sizes(), ", the output ",
              at::IntArrayRef({N, O, Ho, Wo}));
  return batch_inner ? residual->reshape({N, O}).t().contiguous() : residual->contiguous();
}

// An image split over threads (batch 1) between the steps of a plan is kept in those two strips, each laid out as
// an image of its own, (strips, C, R, W) with R = ceil(H / strips) (the last strip's rows past H unused); one
// strip is a plain NCHW tensor. The thread that computes the rows of a strip writes, and its GEMMs then read (a
// strip as an image), memory of its own: with plain planes split by positions, each core's hardware prefetcher
// runs on from its half of a channel's rows into the other core's half and takes its lines
// (benchmarks/thread_split_speed.py: a 28x28 half read back 3.4-4.6x slower than with the other core idle; 1 KB
// between the halves took most of that away).
struct Act {
  at::Tensor t;
  int64_t strips = 1;
  int64_t H = 0;  // the image's rows, with strips
  int64_t height() const { return strips > 1 ? H : t.size(2); }
};

// 0: activations stay plain; 1: strips; 2: strips, with the rows a shorter last strip leaves unused filled with
// NaN instead of zeros (see empty_strips), so that a test sees any output computed from them. Returns the previous
// setting.
int64_t g_strips = 1;
int64_t set_strips(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "set_strips: mode must be 0, 1 or 2");
  const int64_t was = g_strips;
  g_strips = mode;
  return was;
}

// An activation of `strips` strips of R rows each, C channels of width W, the image H rows high (R = H, one strip:
// a plain tensor of N images). The rows a shorter last strip leaves unused are zeroed: no output is computed from
// them, but the dictionary's GEMM reads them, in the lanes of a full vector past the strip's last column, and
// multiplies them. Left as at::empty gives them, they held whatever an earlier allocation left there, at times
// denormal floats, each of which costs its multiplications a microcode assist: at batch 1 and 2 threads,
// AlexNet LCNN-fast's 13x13 dictionary GEMMs took 50-250 us per thread instead of 10-15 in about half of the
// processes (which layer, and whether, followed the heap's layout; with denormals flushed to zero they were
// normal again), the "outliers" of the 2-thread timings.
at::Tensor empty_strips(int64_t N, int64_t strips, int64_t C, int64_t R, int64_t H, int64_t W,
                        const at::TensorOptions& options) {
  at::Tensor t = at::empty({N * strips, C, R, W}, options);
  if (strips * R > H) {
    const float fill = g_strips == 2 ? std::numeric_limits<float>::quiet_NaN() : 0.f;
    const int64_t used = H - (strips - 1) * R;
    for (int64_t n = 0; n < N; ++n) {
      float* last = t.data_ptr<float>() + (n * strips + strips - 1) * C * R * W;
      for (int64_t c = 0; c < C; ++c) std::fill(last + (c * R + used) * W, last + (c + 1) * R * W, fill);
    }
  }
  return t;
}

// Whether any thread of torch's pool has multiplied a denormal float since the flags were last cleared (its
// denormal-operand flag, MXCSR.DE); `clear` clears them. For tests: see empty_strips.
bool denormal_operands(bool clear) {
  std::atomic<bool> seen{false};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    const unsigned csr = _mm_getcsr();
    if (csr & 0x2u) seen = true;
    if (clear) _mm_setcsr(csr & ~0x2u);
  });
  return seen;
}

// The strips a plan keeps an activation of N x H x W in.
int64_t strips_for(int64_t N, int64_t H, int64_t W) {
  return g_strips && N == 1 && usable_threads() > 1 ? tile_strips(H, W) : 1;
}

// The activation in `strips` strips, copied if it is laid out otherwise.
Act restrip(const Act& a, int64_t strips) {
  if (a.strips == strips) return a;
  const int64_t C = a.t.size(1), H = a.height(), W = a.t.size(3);
  const at::Tensor plain =
      a.strips == 1 ? a.t
                    : a.t.permute({1, 0, 2, 3}).reshape({1, C, a.strips * a.t.size(2), W}).narrow(2, 0, H).contiguous();
  if (strips == 1) return {plain};
  const int64_t R = (H + strips - 1) / strips;
  at::Tensor t = empty_strips(1, strips, C, R, H, W, plain.options());
  for (int64_t s = 0; s < strips; ++s) {
    const int64_t rows = std::min(R, H - s * R);
    t[s].narrow(1, 0, rows).copy_(plain[0].narrow(1, s * R, rows));
  }
  return {t, strips, H};
}

// A residual in strips, for an output of O x Ho x Wo in as many.
at::Tensor residual_strips(const Act& r, int64_t O, int64_t Ho, int64_t Wo) {
  TORCH_CHECK(r.t.size(1) == O && r.height() == Ho && r.t.size(3) == Wo && r.t.scalar_type() == at::kFloat,
              "lookup kernels: residual input has shape ", r.t.sizes(), " in ", r.strips, " strips, the output ",
              at::IntArrayRef({1, O, Ho, Wo}));
  return r.t.contiguous();
}

// The fused lookup convolution. dict_pack: the dictionary packed for the GEMM; dict_t: the dictionary transposed
// (C, P), for a fully connected dictionary at batch 1; geom = [kH, kW, sH, sW, padH, padW, P]; idx holds, per tap,
// its plane offset for this input's height and width (uint16 stored as int16, or int32); pool = [] or
// [kH, kW, sH, sW, padH, padW, ceil]; residual: added before the ReLU (no pooling); the output is laid out in
// the residual's strips, else in strips_for's when `strips` (a plan's step), else plain.
Act lookup_conv_act(const Act& in, const std::optional<at::Tensor>& dict_pack, const std::optional<at::Tensor>& dict_t,
                    const at::Tensor& rowptr, const at::Tensor& idx, const at::Tensor& val, const at::Tensor& bias,
                    const std::vector<int64_t>& geom, bool relu, const std::vector<int64_t>& pool,
                    const Act* residual, bool strips) {
  const at::Tensor& x = in.t;
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "lookup conv: input must be a 4-D float32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(geom.size() == 7, "lookup conv: geom must be [kH, kW, sH, sW, padH, padW, P]");
  TORCH_CHECK((rowptr.dim() == 1 || rowptr.dim() == 2) && rowptr.scalar_type() == at::kLong &&
                  rowptr.is_contiguous() && rowptr.size(-1) >= 1,
              "lookup conv: rowptr must be a contiguous int64 vector (or blocks of them)");
  check_float(val, "tap values");
  check_float(bias, "bias");
  TORCH_CHECK((idx.scalar_type() == at::kShort || idx.scalar_type() == at::kInt) && idx.is_contiguous() &&
                  idx.numel() == val.numel(), "lookup conv: tap offsets must be int16 or int32, one per value");
  const int64_t kH = geom[0], kW = geom[1], sH = geom[2], sW = geom[3], pH = geom[4], pW = geom[5], P = geom[6];
  TORCH_CHECK(kH > 0 && kW > 0 && sH > 0 && sW > 0 && pH >= 0 && pW >= 0 && P > 0, "lookup conv: invalid geometry");
  const int64_t N = in.strips > 1 ? 1 : x.size(0), C = x.size(1), H = in.height(), W = x.size(3);
  const int64_t O = rowptr.size(-1) - 1;
  const int64_t blocks = rowptr.dim() == 2 ? rowptr.size(0) : 1;
  // Fully connected (the kernel covers the input); a fully connected dictionary at batch 1 is served by dict_t
  // (then the packed form is not needed, nor made by lookup.py).
  const bool fc = pH == 0 && pW == 0 && H == kH && W == kW, gemv = fc && N == 1 && H * W == 1 && dict_t.has_value();
  const float* A = gemv ? nullptr : packed_data(dict_pack, P, C, "dictionary");
  TORCH_CHECK(rowptr.data_ptr<int64_t>()[rowptr.numel() - 1] == val.numel(),
              "lookup conv: rowptr does not end at the number of taps");
  TORCH_CHECK(bias.numel() == O, "lookup conv: bias size does not match the number of output channels");
  const int64_t Hp = H + 2 * pH, Wp = W + 2 * pW;
  TORCH_CHECK(Hp >= kH && Wp >= kW, "lookup conv: kernel ", kH, "x", kW, " larger than padded input ", Hp, "x", Wp);
  const int64_t Ho = (Hp - kH) / sH + 1, Wo = (Wp - kW) / sW + 1;
  const int64_t Hq = (Hp + sH - 1) / sH, Wq = (Wp + sW - 1) / sW, S = sH * sW;
  const Isa& isa = kIsas[g_isa];
  const bool u16 = idx.scalar_type() == at::kShort;

  TapArgs a{};
  a.rowptr = rowptr.data_ptr<int64_t>();
  a.idx = idx.data_ptr();
  a.val = val.data_ptr<float>();
  a.bias = bias.data_ptr<float>();
  a.N = N;
  a.O = O;
  a.relu = relu && pool.empty();
  TORCH_CHECK(pool.empty() || !residual, "lookup conv: a residual cannot be combined with max pooling");
  const int64_t taps_per_out = val.numel() / std::max<int64_t>(1, O) + 1;
  const int64_t pad = int64_t(kTileVectors) * 16 + 16;  // zeroed tail: the last tile may read past the planes

  TORCH_CHECK(fc || blocks == 1, "lookup conv: blocks of taps are for fully connected layers only");
  if (fc) {
    if (in.strips > 1) return lookup_conv_act(restrip(in, 1), dict_pack, dict_t, rowptr, idx, val, bias, geom, relu,
                                              pool, residual, strips);
    // Dictionary responses (P, H*W, N), batch innermost (so is one image's output as it is; see batch_innermost).
    const int64_t rows = P * H * W;
    at::Tensor buf = at::empty({rows * N + pad}, x.options());
    float* B = buf.data_ptr<float>();
    std::memset(B + rows * N, 0, sizeof(float) * pad);
    at::Tensor out = N == 1 ? at::empty({1, O, 1, 1}, x.options()) : at::empty({O, N}, x.options());
    at::Tensor res;
    if (residual) res = residual_like(restrip(*residual, 1).t, N, O, 1, 1, true);
    a.buf = B;
    a.out = out.data_ptr<float>();
    a.res = res.defined() ? res.data_ptr<float>() : nullptr;
    a.Ho = a.Wo = 1;
    a.blocks = blocks;
    // At batch 1 an output costs more than its taps (a gather's latency, the sum across lanes, the store): counted
    // on its taps alone, fc7's 4096 outputs of ~8 taps (25 us) stayed on one thread while the other waited (split,
    // 12.7 and 14.0 us per thread).
    const TapFn fn = N == 1 ? (u16 ? isa.gather_u16 : isa.gather_i32) : (u16 ? isa.fc_batch_u16 : isa.fc_batch_i32);
    auto run_taps = [&](int64_t b, int64_t e) { fn(a, b, e); };
    const Stage taps{O, N == 1 ? taps_per_out + kGatherOutputWork : taps_per_out * ((N + 15) / 16), run_taps, true};
    // The dictionary's stages and the taps share one parallel region.
    if (gemv) {
      check_float(*dict_t, "transposed dictionary");
      TORCH_CHECK(dict_t->dim() == 2 && dict_t->size(0) == C && dict_t->size(1) == P,
                  "lookup conv: transposed dictionary must be (C, P)");
      const at::Tensor xc = x.contiguous();
      SparseGemv(xc.data_ptr<float>(), C, dict_t->data_ptr<float>(), P, nullptr, false, B).run(&taps);
    } else {
      const at::Tensor xt = batch_innermost(x);
      const GemmArgs g{A, P, C, xt.data_ptr<float>(), H * W * N, 0, H * W * N, 1, B,
                       H * W * N, 0, 0, 0, 0, nullptr, nullptr, false};
      const GemmItems gi(g);
      auto gemm = [&](int64_t b, int64_t e) { gi.run(b, e); };
      run_stages({{gi.items, gi.work, gemm}, taps}, true);
    }
    if (N > 1) out = from_batch_innermost(out);
    if (!pool.empty()) return {max_pool(out, pool, relu)};
    return {out};
  }

  // Per image: dictionary responses into its stride-phase planes (P*S, Hq, Wq), then the taps. A batch gives each
  // thread whole images (unless that would leave threads idle); otherwise each image is split over the threads.
  const int64_t img = P * S * Hq * Wq, TL = int64_t(kTileVectors) * isa.lanes, threads = usable_threads();
  const bool split_image = threads > 1 && !(N > 1 && (N % threads == 0 || N >= 4 * threads));
  // An input in strips is read strip by strip by the dictionary's GEMM (as images); the first layer's own
  // dictionary kernel reads it plain.
  const Act src = in.strips > 1 && C <= kPhaseDictMaxC ? restrip(in, 1) : in;
  // in_rows: the rows of each strip but the last (a shorter one leaves the GEMM's last image last_cols columns).
  const int64_t in_strips = src.strips, in_rows = in_strips > 1 ? src.t.size(2) : H;
  const int64_t last_cols = in_strips > 1 && in_rows * in_strips != H ? (H - (in_strips - 1) * in_rows) * W : 0;
  at::Tensor xc = src.t.contiguous();
  PoolGeom pg{};
  if (!pool.empty()) pg = pool_geom(pool, Ho, Wo);
  const int64_t Hout = pool.empty() ? Ho : pg.Ho, Wout = pool.empty() ? Wo : pg.Wo;
  // The output in the residual's strips (a plan's residual has them whenever the output would); those strips
  // must be the tiling's.
  const int64_t wanted = strips ? strips_for(N, Hout, Wout) : 1;
  const int64_t tiling = pool.empty() ? tile_strips(Ho, Wo) : wanted;
  const Act* rin = residual;
  Act plain_res;
  if (residual && residual->strips != 1 && residual->strips != tiling) {
    plain_res = restrip(*residual, 1);
    rin = &plain_res;
  }
  const int64_t out_strips = rin ? rin->strips : wanted;
  a.Ho = Ho;
  a.Wo = Wo;
  a.Wq = Wq;
  a.strip_rows = (Hout + tiling - 1) / tiling;
  a.last_rows = Hout - (tiling - 1) * a.strip_rows;
  a.strip_stride = out_strips > 1 ? O * a.strip_rows * Wout : a.strip_rows * Wout;
  a.channel_stride = out_strips > 1 ? a.strip_rows * Wout : Hout * Wout;
  a.Q = ((pool.empty() ? a.strip_rows : Ho) - 1) * Wq + Wo;
  at::Tensor out, res;
  std::vector<uint16_t> vmask;
  std::vector<int32_t> dstart;
  int64_t per_image, work;
  TapFn taps;
  // The rows of one plane a tile reads: its own rows and the kernel's reach below them. When those rows of all
  // the planes pass ~32 KB (big dictionaries), the planes are taken in blocks that stay in L1, provided a
  // channel has enough taps per block: each block pass loads and stores the tile's partial sums, which costs
  // more than reading a few taps from L2. With fewer than ~9 taps per block (the first layers, AlexNet-fast's
  // conv2) all planes at once measured 7-15% faster on a Xeon; with 10 (ResNet-18-accurate's 64 -> 64) blocks
  // were 5-10% faster.
  const int64_t reach = (std::min(TL, a.Q) + Wq - 1) / Wq + (kH - 1) / sH + 1;
  const int64_t per_block = std::max<int64_t>(1, (int64_t(32) << 10) / (reach * Wq * 4));
  a.nblocks = (P * S + per_block - 1) / per_block;
  if (val.numel() < 9 * a.nblocks * O) a.nblocks = 1;
  a.span = per_block * Hq * Wq;
  if (!pool.empty()) {
    out = empty_strips(N, out_strips, O, out_strips > 1 ? a.strip_rows : pg.Ho, pg.Ho, pg.Wo, x.options());
    a.relu = relu;  // applied to the pooled values
    a.pool = pg;
    // Bands of about 1024 convolution lanes: the rows shared by neighbouring bands are computed twice, so bands
    // must not be too thin; the channels are split into groups when that leaves too few items for the threads
    // (the scratch of a band, group x lanes, stays in L2). The bands are then evened out: AlexNet's conv1 (27
    // pooled rows) in bands of 8, 8, 8 and 3 took 2 threads at batch 1 49.8 and 64.2 us, in 7, 7, 7 and 6 56.7
    // and 54.2 us. Bands depend on the shape only, so the bits do not change with the thread count.
    const int64_t widest = std::max<int64_t>(1, std::min<int64_t>(pg.Ho, 1024 / std::max<int64_t>(1, pg.sH * Wq)));
    a.nbands = (pg.Ho + widest - 1) / widest;
    a.band = (pg.Ho + a.nbands - 1) / a.nbands;  // never wider than `widest`, so still nbands bands
    const int64_t want = N >= 2 ? 1 : (4 * threads + a.nbands - 1) / a.nbands;
    const int64_t lanes = (a.band * pg.sH + pg.kH) * Wq;
    const int64_t groups = std::min(O, std::max(want, (O * lanes * 4 + (256 << 10) - 1) / (256 << 10)));
    a.group = (O + groups - 1) / groups;
    per_image = a.nbands * ((O + a.group - 1) / a.group);
    work = taps_per_out * lanes * a.group / isa.lanes;
    taps = u16 ? isa.pooled_u16 : isa.pooled_i32;
  } else {
    out = empty_strips(N, out_strips, O, out_strips > 1 ? a.strip_rows : Ho, Ho, Wo, x.options());
    if (residual)
      res = out_strips > 1 ? residual_strips(*rin, O, Ho, Wo) : residual_like(rin->t, N, O, Ho, Wo, false);
    vmask.resize(Wq);
    dstart.resize(Wq);
    // Column of lane t is (j + t) % Wq, stepped without a division: 16 divisions per column ran on the calling
    // thread before every layer (~17 us per forward of ResNet-18 LCNN-fast at batch 1, by a profile at 2 threads).
    for (int64_t j = 0; j < Wq; ++j) {
      uint32_t m = 0;
      for (int64_t t = 0, col = j; t < 16; ++t, col = col + 1 == Wq ? 0 : col + 1)
        if (col < Wo) m |= 1u << t;
      vmask[j] = static_cast<uint16_t>(m);
      dstart[j] = static_cast<int32_t>(j < Wo ? j : Wo);
    }
    a.res = res.defined() ? res.data_ptr<float>() : nullptr;
    a.vmask = vmask.data();
    a.dstart = dstart.data();
    a.strip_tiles = (a.Q + TL - 1) / TL;
    a.ntiles = tiling * a.strip_tiles;
    a.channel_major = split_image && tiling == 1 && small_plane(Ho, Wo) && a.nblocks == 1;
    if (a.nblocks > 1) {
      // Groups of channels share the blocks' passes; enough of them to keep the threads busy.
      const int64_t want = (4 * threads + N * a.ntiles - 1) / (N * a.ntiles);
      a.group = (O + std::min(O, want) - 1) / std::min(O, want);
      per_image = a.ntiles * ((O + a.group - 1) / a.group);
      work = taps_per_out * kTileVectors * a.group;
    } else {
      per_image = a.ntiles * O;
      work = taps_per_out * kTileVectors;
    }
    taps = u16 ? isa.taps_u16 : isa.taps_i32;
  }
  a.out = out.data_ptr<float>();
  const bool padded = pH || pW;
  const int64_t chunks = S == 1 && C > kPhaseDictMaxC ? dict_chunks(C, P, H, W) : 1, stride = img + pad;
  // The GEMM's images: chunks of the input channels, or strips of the input.
  const int64_t gemm_items =
      chunks * in_strips * ((P + kMR - 1) / kMR) * ((in_rows * W + isa.gemm_cols - 1) / isa.gemm_cols);
  const int64_t gemm_work = C / chunks * kMR * isa.gemm_cols / isa.lanes;
  // A strided layer's GEMM (over more than kPhaseDictMaxC channels) stores each response straight into its phase
  // plane: input (h, w) goes to plane (a, b) = ((h + pH) % sH, (w + pW) % sW) of its dictionary channel, at
  // ((h + pH) / sH, (w + pW) / sW). With a GEMM into a temporary and a second pass that split it into the phases,
  // ResNet-18-accurate's strided layers took 13-26% longer at batch 1 (64 -> 128 at 56x56 13-21%, 128 -> 256
  // 25-26%, 256 -> 512 13-19%; each measured alone, two runs).
  std::vector<int32_t> scatter;
  if (S > 1 && C > kPhaseDictMaxC) {
    std::vector<int32_t> col(W);
    for (int64_t w = 0; w < W; ++w) col[w] = static_cast<int32_t>((w + pW) % sW * Hq * Wq + (w + pW) / sW);
    scatter.resize(H * W);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t row = ((h + pH) % sH * sW * Hq + (h + pH) / sH) * Wq;
      for (int64_t w = 0; w < W; ++w) scatter[h * W + w] = static_cast<int32_t>(row + col[w]);
    }
  }
  const PlaneLayout layout{P, H, W, sH, sW, pH, pW, chunks, C <= kPhaseDictMaxC};
  // One image; `par`: spread it over the threads (else the calling thread does all of it).
  auto image = [&](int64_t n, Planes& planes, bool par) {
    float* B = planes.buf.data();
    const float* xn = xc.data_ptr<float>() + n * C * H * W;
    if (planes.zeroed != layout || planes.zeroed_at != B) {
      if (S == 1 && padded) zero_borders(B, P, Hp, Wp, H, W, pH, pW);
      if (!scatter.empty()) zero_phase_borders(B, P, H, W, sH, sW, pH, pW, Hq, Wq);
      std::memset(B + img, 0, sizeof(float) * pad);
      planes.zeroed = layout;
      planes.zeroed_at = B;
    }
    TapArgs t = a;
    t.buf = B;
    const int64_t first = n * per_image;
    auto run_taps = [&](int64_t b, int64_t e) { taps(t, first + b, first + e); };
    if (S == 1) {
      // Chunk j of the input channels (the GEMM's image j) into the planes `stride` floats after chunk j - 1's
      // (past the zeroed tail of B); one chunk is the plain product into B, strip j of the input into its rows.
      const int64_t K = C / chunks, ldb = in_rows * W;
      GemmArgs g{A, P, K, xn, ldb, K * ldb, ldb, chunks * in_strips, B, Hp * Wp, chunks > 1 ? stride : in_rows * Wp,
                 padded ? W : 0, Wp, pH * Wp + pW, nullptr, nullptr, false, nullptr, 0, 0, 0, 0, 0,
                 chunks > 1 ? K * kMR : 0, C * kMR};
      g.last_cols = last_cols;
      auto gemm = [&](int64_t b, int64_t e) { isa.gemm(g, b, e); };
      auto add = [&](int64_t b, int64_t e) { add_chunks(B, stride, chunks, Hp, Wp, H, W, pH, pW, b, e); };
      if (chunks > 1)
        run_stages({{gemm_items, gemm_work, gemm}, {P, (chunks - 1) * H * W / isa.lanes, add},
                    {per_image, work, run_taps}}, par);
      else
        run_stages({{gemm_items, gemm_work, gemm}, {per_image, work, run_taps}}, par);
    } else if (C <= kPhaseDictMaxC) {
      const PhaseDictArgs f{xn, A, B, C, P, H, W, sH, sW, pH, pW, Hq, Wq};
      auto dict = [&](int64_t b, int64_t e) { isa.phase_dict(f, b, e); };
      run_stages({{sH * Hq, P * Wq * C, dict}, {per_image, work, run_taps}}, par);
    } else {
      // Strip j of the input (its rows from j * in_rows on) through its part of `scatter`.
      const int64_t ldb = in_rows * W;
      GemmArgs g{A, P, C, xn, ldb, C * ldb, ldb, in_strips, B, S * Hq * Wq, 0, W, 0, 0, nullptr, nullptr, false,
                 scatter.data(), sW};
      g.scatter_img = ldb;
      g.last_cols = last_cols;
      auto gemm = [&](int64_t b, int64_t e) { isa.gemm(g, b, e); };
      run_stages({{gemm_items, gemm_work, gemm}, {per_image, work, run_taps}}, par);
    }
  };
  // The planes live in a buffer each thread keeps from call to call. Called on one image at a time (16 calls from
  // Python against one for the batch), ResNet-18-accurate's 64 -> 64 layer (1.7 MB of planes) took 14% longer than
  // on the batch with a fresh allocation per call, 8% with these buffers.
  thread_local Planes planes;
  if (split_image) {
    Planes& kept = kept_planes(layout);
    scratch(kept.buf, chunks * stride);
    for (int64_t n = 0; n < N; ++n) image(n, kept, true);
  } else {
    // Whole images per thread: each keeps its planes in its own cache, and no stage waits for the others.
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      scratch(planes.buf, chunks * stride);
      for (int64_t n = b; n < e; ++n) image(n, planes, false);
    });
  }
  return {out, out_strips, Hout};
}

at::Tensor lookup_conv(const at::Tensor& x, const std::optional<at::Tensor>& dict_pack,
                       const std::optional<at::Tensor>& dict_t, const at::Tensor& rowptr, const at::Tensor& idx,
                       const at::Tensor& val, const at::Tensor& bias, std::vector<int64_t> geom, bool relu,
                       std::vector<int64_t> pool, const std::optional<at::Tensor>& residual) {
  const Act r{residual.value_or(at::Tensor()), 1};
  return lookup_conv_act({x, 1}, dict_pack, dict_t, rowptr, idx, val, bias, geom, relu, pool,
                         residual ? &r : nullptr, false).t;
}

// A dense convolution whose kernel is 1x1 (any stride, no padding) or covers its whole input (a fully connected
// layer): y = W x + bias with our GEMM (or, for one input vector, the product that skips zero inputs, given the
// transposed weight w_t), then residual, ReLU and max pooling. geom = [kH, kW, sH, sW, O].
at::Tensor dense_conv(const at::Tensor& x, const std::optional<at::Tensor>& w_pack,
                      const std::optional<at::Tensor>& w_t,
                      const at::Tensor& bias, std::vector<int64_t> geom, bool relu, std::vector<int64_t> pool,
                      const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "dense conv: input must be a 4-D float32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(geom.size() == 5, "dense conv: geom must be [kH, kW, sH, sW, O]");
  check_float(bias, "bias");
  const int64_t kH = geom[0], kW = geom[1], sH = geom[2], sW = geom[3], O = geom[4];
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(bias.numel() == O, "dense conv: bias size does not match the number of output channels");
  const bool post_relu = relu && pool.empty();
  TORCH_CHECK(pool.empty() || !residual.has_value(), "dense conv: a residual cannot be combined with max pooling");
  at::Tensor out;
  if (H == kH && W == kW) {
    const int64_t K = C * H * W;
    if (N == 1 && w_t.has_value()) {
      check_float(*w_t, "transposed weight");
      TORCH_CHECK(w_t->dim() == 2 && w_t->size(0) == K && w_t->size(1) == O,
                  "dense conv: transposed weight must be (K, O)");
      at::Tensor xc = x.contiguous();
      out = at::empty({1, O, 1, 1}, x.options());
      float* y = out.data_ptr<float>();
      gemv_skip_zeros(xc.data_ptr<float>(), K, w_t->data_ptr<float>(), O, bias.data_ptr<float>(),
                      post_relu && !residual.has_value(), y);
      if (residual.has_value()) {
        at::Tensor r = residual_like(residual, N, O, 1, 1, false);
        const float* rp = r.data_ptr<float>();
        for (int64_t o = 0; o < O; ++o) y[o] = post_relu ? std::max(y[o] + rp[o], 0.f) : y[o] + rp[o];
      }
    } else {
      // Batch innermost: (K, N) = x transposed (already so when the input came from a fully connected layer).
      at::Tensor xt = x.reshape({N, K}).t();
      if (!xt.is_contiguous()) xt = xt.contiguous();
      at::Tensor y = at::empty({O, N}, x.options());
      at::Tensor res;
      if (residual.has_value()) res = residual_like(residual, N, O, 1, 1, true);
      const GemmArgs g{packed_data(w_pack, O, K, "weight"), O, K, xt.data_ptr<float>(), N, 0, N, 1,
                       y.data_ptr<float>(), N, 0, 0, 0, 0, bias.data_ptr<float>(),
                       res.defined() ? res.data_ptr<float>() : nullptr, post_relu};
      run_gemm(g);
      out = from_batch_innermost(y);
    }
  } else {
    TORCH_CHECK(kH == 1 && kW == 1, "dense conv: only 1x1 kernels or kernels covering the input are supported");
    // A stride over 1 reads every sH-th row and sW-th column of the input: the GEMM gathers them block by block,
    // each thread its own blocks. A copy of the subsampled input beforehand ran on one thread at batch 1 (13-37 us
    // of each ResNet-18 shortcut, 14-49 us at 2 threads); ResNet's 64 -> 128 shortcut alone at batch 1 and 2
    // threads took 80-82 us with it, 61-62 us without.
    const at::Tensor xc = x.contiguous();
    const int64_t Ho = (H + sH - 1) / sH, Wo = (W + sW - 1) / sW;
    const bool strided = sH > 1 || sW > 1;
    out = at::empty({N, O, Ho, Wo}, x.options());
    at::Tensor res;
    if (residual.has_value()) res = residual_like(residual, N, O, Ho, Wo, false);
    const GemmArgs g{packed_data(w_pack, O, C, "weight"), O, C, xc.data_ptr<float>(), H * W, C * H * W, Ho * Wo, N,
                     out.data_ptr<float>(), Ho * Wo, O * Ho * Wo, 0, 0, 0, bias.data_ptr<float>(),
                     res.defined() ? res.data_ptr<float>() : nullptr, post_relu, nullptr, 0,
                     strided ? W : 0, sH, sW, Wo};
    run_gemm(g);
  }
  if (pool.empty()) return out;
  return max_pool(out, pool, relu);
}

// dense_conv in a plan's step: a 1x1 convolution over one image reads its input's strips, and writes its output's
// (the residual's, else strips_for's), as the GEMM's images; with a stride that does not divide the strips' rows,
// the gather reads the strips row by row into a plain output. The rest runs dense_conv on plain tensors.
Act dense_conv_act(const Act& in, const std::optional<at::Tensor>& w_pack, const std::optional<at::Tensor>& w_t,
                   const at::Tensor& bias, const std::vector<int64_t>& geom, bool relu,
                   const std::vector<int64_t>& pool, const Act* residual) {
  TORCH_CHECK(geom.size() == 5, "dense conv: geom must be [kH, kW, sH, sW, O]");
  const int64_t sH = geom[2], sW = geom[3], O = geom[4], C = in.t.size(1), H = in.height(), W = in.t.size(3);
  const int64_t Ho = (H + sH - 1) / sH, Wo = (W + sW - 1) / sW;
  int64_t out_strips = residual ? residual->strips : strips_for(in.strips > 1 ? 1 : in.t.size(0), Ho, Wo);
  int64_t G = std::max(in.strips, out_strips);
  const bool images = G > 1 && H % G == 0 && H / G % sH == 0 && Ho % G == 0;
  const bool gather = !images && in.strips > 1 && (sH > 1 || sW > 1);
  if (geom[0] != 1 || geom[1] != 1 || !pool.empty() || !(images || gather)) {
    const std::optional<at::Tensor> r = residual ? std::optional<at::Tensor>(restrip(*residual, 1).t) : std::nullopt;
    return {dense_conv(restrip(in, 1).t, w_pack, w_t, bias, geom, relu, pool, r)};
  }
  check_float(bias, "bias");
  TORCH_CHECK(bias.numel() == O, "dense conv: bias size does not match the number of output channels");
  if (gather) out_strips = G = 1;
  const at::Tensor xc = in.t.contiguous();
  const int64_t rows = H / G, rows_o = Ho / G, in_rows = in.strips > 1 ? in.t.size(2) : H;
  at::Tensor out = at::empty({out_strips, O, Ho / out_strips, Wo}, xc.options()), res;
  if (residual)
    res = out_strips > 1 ? residual_strips(*residual, O, Ho, Wo)
                         : residual_like(restrip(*residual, 1).t, 1, O, Ho, Wo, false);
  const bool in_parts = in.strips == G, out_parts = out_strips == G;
  GemmArgs g{packed_data(w_pack, O, C, "weight"), O, C, xc.data_ptr<float>(), in_parts ? rows * W : H * W,
             in_parts ? C * rows * W : rows * W, rows_o * Wo, G, out.data_ptr<float>(),
             out_parts ? rows_o * Wo : Ho * Wo, out_parts ? O * rows_o * Wo : rows_o * Wo, 0, 0, 0,
             bias.data_ptr<float>(), res.defined() ? res.data_ptr<float>() : nullptr, relu, nullptr, 0,
             sH > 1 || sW > 1 ? W : 0, sH, sW, Wo};
  if (gather) {
    g.ldb = in_rows * W;
    g.b_img = xc.numel();  // where the input's data ends, for the gather's vector loads
    g.in_rows = in_rows;
    g.in_strip = C * in_rows * W;
  }
  run_gemm(g);
  return {out, out_strips, Ho};
}

// ATen's convolution (a dense form our GEMM does not cover: kernels over several positions), then what the block
// fuses: the residual, and the ReLU or the max pooling (with the ReLU). Channels-last weights (lookup.py passes
// them when a pooling follows) make the convolution and its output channels-last, which max_pool reads as it is.
// geom = [sH, sW, padH, padW, dilH, dilW, groups].
at::Tensor aten_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     std::vector<int64_t> geom, bool relu, std::vector<int64_t> pool,
                     const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(geom.size() == 7, "aten conv: geom must be [sH, sW, padH, padW, dilH, dilW, groups]");
  at::Tensor out = at::conv2d(x, weight, bias, {geom[0], geom[1]}, {geom[2], geom[3]}, {geom[4], geom[5]}, geom[6]);
  if (residual) out = out + *residual;
  if (!pool.empty()) return max_pool(out, pool, relu);
  return relu ? out.relu_() : out;
}

// t's data under new sizes (run_steps' reshape). A contiguous t is aliased without a call through the dispatcher:
// after the fully connected layers have streamed their weights through the caches, the dispatcher's code and data
// come back from memory on every forward, and reshape (a view) took 9-13 us of AlexNet LCNN-fast's forward at
// batch 1, the alias 1.4-2.7 us (an instrumented build, 1 and 2 threads). The alias is not marked as a view of t,
// which the plan drops.
at::Tensor reshaped(const at::Tensor& t, const std::vector<int64_t>& sizes) {
  if (!t.is_contiguous() || c10::multiply_integers(sizes) != t.numel()) return t.reshape(sizes);
  at::Tensor r = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(t.storage()), t.key_set(), t.dtype());
  r.unsafeGetTensorImpl()->set_storage_offset(t.storage_offset());
  r.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  return r;
}

// A chain of the kernels above in one call (layers/lookup.py's _Plan): at batch 1 the Python and the dispatch
// around each kernel call cost as much as a small layer, and they run on one thread while the others wait.
// `code` is a list of instructions, each [kind, src, dst, res, relu, H, W, tensor slots..., geometry count,
// geometry..., pool count, pool...]: kind 0 pushes the current tensor on a stack (the input of a residual block),
// 1 is lookup_conv (six tensor slots), 2 dense_conv (three), 3 aten_conv (two); src/dst 1 read/replace the
// top of the stack instead of the current tensor (a block's shortcut); res 1 pops the stack top as the residual.
// H and W are the input size the step was planned for (its tap offsets depend on it). A slot is an index into
// `tensors`, or -1 for none. Kinds 4-9 are the modules a network ends with (its classifier), each the one ATen
// call the module's forward makes (for a reshape and a softmax, what that call comes to: see reshaped, and the
// kernels called below), so the results are those of the modules: 4 average pooling [9, kH, kW, sH, sW, pH,
// pW, ceil, count_include_pad, divisor or 0], 5 a reshape [count, sizes...], 6 linear [weight slot, bias slot],
// 7 log-softmax [dim], 8 softmax [dim], 9 ReLU. Run from Python after the plan, ResNet-18 LCNN-fast's four
// (average pooling, View, Linear, log-softmax) took 85 us longer at batch 1 and 2 threads (1.628 against 1.542 ms,
// 12 rounds alternating in one process), and 2 us at 1 thread; AlexNet LCNN-fast's two (View, log-softmax) 29 us
// at 2 threads and 34 at 1. run_steps runs code[begin, end).
at::Tensor run_steps(const at::Tensor& x, const std::vector<std::optional<at::Tensor>>& tensors,
                     const std::vector<int64_t>& code, size_t begin, size_t end) {
  Act cur{x};
  std::vector<Act> stack;
  size_t i = begin;
  auto next = [&]() {
    TORCH_CHECK(i < end, "run_plan: instruction list ends early");
    return code[i++];
  };
  auto tensor = [&]() -> std::optional<at::Tensor> {
    const int64_t k = next();
    TORCH_CHECK(k >= -1 && k < static_cast<int64_t>(tensors.size()), "run_plan: tensor slot out of range");
    return k < 0 ? std::nullopt : tensors[k];
  };
  auto list = [&]() {
    const int64_t n = next();
    TORCH_CHECK(n >= 0 && i + n <= end, "run_plan: list runs past the instructions");
    std::vector<int64_t> v(code.begin() + i, code.begin() + i + n);
    i += n;
    return v;
  };
  while (i < end) {
    const int64_t kind = next();
    if (kind == 0) {
      stack.push_back(cur);
      continue;
    }
    TORCH_CHECK(kind >= 1 && kind <= 9, "run_plan: unknown instruction ", kind);
    if (kind >= 4) {
      TORCH_CHECK(stack.empty(), "run_plan: a classifier step inside a residual block");
      at::Tensor t = restrip(cur, 1).t;
      if (kind == 4) {
        const std::vector<int64_t> p = list();
        TORCH_CHECK(p.size() == 9, "run_plan: average pooling takes 9 numbers");
        t = at::avg_pool2d(t, {p[0], p[1]}, {p[2], p[3]}, {p[4], p[5]}, p[6] != 0, p[7] != 0,
                           p[8] ? std::optional<int64_t>(p[8]) : std::nullopt);
      } else if (kind == 5) {
        t = reshaped(t, list());
      } else if (kind == 6) {
        const std::optional<at::Tensor> w = tensor(), b = tensor();
        TORCH_CHECK(w, "run_plan: a linear step lacks its weight");
        t = at::linear(t, *w, b);
      } else if (kind == 9) {
        t = at::relu(t);
      } else {
        const int64_t dim = next();
        // The CPU kernels that at::log_softmax and at::softmax end in for a float tensor (the same bits), called
        // without the dispatcher's layers above them (see reshaped): 1-2 us less of the log-softmax's ~10.
        t = kind == 7 ? at::cpu::_log_softmax(t, dim, false) : at::cpu::_softmax(t, dim, false);
      }
      cur = {t};
      continue;
    }
    const bool from_stack = next(), to_stack = next(), pop_res = next(), relu = next();
    const int64_t H = next(), W = next();
    TORCH_CHECK(!(from_stack || to_stack || pop_res) || !stack.empty(), "run_plan: the stack is empty");
    std::optional<at::Tensor> t[6];
    for (int k = 0; k < (kind == 1 ? 6 : kind == 2 ? 3 : 2); ++k) t[k] = tensor();
    std::vector<int64_t> geom = list(), pool = list();
    std::optional<Act> residual;
    if (pop_res) {
      residual = stack.back();
      stack.pop_back();
    }
    const Act& in = from_stack ? stack.back() : cur;
    TORCH_CHECK(in.t.dim() == 4 && in.height() == H && in.t.size(3) == W, "run_plan: a step planned for ", H, "x",
                W, " inputs got ", restrip(in, 1).t.sizes());
    const Act* res = residual ? &*residual : nullptr;
    Act out;
    if (kind == 1) {
      TORCH_CHECK(t[2] && t[3] && t[4] && t[5], "run_plan: a lookup step lacks its taps");
      out = lookup_conv_act(in, t[0], t[1], *t[2], *t[3], *t[4], *t[5], geom, relu, pool, res, true);
    } else if (kind == 2) {
      TORCH_CHECK(t[2], "run_plan: a dense step lacks its bias");
      out = dense_conv_act(in, t[0], t[1], *t[2], geom, relu, pool, res);
    } else {
      TORCH_CHECK(t[0], "run_plan: an ATen convolution step lacks its weight");
      const std::optional<at::Tensor> r = res ? std::optional<at::Tensor>(restrip(*res, 1).t) : std::nullopt;
      out = {aten_conv(restrip(in, 1).t, *t[0], t[1], geom, relu, pool, r)};
    }
    (to_stack ? stack.back() : cur) = out;
  }
  TORCH_CHECK(stack.empty(), "run_plan: ", stack.size(), " tensors left on the stack");
  return restrip(cur, 1).t;
}

// A plan's tensors and instructions, converted from Python once (lookup.py's _Plan keeps one): passed as lists on
// every call, ResNet-18 LCNN-fast's 93 tensors and 460 numbers took ~20 us to convert, on the calling thread, per
// forward at batch 1 (a warm call of the bound method run, with a one-step plan, takes 0.9 us).
struct Plan {
  std::vector<std::optional<at::Tensor>> tensors;
  std::vector<int64_t> code;
  int64_t per_image;
  Plan(std::vector<std::optional<at::Tensor>> tensors, std::vector<int64_t> code, int64_t per_image)
      : tensors(std::move(tensors)), code(std::move(code)), per_image(per_image) {
    TORCH_CHECK(per_image >= 0 && per_image <= static_cast<int64_t>(this->code.size()),
                "run_plan: per_image must be within the instructions");
  }
};

// The plan, its first `per_image` instructions image by image when the input is a batch: each thread takes whole
// images through all those layers, so an image's activations stay in its core's L2 from layer to layer instead of
// each layer streaming the whole batch's (12.8 MB per layer in ResNet-18 at 56x56 and batch 16) through memory.
// The fully connected layers after them run on the whole batch, where every tap read serves all images.
at::Tensor run_plan(const Plan& plan, const at::Tensor& x) {
  const std::vector<std::optional<at::Tensor>>& tensors = plan.tensors;
  const std::vector<int64_t>& code = plan.code;
  const int64_t per_image = plan.per_image;
  TORCH_CHECK(x.dim() == 4, "run_plan: the input must be 4-D, got ", x.sizes());
  const int64_t N = x.size(0), threads = usable_threads();
  at::Tensor cur = x;
  if (per_image > 0 && N > 1) {
    // Whole images to each thread while every thread gets one; the rest one at a time with every layer split
    // over the threads. Either way an image goes through the same kernels, so the results do not depend on the
    // number of threads.
    const at::Tensor xc = x.contiguous();
    const int64_t whole = N - N % threads;
    std::vector<at::Tensor> outs(N);
    auto image = [&](int64_t n) { outs[n] = run_steps(xc.narrow(0, n, 1), tensors, code, 0, per_image); };
    at::parallel_for(0, whole, 1, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) image(n);
    });
    for (int64_t n = whole; n < N; ++n) image(n);
    cur = at::cat(outs);
  } else if (per_image > 0) {
    cur = run_steps(x, tensors, code, 0, per_image);
  }
  return run_steps(cur, tensors, code, per_image, code.size());
}

}  // namespace

TORCH_LIBRARY(lcnn_lookup, m) {
  m.def("conv(Tensor x, Tensor? dict_pack, Tensor? dict_t, Tensor rowptr, Tensor idx, Tensor val, Tensor bias, "
        "int[] geom, bool relu, int[] pool, Tensor? residual) -> Tensor",
        &lookup_conv);
  m.def("dense(Tensor x, Tensor? w_pack, Tensor? w_t, Tensor bias, int[] geom, bool relu, int[] pool, "
        "Tensor? residual) -> Tensor",
        &dense_conv);
  m.def("max_pool(Tensor x, int[] pool, bool relu) -> Tensor", &max_pool);
  m.def("aten_conv(Tensor x, Tensor weight, Tensor? bias, int[] geom, bool relu, int[] pool, Tensor? residual) "
        "-> Tensor", &aten_conv);
  m.def("isa() -> str", &isa_name);
  m.def("set_isa(str name) -> str", &set_isa);
  m.def("set_min_task_work(int work) -> int", &set_min_task_work);
  m.def("set_strips(int mode) -> int", &set_strips);
  m.def("denormal_operands(bool clear) -> bool", &denormal_operands);
}

// The module cpp_extension.load returns: Plan(tensors, code, per_image).run(x). A pybind11 class, not a TorchScript
// one: at batch 1 the call runs with caches cold (the fully connected layers of the forward before have streamed
// their weights through them), and there a TorchScript method's call took 13-18 us to reach run_plan and 10-20 us
// to hand its result back, this one 2-3 and 7-13 (AlexNet LCNN-fast, 1 and 2 threads). The GIL is released while the
// kernels run, as PyTorch's operators do.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Plan>(m, "Plan")
      .def(pybind11::init<std::vector<std::optional<at::Tensor>>, std::vector<int64_t>, int64_t>())
      .def("run", &run_plan, pybind11::call_guard<pybind11::gil_scoped_release>());
}
