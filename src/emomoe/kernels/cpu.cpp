// emomoe's fused CPU kernels, registered as torch ops in the `emomoe` namespace.
//
// Legend (docs/architecture.md): T tokens, E experts, G documents,
// K experts per token, N rows, D model dim (a linear map's inputs), F ffn hidden (its outputs),
// V vocab, X any leading dims.
//
// Built once per machine by emomoe/kernels/__init__.py with the host's vector ISA. Every kernel
// here has a pure-PyTorch twin in the model code; tests compare the two, and the twin runs
// wherever this library cannot be built or the tensors are not float32 CPU ones.

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/functional_bfloat16.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();

inline void check_float_cpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "emomoe: ", what, " must be a float32 CPU tensor");
}

inline float reduce_sum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return a + b; }, v);
}

// A long sum (a row of 40k logits' exponentials, a row's squares), vector by vector, whose
// rounding error grows with neither the row nor the vector width: each lane adds up a block of
// kBlock vectors in float, and the blocks add up in double. One float running sum per lane drifts
// about sqrt(n / kVec) eps: at V = 40003 the CE row sums were off by up to 5e-6 relative with
// AVX-512 and 1e-5 with AVX2, and the CE gradient carries that into every class. Blocks keep
// it near sqrt(kBlock) eps, as close as torch's cascade sum, for one horizontal add per block.
class LongSum {
 public:
  void add(const Vec& v) {
    block_ = block_ + v;
    if (++count_ == kBlock) flush();
  }
  double total() {
    flush();
    return total_;
  }

 private:
  static constexpr int kBlock = 32;
  void flush() {
    total_ += reduce_sum(block_);
    block_ = Vec(0.f);
    count_ = 0;
  }
  Vec block_ = Vec(0.f);
  int count_ = 0;
  double total_ = 0.0;
};

// The tail of a row of odd width as a partial load whose padding lanes hold `pad` (-inf for a max;
// Vec::loadu(p, n) pads with zeros).
inline Vec load_tail(const float* p, int64_t n, float pad) {
  alignas(64) float buf[kVec];
  std::fill(buf, buf + kVec, pad);
  std::copy(p, p + n, buf);
  return Vec::loadu(buf);
}

inline float row_max(const float* x, int64_t n) {
  Vec m(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) m = at::vec::maximum(m, Vec::loadu(x + i));
  if (i < n) m = at::vec::maximum(m, load_tail(x + i, n - i, -std::numeric_limits<float>::infinity()));
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }, m);
}

// out = exp(x - max) / sum(exp(x - max)): one row's softmax, its passes in L1; the probabilities
// are also added to `acc` (ceil(n / kVec) vectors), the running sums of the row's segment.
inline void softmax_row_into(const float* x, float* out, int64_t n, Vec* acc) {
  const Vec max(row_max(x, n));
  Vec sum(0.f);
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    Vec e = (Vec::loadu(x + i) - max).exp_u20();
    e.store(out + i);
    sum = sum + e;
  }
  if (i < n) {
    // the tail's padding lanes (exp(0 - max)) are stored nowhere and must not reach the sum
    Vec e = (Vec::loadu(x + i, n - i) - max).exp_u20();
    e.store(out + i, n - i);
    sum = sum + Vec::loadu(out + i, n - i);
  }
  const Vec inv(1.f / reduce_sum(sum));
  int64_t v = 0;
  for (i = 0; i + kVec <= n; i += kVec, ++v) {
    Vec p = Vec::loadu(out + i) * inv;
    p.store(out + i);
    acc[v] = acc[v] + p;
  }
  if (i < n) {
    Vec p = Vec::loadu(out + i, n - i) * inv;
    p.store(out + i, n - i);
    acc[v] = acc[v] + p;
  }
}

// Token ranges, one per task, of about T / C tokens each: a border moves to a segment start within
// half a chunk of it where there is one, so that fewer segments are cut.
std::vector<int64_t> chunk_borders(const int64_t* seg, int64_t num_tokens, int64_t num_chunks) {
  std::vector<int64_t> borders(num_chunks + 1, num_tokens);
  borders[0] = 0;
  const int64_t reach = num_tokens / (2 * num_chunks);
  for (int64_t c = 1; c < num_chunks; ++c) {
    const int64_t even = c * num_tokens / num_chunks;
    int64_t border = even;
    for (int64_t d = 0; d <= reach; ++d) {
      if (even + d < num_tokens && seg[even + d] != seg[even + d - 1]) {
        border = even + d;
        break;
      }
      if (even - d > borders[c - 1] && seg[even - d] != seg[even - d - 1]) {
        border = even - d;
        break;
      }
    }
    borders[c] = std::max(border, borders[c - 1]);
  }
  return borders;
}

}  // namespace

// The top `size` experts of one segment by summed probability, ties to the lower index, as 1.0
// in its row of `keep` (zeros elsewhere).
inline void rank_pool(const double* sum, int64_t E, int64_t size, float* keep, std::vector<int64_t>& order) {
  const int64_t d = std::clamp<int64_t>(size, 0, E);
  std::iota(order.begin(), order.end(), 0);
  auto before = [sum](int64_t a, int64_t b) { return sum[a] > sum[b] || (sum[a] == sum[b] && a < b); };
  if (d < E) std::nth_element(order.begin(), order.begin() + d, order.end(), before);
  for (int64_t i = 0; i < d; ++i) keep[order[i]] = 1.f;
}

// Rows [t0, t1) of one segment: probabilities times the pool's 0/1 row, renormalised in place. A
// pool whose probabilities all underflowed to zero keeps zero weights, not 0/0.
inline void renormalise_rows(float* out, int64_t t0, int64_t t1, int64_t E, const float* keep) {
  const float tiny = std::numeric_limits<float>::min();
  for (int64_t t = t0; t < t1; ++t) {
    float* p = out + t * E;
    Vec sum(0.f);
    int64_t i = 0;
    for (; i + kVec <= E; i += kVec) {
      Vec v = Vec::loadu(p + i) * Vec::loadu(keep + i);
      v.store(p + i);
      sum = sum + v;
    }
    if (i < E) {
      Vec v = Vec::loadu(p + i, E - i) * Vec::loadu(keep + i, E - i);
      v.store(p + i, E - i);
      sum = sum + v;
    }
    const Vec inv(1.f / std::max(reduce_sum(sum), tiny));
    for (i = 0; i + kVec <= E; i += kVec) (Vec::loadu(p + i) * inv).store(p + i);
    if (i < E) (Vec::loadu(p + i, E - i) * inv).store(p + i, E - i);
  }
}

// The EMO pool (see emomoe.model.pool.pooled_softmax): for each segment, its tokens' softmax rows
// and their sum over the segment; the top sizes_G[g] experts by that sum, ties to the lower index;
// then each row restricted to the pool and renormalised. The tokens are cut into chunks, one task
// each (`chunk_borders`). A segment that lies within one chunk is finished there, while its rows are still in the
// core's cache (the pool needs a second pass over them); a segment cut by a chunk border sums its
// parts (in double) after the parallel part, and is finished in a second, smaller one.
// `seg_T` must be non-decreasing (segments are runs of tokens, as `Segments` numbers them).
// Returns (pooled_TE, keep_GE as 0/1 float).
std::tuple<at::Tensor, at::Tensor> pool_softmax(
    const at::Tensor& logits_TE, const at::Tensor& seg_T, int64_t num_segments, const at::Tensor& sizes_G) {
  check_float_cpu(logits_TE, "pool_softmax's logits");
  TORCH_CHECK(logits_TE.dim() == 2, "emomoe::pool_softmax: logits must be [T, E]");
  TORCH_CHECK(seg_T.scalar_type() == at::kLong && sizes_G.scalar_type() == at::kLong,
              "emomoe::pool_softmax: segment ids and pool sizes must be int64");
  TORCH_CHECK(seg_T.numel() == logits_TE.size(0) && sizes_G.numel() >= num_segments,
              "emomoe::pool_softmax: one segment id per token and one pool size per segment");
  const at::Tensor logits = logits_TE.contiguous();
  const at::Tensor seg = seg_T.contiguous();
  const at::Tensor sizes = sizes_G.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1), G = num_segments;
  at::Tensor out_TE = at::empty({T, E}, logits.options());
  at::Tensor keep_GE = at::zeros({G, E}, logits.options());
  if (T == 0 || E == 0) return {out_TE, keep_GE};
  const float* x = logits.data_ptr<float>();
  const int64_t* s = seg.data_ptr<int64_t>();
  const int64_t* size = sizes.data_ptr<int64_t>();
  float* out = out_TE.data_ptr<float>();
  float* keep = keep_GE.data_ptr<float>();

  // Per chunk, at most two cut segments: the one it starts inside, the one it ends inside.
  struct Cut {
    int64_t seg = -1, t0 = 0, t1 = 0;
  };
  const int64_t num_chunks = std::min<int64_t>(T, 4 * at::get_num_threads());
  std::vector<Cut> cuts(2 * num_chunks);
  std::vector<double> cut_sums(2 * num_chunks * E, 0.0);
  const std::vector<int64_t> borders = chunk_borders(s, T, num_chunks);
  std::vector<int64_t> first_seg(num_chunks, -1), last_seg(num_chunks, -1);
  const int64_t num_vecs = (E + kVec - 1) / kVec;
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<Vec> lanes(num_vecs);  // float sums of one run of rows: at most T / num_chunks
    std::vector<float> run(num_vecs * kVec);
    std::vector<double> sum(E);
    std::vector<int64_t> order(E);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t t0 = borders[c], t1 = borders[c + 1];
      if (t0 == t1) continue;
      first_seg[c] = s[t0];
      for (int64_t t = t0; t < t1;) {
        const int64_t g = s[t], start = t;
        TORCH_CHECK(g >= 0 && g < G, "emomoe::pool_softmax: segment id out of range");
        TORCH_CHECK(t == t0 || g > s[t - 1], "emomoe::pool_softmax: segment ids must be non-decreasing");
        std::fill(lanes.begin(), lanes.end(), Vec(0.f));
        for (; t < t1 && s[t] == g; ++t) softmax_row_into(x + t * E, out + t * E, E, lanes.data());
        for (int64_t v = 0; v < num_vecs; ++v) lanes[v].store(run.data() + v * kVec);
        std::copy(run.begin(), run.begin() + E, sum.begin());
        const bool cut = (start == t0 && t0 > 0 && s[t0 - 1] == g) || (t == t1 && t1 < T && s[t1] == g);
        if (!cut) {
          rank_pool(sum.data(), E, size[g], keep + g * E, order);
          renormalise_rows(out, start, t, E, keep + g * E);
          continue;
        }
        const int64_t slot = 2 * c + (start == t0 ? 0 : 1);
        cuts[slot] = {g, start, t};
        std::copy(sum.begin(), sum.end(), cut_sums.begin() + slot * E);
      }
      last_seg[c] = s[t1 - 1];
    }
  });
  int64_t previous = -1;  // the last segment of the chunks so far
  for (int64_t c = 0; c < num_chunks; ++c) {
    if (first_seg[c] < 0) continue;  // an empty chunk
    TORCH_CHECK(first_seg[c] >= previous, "emomoe::pool_softmax: segment ids must be non-decreasing");
    previous = last_seg[c];
  }

  // The cut segments: sum their parts, rank each once, then finish their rows chunk by chunk.
  std::vector<double> sum(E, 0.0);
  std::vector<int64_t> order(E);
  for (size_t i = 0; i < cuts.size();) {
    const int64_t g = cuts[i].seg;
    if (g < 0) {
      ++i;
      continue;
    }
    std::fill(sum.begin(), sum.end(), 0.0);
    for (; i < cuts.size() && (cuts[i].seg == g || cuts[i].seg < 0); ++i) {
      if (cuts[i].seg < 0) continue;
      for (int64_t e = 0; e < E; ++e) sum[e] += cut_sums[i * E + e];
    }
    rank_pool(sum.data(), E, size[g], keep + g * E, order);
  }
  at::parallel_for(0, static_cast<int64_t>(cuts.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      if (cuts[i].seg >= 0) renormalise_rows(out, cuts[i].t0, cuts[i].t1, E, keep + cuts[i].seg * E);
  });
  return {out_TE, keep_GE};
}

// Indices [T, K] of each row's K largest values, largest first, ties to the lower index: what
// torch.topk(...).indices gives, by insertion into a sorted K-list instead of a general selection
// (K is a handful, E at most a few hundred).
at::Tensor topk_indices(const at::Tensor& x_TE, int64_t k) {
  check_float_cpu(x_TE, "topk_indices' input");
  TORCH_CHECK(x_TE.dim() == 2, "emomoe::topk_indices: input must be [T, E]");
  const at::Tensor x = x_TE.contiguous();
  const int64_t T = x.size(0), E = x.size(1);
  TORCH_CHECK(k >= 0 && k <= E, "emomoe::topk_indices: k must lie in [0, E]");
  at::Tensor idx_TK = at::empty({T, k}, x.options().dtype(at::kLong));
  if (k == 0) return idx_TK;
  const float* v = x.data_ptr<float>();
  int64_t* out = idx_TK.data_ptr<int64_t>();
  at::parallel_for(0, T, 256, [&](int64_t t0, int64_t t1) {
    std::vector<float> best(k);
    for (int64_t t = t0; t < t1; ++t) {
      const float* row = v + t * E;
      int64_t* ids = out + t * k;
      int64_t n = 0;  // entries held, sorted descending; a later equal value goes after
      for (int64_t e = 0; e < E; ++e) {
        const float val = row[e];
        if (n == k && !(val > best[k - 1])) continue;
        int64_t j = n < k ? n++ : k - 1;
        for (; j > 0 && val > best[j - 1]; --j) {
          best[j] = best[j - 1];
          ids[j] = ids[j - 1];
        }
        best[j] = val;
        ids[j] = e;
      }
    }
  });
  return idx_TK;
}


// RMSNorm over the rows of x_ND: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), in one
// pass per row. Returns (y_ND, rstd_N); the backward reuses rstd.
std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x_ND, const at::Tensor& w_D, double eps) {
  check_float_cpu(x_ND, "rms_norm_forward's input");
  check_float_cpu(w_D, "rms_norm_forward's weight");
  TORCH_CHECK(x_ND.dim() == 2 && w_D.dim() == 1 && w_D.size(0) == x_ND.size(1), "emomoe::rms_norm_forward: shapes");
  const at::Tensor x = x_ND.contiguous(), w = w_D.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor y_ND = at::empty({N, D}, x.options()), rstd_N = at::empty({N}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float *yp = y_ND.data_ptr<float>(), *rp = rstd_N.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* row = xp + n * D;
      LongSum sq;
      for (int64_t i = 0; i < D; i += kVec) {
        const Vec v = Vec::loadu(row + i, std::min(kVec, D - i));
        sq.add(v * v);
      }
      const float r = static_cast<float>(1.0 / std::sqrt(sq.total() / D + eps));
      rp[n] = r;
      const Vec rv(r);
      for (int64_t i = 0; i < D; i += kVec) {
        const int64_t m = std::min(kVec, D - i);
        (Vec::loadu(row + i, m) * rv * Vec::loadu(wp + i, m)).store(yp + n * D + i, m);
      }
    }
  });
  return {y_ND, rstd_N};
}

// The gradients of rms_norm_forward, in one pass over (grad, x):
// dx = rstd * g * w - x * rstd^3 * sum(g * w * x) / D, and dw = sum over rows of g * x * rstd
// (per-task partial sums, added after the parallel part).
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(
    const at::Tensor& grad_ND, const at::Tensor& x_ND, const at::Tensor& w_D, const at::Tensor& rstd_N) {
  for (const auto* t : {&grad_ND, &x_ND, &w_D, &rstd_N}) check_float_cpu(*t, "rms_norm_backward's inputs");
  const at::Tensor g = grad_ND.contiguous(), x = x_ND.contiguous(), w = w_D.contiguous(), rstd = rstd_N.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  TORCH_CHECK(g.sizes() == x.sizes() && w.size(0) == D && rstd.size(0) == N, "emomoe::rms_norm_backward: shapes");
  at::Tensor dx_ND = at::empty({N, D}, x.options());
  const int64_t num_chunks = std::max<int64_t>(1, std::min<int64_t>(N, at::get_num_threads()));
  at::Tensor partials_XD = at::zeros({num_chunks, D}, x.options());
  const float *gp = g.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float *dxp = dx_ND.data_ptr<float>(), *pp = partials_XD.data_ptr<float>();
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float* dw = pp + c * D;
      for (int64_t n = c * N / num_chunks; n < (c + 1) * N / num_chunks; ++n) {
        const float *gr = gp + n * D, *xr = xp + n * D;
        const float r = rp[n];
        LongSum dot;
        for (int64_t i = 0; i < D; i += kVec) {
          const int64_t m = std::min(kVec, D - i);
          dot.add(Vec::loadu(gr + i, m) * Vec::loadu(wp + i, m) * Vec::loadu(xr + i, m));
        }
        const Vec rv(r), coef(static_cast<float>(double(r) * r * r * dot.total() / D));
        for (int64_t i = 0; i < D; i += kVec) {
          const int64_t m = std::min(kVec, D - i);
          const Vec gv = Vec::loadu(gr + i, m), xv = Vec::loadu(xr + i, m);
          (rv * gv * Vec::loadu(wp + i, m) - xv * coef).store(dxp + n * D + i, m);
          at::vec::fmadd(gv * xv, rv, Vec::loadu(dw + i, m)).store(dw + i, m);
        }
      }
    }
  });
  return {dx_ND, partials_XD.sum(0)};
}

// h = silu(g) * u elementwise, one pass.
at::Tensor swiglu_forward(const at::Tensor& g_NF, const at::Tensor& u_NF) {
  check_float_cpu(g_NF, "swiglu_forward's gate");
  check_float_cpu(u_NF, "swiglu_forward's up projection");
  TORCH_CHECK(g_NF.sizes() == u_NF.sizes(), "emomoe::swiglu_forward: shapes differ");
  const at::Tensor g = g_NF.contiguous(), u = u_NF.contiguous();
  at::Tensor h = at::empty_like(g);
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  const Vec one(1.f);
  at::parallel_for(0, g.numel(), 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += kVec) {
      const int64_t m = std::min(kVec, i1 - i);
      const Vec gv = Vec::loadu(gp + i, m);
      (gv / (one + gv.neg().exp_u20()) * Vec::loadu(up + i, m)).store(hp + i, m);
    }
  });
  return h;
}

// The gradients of swiglu_forward, one pass: with s = sigmoid(g),
// du = dh * g * s and dg = dh * u * s * (1 + g * (1 - s)).
std::tuple<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& dh_NF, const at::Tensor& g_NF, const at::Tensor& u_NF) {
  for (const auto* t : {&dh_NF, &g_NF, &u_NF}) check_float_cpu(*t, "swiglu_backward's inputs");
  TORCH_CHECK(dh_NF.sizes() == g_NF.sizes() && g_NF.sizes() == u_NF.sizes(), "emomoe::swiglu_backward: shapes differ");
  const at::Tensor dh = dh_NF.contiguous(), g = g_NF.contiguous(), u = u_NF.contiguous();
  at::Tensor dg = at::empty_like(g), du = at::empty_like(u);
  const float *dhp = dh.data_ptr<float>(), *gp = g.data_ptr<float>(), *up = u.data_ptr<float>();
  float *dgp = dg.data_ptr<float>(), *dup = du.data_ptr<float>();
  const Vec one(1.f);
  at::parallel_for(0, g.numel(), 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += kVec) {
      const int64_t m = std::min(kVec, i1 - i);
      const Vec dv = Vec::loadu(dhp + i, m), gv = Vec::loadu(gp + i, m), uv = Vec::loadu(up + i, m);
      const Vec sv = one / (one + gv.neg().exp_u20());
      (dv * gv * sv).store(dup + i, m);
      (dv * uv * sv * at::vec::fmadd(gv, one - sv, one)).store(dgp + i, m);
    }
  });
  return {dg, du};
}

// One block of LM-head logits [N, V] to its cross-entropy terms, one row at a time while it is in
// L1/L2: lse = logsumexp(row), nll = lse - row[target]. With `grad`, the block is overwritten by
// the gradient of scale * (nll + z_weight * lse^2): scale * ((1 + 2 z_weight lse) softmax - onehot).
// Returns (nll_N, lse_N).
std::tuple<at::Tensor, at::Tensor> cross_entropy_rows(
    at::Tensor logits_NV, const at::Tensor& targets_N, const at::Tensor& scale_N, double z_weight, bool grad) {
  check_float_cpu(logits_NV, "cross_entropy_rows' logits");
  check_float_cpu(scale_N, "cross_entropy_rows' scales");
  TORCH_CHECK(logits_NV.dim() == 2 && logits_NV.is_contiguous(), "emomoe::cross_entropy_rows: contiguous [N, V] logits");
  TORCH_CHECK(targets_N.scalar_type() == at::kLong, "emomoe::cross_entropy_rows: int64 targets");
  const int64_t N = logits_NV.size(0), V = logits_NV.size(1);
  TORCH_CHECK(targets_N.numel() == N && scale_N.numel() == N, "emomoe::cross_entropy_rows: one target and scale per row");
  const at::Tensor targets = targets_N.contiguous(), scale = scale_N.contiguous();
  at::Tensor nll_N = at::empty({N}, logits_NV.options()), lse_N = at::empty({N}, logits_NV.options());
  float* x = logits_NV.data_ptr<float>();
  const int64_t* tp = targets.data_ptr<int64_t>();
  const float* sp = scale.data_ptr<float>();
  float *np = nll_N.data_ptr<float>(), *lp = lse_N.data_ptr<float>();
  at::parallel_for(0, N, 8, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float* row = x + c * V;
      const int64_t target = tp[c];
      TORCH_CHECK(target >= 0 && target < V, "emomoe::cross_entropy_rows: target out of range");
      const float target_logit = row[target];
      const float max = row_max(row, V);
      const Vec maxv(max);
      LongSum sum;
      int64_t i = 0;
      for (; i + kVec <= V; i += kVec) {
        const Vec e = (Vec::loadu(row + i) - maxv).exp_u20();
        sum.add(e);
        if (grad) e.store(row + i);
      }
      for (; i < V; ++i) {  // the tail, one by one (V is rarely not a multiple of the width)
        const float e = std::exp(row[i] - max);
        sum.add(Vec::loadu(&e, 1));
        if (grad) row[i] = e;
      }
      const double total = sum.total();
      const double lse = max + std::log(total);
      lp[c] = static_cast<float>(lse);
      np[c] = static_cast<float>(lse - target_logit);
      if (!grad) continue;
      const float factor = static_cast<float>(sp[c] * (1.0 + 2.0 * z_weight * lse) / total);
      for (i = 0; i + kVec <= V; i += kVec) (Vec::loadu(row + i) * Vec(factor)).store(row + i);
      for (; i < V; ++i) row[i] *= factor;
      row[target] -= sp[c];
    }
  });
  return {nll_N, lse_N};
}

// Ask for the same cache line of the next R rows, which the next call reads: rows are short (2 KB
// at 8 bits, d_model 2048), so the hardware prefetcher, which follows each stream only within a
// 4 KB page, ramps up too late, and a core's loads alone do not keep enough misses in flight.
// Into L2 (locality 2, prefetcht1), not L1: the L1's few fill buffers then stay free for the loads
// (6% more bytes per second of thread time than prefetcht0 at 8 bits, 2 threads, same run).
template <int R>
inline void prefetch_rows(const uint8_t* p, int64_t row_bytes) {
  for (int r = 0; r < R; ++r) __builtin_prefetch(p + (r + R) * row_bytes, 0, 2);
}

// The dot products of R consecutive bf16 weight rows (length D) with C consecutive float rows of x,
// into y (row stride F). A bf16 is the top half of a float, so each weight vector widens in
// registers (a shift) and serves all C rows of x: no float copy of the weights is ever written.
// R x C accumulators plus R weight vectors fit the 16 registers of AVX2 at R = 4, C = 2.
template <int R, int C>
inline void bf16_dot_block(const at::BFloat16* w, const float* x, int64_t D, float* y, int64_t F) {
  Vec acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = Vec(0.f);
  int64_t d = 0;
  for (; d + kVec <= D; d += kVec) {
    if (d % 32 == 0) prefetch_rows<R>(reinterpret_cast<const uint8_t*>(w + R * D + d), 2 * D);
    Vec wv[R];
    for (int r = 0; r < R; ++r) at::vec::load_to_float(w + r * D + d, wv[r]);
    for (int c = 0; c < C; ++c) {
      const Vec xv = Vec::loadu(x + c * D + d);
      for (int r = 0; r < R; ++r) acc[r][c] = at::vec::fmadd(wv[r], xv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float sum = reduce_sum(acc[r][c]);
      for (int64_t i = d; i < D; ++i) sum += static_cast<float>(w[r * D + i]) * x[c * D + i];
      y[c * F + r] = sum;
    }
  }
}

// Output rows per task of a grouped linear map: a few weight rows stay in L1 while every row of x
// passes them, and an expert's rows split over the threads.
constexpr int64_t kTaskRows = 64;

// Where each expert's rows of x start (`first`, E + 1 offsets: the rows are sorted by expert,
// counts_E of each), and the tasks of a grouped linear map: (expert, first output row) for every
// kTaskRows output rows of each expert that has rows. Experts without rows get no task: their
// weights are never read. Without counts there is one expert, and every row is its: a plain linear
// map, called ~160 times per decoded token, spared a count tensor built for it each time.
struct ExpertTasks {
  std::vector<int64_t> first;
  std::vector<std::pair<int64_t, int64_t>> tasks;
};

ExpertTasks expert_tasks(const std::optional<at::Tensor>& counts_E, int64_t E, int64_t N, int64_t F,
                         const char* op) {
  std::vector<int64_t> count(1, N);
  if (counts_E.has_value()) {
    TORCH_CHECK(counts_E->device().is_cpu() && counts_E->scalar_type() == at::kLong && counts_E->numel() == E,
                "emomoe::", op, ": one int64 CPU count per expert");
    const at::Tensor counts = counts_E->contiguous();
    count.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + E);
  } else {
    TORCH_CHECK(E == 1, "emomoe::", op, ": counts are needed for more than one expert");
  }
  ExpertTasks out{std::vector<int64_t>(E + 1, 0), {}};
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(count[e] >= 0, "emomoe::", op, ": negative count");
    out.first[e + 1] = out.first[e] + count[e];
    for (int64_t f = 0; count[e] > 0 && f < F; f += kTaskRows) out.tasks.emplace_back(e, f);
  }
  TORCH_CHECK(out.first[E] == N, "emomoe::", op, ": the counts must add up to the rows");
  return out;
}

// One task of bf16_grouped_linear: weight rows [f0, f1) of one expert against its rows of x [n0, n1).
template <int R>
inline void bf16_rows_task(const at::BFloat16* w, const float* x, int64_t n0, int64_t n1, int64_t D, float* y,
                           int64_t F, int64_t f) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) bf16_dot_block<R, 2>(w + f * D, x + n * D, D, y + n * F + f, F);
  if (n < n1) bf16_dot_block<R, 1>(w + f * D, x + n * D, D, y + n * F + f, F);
}

// y_NF: the rows of x_ND, sorted by expert with counts_E[e] rows each, times their expert's
// w_EFD[e]^T, the weights read in bf16 once (few rows: decoding). Only experts with rows are read.
// Without counts, w is one expert's [F, D] (or [1, F, D]) and every row of x multiplies it.
// Tasks are blocks of one expert's output rows; within one, a few weight rows stay in L1 while
// every row of x passes them.
at::Tensor bf16_grouped_linear(const at::Tensor& x_ND, const at::Tensor& w_EFD,
                               const std::optional<at::Tensor>& counts_E) {
  check_float_cpu(x_ND, "bf16_grouped_linear's input");
  TORCH_CHECK(w_EFD.device().is_cpu() && w_EFD.scalar_type() == at::kBFloat16 &&
                  (w_EFD.dim() == 3 || (w_EFD.dim() == 2 && !counts_E.has_value())) && w_EFD.is_contiguous(),
              "emomoe::bf16_grouped_linear: weights must be a contiguous bf16 CPU tensor [E, F, D], or [F, D] "
              "without counts");
  TORCH_CHECK(x_ND.dim() == 2 && x_ND.size(1) == w_EFD.size(-1), "emomoe::bf16_grouped_linear: x must be [N, D]");
  const at::Tensor x = x_ND.contiguous();
  const int64_t N = x.size(0), D = x.size(1), F = w_EFD.size(-2);
  const ExpertTasks plan = expert_tasks(counts_E, w_EFD.dim() == 3 ? w_EFD.size(0) : 1, N, F, "bf16_grouped_linear");
  const auto& first = plan.first;
  const auto& tasks = plan.tasks;
  at::Tensor y_NF = at::empty({N, F}, x.options());
  const float* xp = x.data_ptr<float>();
  const at::BFloat16* wp = w_EFD.data_ptr<at::BFloat16>();
  float* yp = y_NF.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const auto [e, f0] = tasks[i];
      const int64_t f1 = std::min(f0 + kTaskRows, F);
      const at::BFloat16* we = wp + e * F * D;
      int64_t f = f0;
      for (; f + 4 <= f1; f += 4) bf16_rows_task<4>(we, xp, first[e], first[e + 1], D, yp, F, f);
      for (; f < f1; ++f) bf16_rows_task<1>(we, xp, first[e], first[e + 1], D, yp, F, f);
    }
  });
  return y_NF;
}

// Integer weights (`emomoe quantize`): each weight row is split into groups of G inputs with one
// float scale each, w[f, d] = scale[f, d / G] * q[f, d]. 8 bits: q is an int8. 4 bits: q + 8 is
// a nibble, two per byte, in blocks of 32 weights (16 bytes): byte j of a block holds weight j in
// its low half and weight j + 16 in its high half, so one load yields two runs of consecutive
// weights and unpacking needs no shuffle (llama.cpp's q4_0 lays its nibbles out the same way).
constexpr int64_t kNibbleBlock = 32;

// The low and the high nibbles of kVec bytes, each widened to floats (0..15: the stored q + 8;
// the 8 comes off once per group, through the group's sum of x).
inline std::pair<Vec, Vec> nibbles_to_float(const uint8_t* p) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i lo = _mm512_and_si512(b, _mm512_set1_epi32(15)), hi = _mm512_srli_epi32(b, 4);
  return {Vec(_mm512_cvtepi32_ps(lo)), Vec(_mm512_cvtepi32_ps(hi))};
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i lo = _mm256_and_si256(b, _mm256_set1_epi32(15)), hi = _mm256_srli_epi32(b, 4);
  return {Vec(_mm256_cvtepi32_ps(lo)), Vec(_mm256_cvtepi32_ps(hi))};
#else
  float lo[kVec], hi[kVec];
  for (int64_t i = 0; i < kVec; ++i) {
    lo[i] = static_cast<float>(p[i] & 15);
    hi[i] = static_cast<float>(p[i] >> 4);
  }
  return {Vec::loadu(lo), Vec::loadu(hi)};
#endif
}

// 8-bit weights multiply 16-bit integer activations: each group of a row of x is rounded to
// integers whose largest magnitude is 32767, with one float scale (`IntActivations`), so a product
// of 32 weights is one widening (int8 -> int16) and one integer multiply-add of pairs into int32
// lanes (VNNI's vpdpwssd where the CPU has it), against a widening, a conversion and a float FMA
// per 16 weights on floats: at 2 threads the float form was bound by arithmetic, not by memory.
// The rounding moves each activation by at most half its group's step (amax / 65534), 128 times
// finer than bf16 activations; tests/model/test_quantized.py checks outputs against that bound.
constexpr float kInt16Max = 32767.f;
#if defined(CPU_CAPABILITY_AVX512)
using IVec = __m512i;
inline IVec ivec_zero() { return _mm512_setzero_si512(); }
inline IVec load_int16(const int16_t* p) { return _mm512_loadu_si512(p); }
inline IVec widen_int8(const int8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline IVec dot_pairs(IVec acc, IVec a, IVec b) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, a, b);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}
inline Vec int32_to_float(IVec v) { return Vec(_mm512_cvtepi32_ps(v)); }
#elif defined(CPU_CAPABILITY_AVX2)
using IVec = __m256i;
inline IVec ivec_zero() { return _mm256_setzero_si256(); }
inline IVec load_int16(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline IVec widen_int8(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline IVec dot_pairs(IVec acc, IVec a, IVec b) {
#if defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}
inline Vec int32_to_float(IVec v) { return Vec(_mm256_cvtepi32_ps(v)); }
#else
// Without vectors, one "vector" is one int32 sum, which lands in lane 0 of a float vector.
using IVec = int32_t;
inline IVec ivec_zero() { return 0; }
inline IVec load_int16(const int16_t* p) { return *p; }
inline IVec widen_int8(const int8_t* p) { return *p; }
inline IVec dot_pairs(IVec acc, IVec a, IVec b) { return acc + a * b; }
inline Vec int32_to_float(IVec v) {
  const float f = static_cast<float>(v);
  return Vec::loadu(&f, 1);
}
#endif
// int16 lanes per IVec (1 without vectors).
constexpr int64_t kInt16s = sizeof(IVec) == sizeof(int32_t) ? 1 : sizeof(IVec) / sizeof(int16_t);
// Integer sums are flushed into floats every kIntRun inputs: each int32 lane then holds at most
// 512 products of at most 127 * 32767, below 2^31 (the inputs spread over the lanes, so a wider
// vector runs longer; without vectors one lane takes them all).
constexpr int64_t kIntRun = 512 * static_cast<int64_t>(sizeof(IVec) / sizeof(int32_t));

// Each row of x as int16 (`q`, [N, D]) and one scale per group of G inputs (`scale`, [N, D / G]):
// x ~= scale * q. A group that holds a NaN or an infinity gets a NaN scale, so its outputs are NaN
// as with float activations, never an undefined cast.
struct IntActivations {
  std::vector<int16_t> q;
  std::vector<float> scale;
};

IntActivations int16_activations(const float* x, int64_t N, int64_t D, int64_t G) {
  IntActivations out{std::vector<int16_t>(N * D), std::vector<float>(N * D / G)};
  at::parallel_for(0, N * D / G, 64, [&](int64_t i0, int64_t i1) {  // a prompt's rows are many
    for (int64_t i = i0; i < i1; ++i) {
      const float* xg = x + i * G;
      float amax = 0.f;
      for (int64_t d = 0; d < G; ++d) amax = std::max(amax, std::abs(xg[d]));
      const bool finite = std::isfinite(amax);
      out.scale[i] = finite ? amax / kInt16Max : std::numeric_limits<float>::quiet_NaN();
      const float inverse = finite && amax > 0.f ? kInt16Max / amax : 0.f;
      for (int64_t d = 0; d < G; ++d)
        out.q[i * G + d] = finite ? static_cast<int16_t>(std::nearbyint(xg[d] * inverse)) : int16_t{0};
    }
  });
  return out;
}


// acc[r] += scale[r] * (q row r . x) over one group [d0, d0 + G) of R consecutive 4-bit weight
// rows, the products summed in a vector per row before the scale multiplies them once.
template <int R>
inline void nibble_group_dot(const uint8_t* q, int64_t row_bytes, const float* x, int64_t d0, int64_t G,
                             const float* scale, int64_t groups, int64_t g, Vec* acc) {
  Vec part[R];
  for (int r = 0; r < R; ++r) part[r] = Vec(0.f);
  for (int64_t b = d0; b < d0 + G; b += kNibbleBlock) {
    if (b % 128 == 0) prefetch_rows<R>(q + R * row_bytes + b / 2, row_bytes);
    for (int64_t j = 0; j < kNibbleBlock / 2; j += kVec) {
      const Vec xlo = Vec::loadu(x + b + j), xhi = Vec::loadu(x + b + kNibbleBlock / 2 + j);
      for (int r = 0; r < R; ++r) {
        const auto [wlo, whi] = nibbles_to_float(q + r * row_bytes + b / 2 + j);
        part[r] = at::vec::fmadd(whi, xhi, at::vec::fmadd(wlo, xlo, part[r]));
      }
    }
  }
  for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(part[r], Vec(scale[r * groups + g]), acc[r]);
}

// acc[r] += scale[r] * xscale * (q row r . xq) over one group [d0, d0 + G) of R consecutive 8-bit
// weight rows and the row's int16 activations, summed exactly in int32 for up to kIntRun inputs.
template <int R>
inline void int8_group_dot(const int8_t* q, int64_t D, const int16_t* xq, float xscale, int64_t d0, int64_t G,
                           const float* scale, int64_t groups, int64_t g, Vec* acc) {
  for (int64_t c0 = d0; c0 < d0 + G; c0 += kIntRun) {
    IVec part[R];
    for (int r = 0; r < R; ++r) part[r] = ivec_zero();
    for (int64_t d = c0; d < std::min(c0 + kIntRun, d0 + G); d += kInt16s) {
      if (d % 64 == 0) prefetch_rows<R>(reinterpret_cast<const uint8_t*>(q) + R * D + d, D);
      const IVec xv = load_int16(xq + d);
      for (int r = 0; r < R; ++r) part[r] = dot_pairs(part[r], widen_int8(q + r * D + d), xv);
    }
    for (int r = 0; r < R; ++r)
      acc[r] = at::vec::fmadd(int32_to_float(part[r]), Vec(scale[r * groups + g] * xscale), acc[r]);
  }
}

// y[n, f..f+R) for every row n of x in [n0, n1): R weight rows at a time stay in L1 while the
// rows of x pass them. At 4 bits the products are of q + 8, and 8 * scale * (the group's sum of
// x, `xsum`) comes off per group: two subtractions fewer per 32 weights, where 4 bits is bound
// by arithmetic rather than by memory.
template <int R>
inline void nibble_rows_task(const uint8_t* q, const float* scale, const float* x, const float* xsum, int64_t n0,
                             int64_t n1, int64_t D, int64_t G, float* y, int64_t F, int64_t f) {
  const int64_t row_bytes = D / 2, groups = D / G;
  for (int64_t n = n0; n < n1; ++n) {
    Vec acc[R];
    float offset[R] = {};
    for (int r = 0; r < R; ++r) acc[r] = Vec(0.f);
    for (int64_t g = 0; g < groups; ++g) {
      nibble_group_dot<R>(q + f * row_bytes, row_bytes, x + n * D, g * G, G, scale + f * groups, groups, g, acc);
      for (int r = 0; r < R; ++r) offset[r] += scale[(f + r) * groups + g] * xsum[n * groups + g];
    }
    for (int r = 0; r < R; ++r) y[n * F + f + r] = reduce_sum(acc[r]) - 8.f * offset[r];
  }
}

template <int R>
inline void int8_rows_task(const int8_t* q, const float* scale, const IntActivations& x, int64_t n0, int64_t n1,
                           int64_t D, int64_t G, float* y, int64_t F, int64_t f) {
  const int64_t groups = D / G;
  for (int64_t n = n0; n < n1; ++n) {
    Vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = Vec(0.f);
    for (int64_t g = 0; g < groups; ++g)
      int8_group_dot<R>(q + f * D, D, x.q.data() + n * D, x.scale[n * groups + g], g * G, G, scale + f * groups,
                        groups, g, acc);
    for (int r = 0; r < R; ++r) y[n * F + f + r] = reduce_sum(acc[r]);
  }
}

// As bf16_grouped_linear, for integer weights `qdata` [E, F, D bytes at 8 bits, D / 2 at 4] with
// float `scales` [E, F, groups per row] (or [F, ...] both, without counts): each weight is read once,
// as stored, and widened in registers.
at::Tensor int_grouped_linear(const at::Tensor& x_ND, const at::Tensor& qdata, const at::Tensor& scales,
                              const std::optional<at::Tensor>& counts_E, int64_t bits) {
  check_float_cpu(x_ND, "int_grouped_linear's input");
  check_float_cpu(scales, "int_grouped_linear's scales");
  TORCH_CHECK(bits == 8 || bits == 4, "emomoe::int_grouped_linear: bits must be 8 or 4");
  const auto qtype = bits == 8 ? at::kChar : at::kByte;
  const int64_t dims = qdata.dim();
  TORCH_CHECK(qdata.device().is_cpu() && qdata.scalar_type() == qtype && qdata.is_contiguous() &&
                  (dims == 3 || (dims == 2 && !counts_E.has_value())),
              "emomoe::int_grouped_linear: weights must be a contiguous ", bits == 8 ? "int8" : "uint8",
              " CPU tensor [E, F, bytes per row], or [F, bytes per row] without counts");
  const int64_t N = x_ND.size(0), D = x_ND.size(1), E = dims == 3 ? qdata.size(0) : 1, F = qdata.size(-2);
  TORCH_CHECK(x_ND.dim() == 2 && qdata.size(-1) * 8 / bits == D, "emomoe::int_grouped_linear: x must be [N, D]");
  TORCH_CHECK(scales.dim() == dims && (dims == 2 || scales.size(0) == E) && scales.size(-2) == F &&
                  scales.is_contiguous(),
              "emomoe::int_grouped_linear: scales must be contiguous [E, F, G] (or [F, G]) like the weights");
  const int64_t groups = scales.size(-1), G = groups ? D / groups : 0;
  // Whole nibble blocks, and whole vectors on every ISA (the file format does not depend on the CPU).
  static_assert(kNibbleBlock % (2 * kVec) == 0 && kNibbleBlock % kInt16s == 0, "a nibble block is whole vectors");
  TORCH_CHECK(groups > 0 && G * groups == D && G % kNibbleBlock == 0,
              "emomoe::int_grouped_linear: the group size must divide D and be a multiple of ", kNibbleBlock);
  const at::Tensor x = x_ND.contiguous();
  const ExpertTasks plan = expert_tasks(counts_E, E, N, F, "int_grouped_linear");
  const auto& first = plan.first;
  const auto& tasks = plan.tasks;
  at::Tensor y_NF = at::empty({N, F}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* sp = scales.data_ptr<float>();
  const uint8_t* qp = static_cast<const uint8_t*>(qdata.data_ptr());
  float* yp = y_NF.data_ptr<float>();
  const int64_t row_bytes = qdata.size(-1);
  const IntActivations xq = bits == 8 ? int16_activations(xp, N, D, G) : IntActivations{};
  std::vector<float> xsum(bits == 4 ? N * groups : 0);
  for (int64_t i = 0; i < static_cast<int64_t>(xsum.size()); ++i)
    xsum[i] = std::accumulate(xp + i * G, xp + (i + 1) * G, 0.f);
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const auto [e, f0] = tasks[i];
      const int64_t f1 = std::min(f0 + kTaskRows, F);
      const uint8_t* qe = qp + e * F * row_bytes;
      const float* se = sp + e * F * groups;
      const int64_t n0 = first[e], n1 = first[e + 1];
      int64_t f = f0;
      if (bits == 8) {
        const int8_t* q8 = reinterpret_cast<const int8_t*>(qe);
        for (; f + 4 <= f1; f += 4) int8_rows_task<4>(q8, se, xq, n0, n1, D, G, yp, F, f);
        for (; f < f1; ++f) int8_rows_task<1>(q8, se, xq, n0, n1, D, G, yp, F, f);
      } else {
        for (; f + 4 <= f1; f += 4) nibble_rows_task<4>(qe, se, xp, xsum.data(), n0, n1, D, G, yp, F, f);
        for (; f < f1; ++f) nibble_rows_task<1>(qe, se, xp, xsum.data(), n0, n1, D, G, yp, F, f);
      }
    }
  });
  return y_NF;
}

#define EMOMOE_STRING(x) #x
#define EMOMOE_EXPANDED_STRING(x) EMOMOE_STRING(x)

// The vector instruction set this library was compiled for, as ATen names it (AVX512, AVX2,
// DEFAULT): `emomoe kernels info` reports it, since the kernels' speed depends on it.
std::string vector_isa() {
  return EMOMOE_EXPANDED_STRING(CPU_CAPABILITY);
}

TORCH_LIBRARY(emomoe, m) {
  m.def("vector_isa() -> str", &vector_isa);
  m.def("pool_softmax(Tensor logits_TE, Tensor seg_T, int num_segments, Tensor sizes_G) -> (Tensor, Tensor)");
  m.def("topk_indices(Tensor x_TE, int k) -> Tensor");
  m.def("rms_norm_forward(Tensor x_ND, Tensor w_D, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_backward(Tensor grad_ND, Tensor x_ND, Tensor w_D, Tensor rstd_N) -> (Tensor, Tensor)");
  m.def("swiglu_forward(Tensor g_NF, Tensor u_NF) -> Tensor");
  m.def("swiglu_backward(Tensor dh_NF, Tensor g_NF, Tensor u_NF) -> (Tensor, Tensor)");
  m.def("cross_entropy_rows(Tensor(a!) logits_NV, Tensor targets_N, Tensor scale_N, float z_weight, bool grad) -> (Tensor, Tensor)");
  m.def("bf16_grouped_linear(Tensor x_ND, Tensor w_EFD, Tensor? counts_E) -> Tensor");
  m.def("int_grouped_linear(Tensor x_ND, Tensor qdata, Tensor scales, Tensor? counts_E, int bits) -> Tensor");
}

TORCH_LIBRARY_IMPL(emomoe, CPU, m) {
  m.impl("pool_softmax", &pool_softmax);
  m.impl("topk_indices", &topk_indices);
  m.impl("rms_norm_forward", &rms_norm_forward);
  m.impl("rms_norm_backward", &rms_norm_backward);
  m.impl("swiglu_forward", &swiglu_forward);
  m.impl("swiglu_backward", &swiglu_backward);
  m.impl("cross_entropy_rows", &cross_entropy_rows);
  m.impl("bf16_grouped_linear", &bf16_grouped_linear);
  m.impl("int_grouped_linear", &int_grouped_linear);
}
