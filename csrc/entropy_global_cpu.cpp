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

template <typename T>
void entropy_global_kernel(const at::Tensor& f, at::Tensor& out) {
  const int64_t B = f.size(0), N = f.size(1), C = f.size(2);
  const bool small = C <= SMALL_C;
  const at::Tensor fc = small ? f.transpose(1, 2).contiguous() : at::Tensor();  // (B, C, N) for small_logits
  const int64_t tiles = (N + TS - 1) / TS;
  // For small_logits' tiles, the largest feature norm of each tile of rows: |s_ij| <= |f_i| |f_j| bounds a
  // tile's logits from below (1e-4 above the rounding of C <= 8 products), which lets fold_tile skip
  // the flush's test where no gap can reach -87 (as on image-level maps).
  std::vector<T> tnorm(small ? B * tiles : 0, T(0));
  const T* fcp = small ? fc.data_ptr<T>() : nullptr;
  for (int64_t b = 0; small && b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      T n2 = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T x = fcp[(b * C + c) * N + i];
        n2 += x * x;
      }
      T& top = tnorm[b * tiles + i / TS];
      top = std::max(top, std::sqrt(n2) * T(1.0001));
    }
  const int64_t sb = (tiles + MAX_SLOTS - 1) / MAX_SLOTS * TS;  // superblock edge, a multiple of TS
  const int64_t ns = (N + sb - 1) / sb;                         // superblocks = slots per row
  std::vector<std::array<int64_t, 3>> tasks;                    // (b, I, J), off-diagonal ones first
  for (int64_t b = 0; b < B; ++b)
    for (int64_t I = 0; I < ns; ++I)
      for (int64_t J = I + 1; J < ns; ++J) tasks.push_back({b, I, J});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t I = 0; I < ns; ++I) tasks.push_back({b, I, I});
  std::vector<EntropyState<T>> part(B * ns * N);  // slot J of row i of image b: part[(b * ns + J) * N + i]
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  const int64_t edge = std::min(TS, N);
  const at::ThreadLocalState tls;  // the caller's dispatch state (autograd excluded), for the workers
#pragma omp parallel num_threads(num_threads())
  {
    at::ThreadLocalStateGuard guard(tls);
    at::Tensor tile = at::empty({edge * edge}, f.options());
    std::vector<T> scratch(11 * edge);
    T *rm = scratch.data(), *m = rm + edge;  // the tile's row and column maxima
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t b = tasks[task][0], I = tasks[task][1], J = tasks[task][2];
      const at::Tensor fb = f[b];
      EntropyState<T>* rows = part.data() + (b * ns + J) * N;  // slot J: the rows of I
      EntropyState<T>* cols = part.data() + (b * ns + I) * N;  // slot I: the rows of J
      for (int64_t i0 = I * sb; i0 < std::min((I + 1) * sb, N); i0 += TS) {
        const int64_t ni = std::min(TS, N - i0);
        const at::Tensor q = fb.narrow(0, i0, ni);
        for (int64_t j0 = I == J ? i0 : J * sb; j0 < std::min((J + 1) * sb, N); j0 += TS) {
          const int64_t nj = std::min(TS, N - j0);
          at::Tensor s = tile.narrow(0, 0, ni * nj).view({ni, nj});
          T* sp = s.data_ptr<T>();
          T lower = -std::numeric_limits<T>::infinity();
          if (small) {
            const T* fcb = fc.data_ptr<T>() + b * C * N;
            small_logits(fcb + i0, fcb + j0, N, C, ni, nj, sp, rm, m);
            lower = -tnorm[b * tiles + i0 / TS] * tnorm[b * tiles + j0 / TS];
          } else {
            at::mm_out(s, q, fb.narrow(0, j0, nj).t());
            if (j0 != i0) row_col_max(sp, ni, nj, rm, m);
          }
          fold_tile(sp, ni, nj, rm, m, lower, rows + i0, j0 != i0 ? cols + j0 : nullptr, m + edge);
        }
      }
    }
    T* o = out.data_ptr<T>();
#pragma omp for schedule(static)
    for (int64_t row = 0; row < B * N; ++row) {
      const int64_t b = row / N, i = row % N;
      EntropyState<T> st;
      for (int64_t J = 0; J < ns; ++J) st.merge(part[(b * ns + J) * N + i]);
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
