// CPU kernel of qsattn::entropy_global.native: H_i = -sum_j A_ij log A_ij with A = softmax(F F^T), never
// holding more than a TS x TS tile of logits per thread, and computing each logit once although every
// one is used twice: S = F F^T is symmetric, so the tile S_IJ = F_I F_J^T (I < J) serves the rows of
// I row by row and the rows of J column by column (S_JI = S_IJ^T). Only the tiles I <= J are formed
// (an at::mm_out each: MKL sgemm, single-threaded inside the parallel region), about half the products
// of the full matrix; the exps stay N^2 (each logit once in its row's softmax and once in its column's).
// Each tile is folded into running (max, r, t) states by the cancellation-free epilogue (docs/design.md §2),
// fold_tile: its row and column maxima come with the tile (small_logits) or from one pass over it
// (row_col_max), then one pass sums the exps of the rows and of the columns together (each logit loaded
// once for its two terms; at x86-64-v4 one exp serves both where the tile's maxima are close).
// Determinism: the rows are cut into superblocks of g tiles (g = 1 up to MAX_SLOTS * TS rows, grown
// beyond so that no row has more than MAX_SLOTS partial states). A task (OpenMP, dynamic schedule,
// off-diagonal tasks first) is a superblock pair (I, J), I <= J, of one image; it owns slot J of the
// rows of I and slot I of the rows of J and folds its tiles into them in a fixed order. At the end the
// slots of each row are merged in slot order (EntropyState::merge): the result does not depend on the
// thread count or schedule. Extra memory: B * N * slots states (<= 3 * MAX_SLOTS values per row) and
// one tile plus 11 * TS scratch values per thread.
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "cpu_common.h"

namespace qsattn {
namespace {

using entropy_global_tiling::SMALL_C;
using entropy_global_tiling::TS;
constexpr int64_t MAX_SLOTS = 32;  // partial states per row, at most

// What the tasks of one call share: the rows, the tiling into superblocks and the task list.
template <typename T>
struct EntropyGlobalPlan {
  at::Tensor f, fc;                           // (B, N, C) rows; small C: (B, C, N), the layout small_logits reads
  int64_t B, N, C, tiles, sb, ns, edge;       // tiles of TS rows; superblock edge sb (a multiple of TS), ns of them
  bool small;                                 // C <= SMALL_C: small_logits forms the tiles
  std::vector<T> tnorm;                       // small C: the largest feature norm of each tile of rows, x 1.0001
  std::vector<std::array<int64_t, 3>> tasks;  // (b, I, J) superblock pairs, I <= J, off-diagonal ones first
};

// For small_logits' tiles, the largest feature norm of each tile of rows: |s_ij| <= |f_i| |f_j| bounds a
// tile's logits from below (1e-4 above the rounding of C <= 8 products), which lets fold_tile skip the
// flush's test where no gap can reach -87 (as on image-level maps).
template <typename T>
std::vector<T> tile_norms(const T* fc, int64_t B, int64_t N, int64_t C, int64_t tiles) {
  std::vector<T> tnorm(B * tiles, T(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      T n2 = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T x = fc[(b * C + c) * N + i];
        n2 += x * x;
      }
      T& top = tnorm[b * tiles + i / TS];
      top = std::max(top, std::sqrt(n2) * T(1.0001));
    }
  return tnorm;
}

template <typename T>
EntropyGlobalPlan<T> plan_entropy_global(const at::Tensor& f) {
  EntropyGlobalPlan<T> p;
  p.f = f;
  p.B = f.size(0), p.N = f.size(1), p.C = f.size(2);
  p.small = p.C <= SMALL_C;
  p.tiles = (p.N + TS - 1) / TS;
  if (p.small) {
    p.fc = f.transpose(1, 2).contiguous();
    p.tnorm = tile_norms(p.fc.template data_ptr<T>(), p.B, p.N, p.C, p.tiles);
  }
  p.sb = (p.tiles + MAX_SLOTS - 1) / MAX_SLOTS * TS;
  p.ns = (p.N + p.sb - 1) / p.sb;
  p.edge = std::min(TS, p.N);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t I = 0; I < p.ns; ++I)
      for (int64_t J = I + 1; J < p.ns; ++J) p.tasks.push_back({b, I, J});
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t I = 0; I < p.ns; ++I) p.tasks.push_back({b, I, I});
  return p;
}

// One task: the tiles S_IJ of superblock pair (I, J) of image b, formed and folded in a fixed order into
// slot J of the rows of I and slot I of the rows of J (part[(b * ns + slot) * N + row]). tile: this
// thread's TS x TS logits; scratch: its 11 * edge values (the tile's row and column maxima first).
template <typename T>
void fold_superblock_pair(const EntropyGlobalPlan<T>& p, const std::array<int64_t, 3>& task,
                          std::vector<EntropyState<T>>& part, at::Tensor& tile, T* scratch) {
  const int64_t b = task[0], I = task[1], J = task[2], N = p.N;
  const at::Tensor fb = p.f[b];
  EntropyState<T>* rows = part.data() + (b * p.ns + J) * N;  // slot J: the rows of I
  EntropyState<T>* cols = part.data() + (b * p.ns + I) * N;  // slot I: the rows of J
  T *rm = scratch, *m = scratch + p.edge;
  for (int64_t i0 = I * p.sb; i0 < std::min((I + 1) * p.sb, N); i0 += TS) {
    const int64_t ni = std::min(TS, N - i0);
    for (int64_t j0 = I == J ? i0 : J * p.sb; j0 < std::min((J + 1) * p.sb, N); j0 += TS) {
      const int64_t nj = std::min(TS, N - j0);
      at::Tensor s = tile.narrow(0, 0, ni * nj).view({ni, nj});
      T* sp = s.data_ptr<T>();
      T lower = -std::numeric_limits<T>::infinity();
      if (p.small) {
        const T* fcb = p.fc.template data_ptr<T>() + b * p.C * N;
        small_logits(fcb + i0, fcb + j0, N, p.C, ni, nj, sp, rm, m);
        lower = -p.tnorm[b * p.tiles + i0 / TS] * p.tnorm[b * p.tiles + j0 / TS];
      } else {
        at::mm_out(s, fb.narrow(0, i0, ni), fb.narrow(0, j0, nj).t());
        if (j0 != i0) row_col_max(sp, ni, nj, rm, m);
      }
      fold_tile(sp, ni, nj, rm, m, lower, rows + i0, j0 != i0 ? cols + j0 : nullptr, m + p.edge);
    }
  }
}

template <typename T>
void entropy_global_kernel(const at::Tensor& f, at::Tensor& out) {
  const EntropyGlobalPlan<T> p = plan_entropy_global<T>(f);
  std::vector<EntropyState<T>> part(p.B * p.ns * p.N);
  const int64_t ntasks = static_cast<int64_t>(p.tasks.size());
  const at::ThreadLocalState tls;  // the caller's dispatch state (autograd excluded), for the workers
#pragma omp parallel num_threads(num_threads())
  {
    at::ThreadLocalStateGuard guard(tls);
    at::Tensor tile = at::empty({p.edge * p.edge}, f.options());
    std::vector<T> scratch(11 * p.edge);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) fold_superblock_pair(p, p.tasks[task], part, tile, scratch.data());
    // Each row's slots merged in slot order: the result does not depend on the thread count or schedule.
    T* o = out.data_ptr<T>();
#pragma omp for schedule(static)
    for (int64_t row = 0; row < p.B * p.N; ++row) {
      const int64_t b = row / p.N, i = row % p.N;
      EntropyState<T> st;
      for (int64_t J = 0; J < p.ns; ++J) st.merge(part[(b * p.ns + J) * p.N + i]);
      o[row] = st.entropy();
    }
  }
}

at::Tensor entropy_global_cpu(const at::Tensor& f_, std::optional<std::string_view> precision) {
  check_float_input(f_, "f", 3);
  check_precision(precision);
  const at::Tensor f = blas_rows(f_);
  at::Tensor out = at::empty({f.size(0), f.size(1)}, f.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "entropy_global_cpu", [&] { entropy_global_kernel<scalar_t>(f, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qsattn, CPU, m) { m.impl("entropy_global.native", &entropy_global_cpu); }

}  // namespace qsattn
