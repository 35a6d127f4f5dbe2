/* Conv-4's CPU kernels (mtml.models.cpu_kernels), each computing exactly the bits of the
   torch ops they stand for on a contiguous float32 NCHW map, faster:

   - BatchNorm with batch statistics (torch: aten/src/ATen/native/cpu/batch_norm_kernel.cpp).
     torch sums each channel sequentially in double precision, one channel after the other,
     so each addition waits for the one before; here the same sequential sums of many
     channels run side by side (AVX2: eight channels per vector, four vectors in flight),
     which keeps every channel's order and therefore every bit. Per channel, as torch: sum =
     double sum of x in (n, h, w) order; mean = float(sum / count); var_sum = float(double sum
     of float((x - mean)^2)); invstd = float(1 / sqrt(double(var_sum / count) + eps)) with
     var_sum / count in float; alpha = invstd * weight, beta = fma(-mean, alpha, bias), y =
     fma(x, alpha, beta) (torch's vectorised CPU code fuses both; `fused` = 0 computes them
     unfused for builds that do not, picked by the self-check in Python).
   - BatchNorm, the 2x2 max-pool and ReLU of a block in one pass (with a graph, with the
     pool's choice of position per window, its `return_indices`).
   - The 2x2 max-pool alone, values and choice, eight windows at a time; its backward.

   Build with -ffp-contract=off (no contraction beyond the explicit fused multiply-adds) and
   without -ffast-math: the additions must stay in their written order. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__AVX2__) && defined(__FMA__)
#define MTML_AVX2 1
#include <immintrin.h>
#endif

#define GROUP 8   /* channels per vector */
#define GROUPS 4  /* vectors of channels summed side by side */

static void sums_scalar(const float *x, long n, long c, long hw, long c0, long g, const float *mean,
                        double *s) {
  for (long b = 0; b < n; b++) {
    const float *p = x + (b * c + c0) * hw;
    for (long i = 0; i < hw; i++)
      for (long k = 0; k < g; k++) {
        float v = p[k * hw + i];
        if (mean) { float d = v - mean[k]; v = d * d; }
        s[k] += (double)v;
      }
  }
}

#if defined(MTML_AVX2)
/* r[j] <- lane k holds row k's element j (8x8 float transpose) */
static inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* Sequential double sums of `groups` x 8 channels from c0 (of x, or of (x - mean)^2 when mean
   is given), 8 positions of a plane at a time; the last, partial block adds only its `rem`
   real positions, so every channel adds exactly its values, in order. */
static void sums_avx2(const float *x, long n, long c, long hw, long c0, int groups, const float *mean,
                      double *s) {
  __m256d acc[GROUPS][2];
  __m256 m[GROUPS];
  for (int q = 0; q < groups; q++) {
    acc[q][0] = _mm256_loadu_pd(s + q * GROUP);
    acc[q][1] = _mm256_loadu_pd(s + q * GROUP + 4);
    m[q] = mean ? _mm256_loadu_ps(mean + q * GROUP) : _mm256_setzero_ps();
  }
  for (long b = 0; b < n; b++) {
    const float *p = x + (b * c + c0) * hw;
    for (long i = 0; i < hw; i += 8) {
      long rem = hw - i < 8 ? hw - i : 8;
      __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      for (int q = 0; q < groups; q++) {
        __m256 r[8];
        const float *pq = p + (long)q * GROUP * hw + i;
        if (rem == 8)
          for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(pq + k * hw);
        else
          for (int k = 0; k < 8; k++) r[k] = _mm256_maskload_ps(pq + k * hw, mask);
        transpose8(r);
        for (int j = 0; j < rem; j++) {
          __m256 v = r[j];
          if (mean) { __m256 d = _mm256_sub_ps(v, m[q]); v = _mm256_mul_ps(d, d); }
          acc[q][0] = _mm256_add_pd(acc[q][0], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
          acc[q][1] = _mm256_add_pd(acc[q][1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        }
      }
    }
  }
  for (int q = 0; q < groups; q++) {
    _mm256_storeu_pd(s + q * GROUP, acc[q][0]);
    _mm256_storeu_pd(s + q * GROUP + 4, acc[q][1]);
  }
}
#endif

/* Per-channel sums over all channels, of x or of (x - mean)^2. */
static void channel_sums(const float *x, long n, long c, long hw, const float *mean, double *s) {
  for (long k = 0; k < c; k++) s[k] = 0.0;
  long c0 = 0;
#if defined(MTML_AVX2)
  for (; c0 + GROUP <= c; ) {
    long left = (c - c0) / GROUP;
    int groups = left < GROUPS ? (int)left : GROUPS;
    sums_avx2(x, n, c, hw, c0, groups, mean ? mean + c0 : 0, s + c0);
    c0 += (long)groups * GROUP;
  }
#endif
  if (c0 < c) sums_scalar(x, n, c, hw, c0, c - c0, mean ? mean + c0 : 0, s + c0);
}

int mtml_avx2(void) {
#if defined(MTML_AVX2)
  return 1;
#else
  return 0;
#endif
}

/* mean[c], invstd[c] of x[n, c, hw]; `work` holds c doubles. */
void mtml_bn_stats(const float *x, long n, long c, long hw, double eps, float *mean, float *invstd,
                   double *work) {
  long count = n * hw;
  channel_sums(x, n, c, hw, 0, work);
  for (long k = 0; k < c; k++) mean[k] = (float)(work[k] / (double)count);
  channel_sums(x, n, c, hw, mean, work);
  for (long k = 0; k < c; k++) {
    float v = (float)work[k] / (float)count;  /* torch keeps var_sum as float, divides in float */
    invstd[k] = (v == 0.0f && eps == 0.0) ? 0.0f : (float)(1.0 / sqrt((double)v + eps));
  }
}

/* Channel k's BatchNorm as y = x * a + beta: a = invstd * weight, beta = bias - mean * a
   (weight and bias may be null: 1 and 0). */
struct affine {
  float a, beta;
  int fused;
};

static inline struct affine channel_affine(long k, const float *mean, const float *invstd, const float *weight,
                                           const float *bias, int fused) {
  struct affine af;
  af.a = invstd[k] * (weight ? weight[k] : 1.0f);
  float b = bias ? bias[k] : 0.0f;
  af.beta = fused ? fmaf(-mean[k], af.a, b) : b - mean[k] * af.a;
  af.fused = fused;
  return af;
}

/* y of one value (null: the value itself). */
static inline float affine1(float x, const struct affine *af) {
  if (!af) return x;
  return af->fused ? fmaf(x, af->a, af->beta) : x * af->a + af->beta;
}

void mtml_bn_apply(const float *x, long n, long c, long hw, const float *mean, const float *invstd,
                   const float *weight, const float *bias, int fused, float *y) {
  for (long k = 0; k < c; k++) {
    struct affine af = channel_affine(k, mean, invstd, weight, bias, fused);
    float a = af.a, beta = af.beta;
    for (long i = 0; i < n; i++) {
      const float *p = x + (i * c + k) * hw;
      float *q = y + (i * c + k) * hw;
      if (fused)
        for (long j = 0; j < hw; j++) q[j] = fmaf(p[j], a, beta);
      else
        for (long j = 0; j < hw; j++) q[j] = p[j] * a + beta;
    }
  }
}

/* torch.maximum on a CPU: NaN (all bits set, as its vectorised code makes it) when either is
   NaN, else the larger, the second when they compare equal (+0 and -0). */
static inline float torch_maximum(float a, float b) {
  if (a != a || b != b) {
    union { uint32_t u; float f; } nan = {0xFFFFFFFFu};
    return nan.f;
  }
  return a > b ? a : b;
}

#if defined(MTML_AVX2)
static inline __m256 torch_maximum8(__m256 a, __m256 b) {
  /* MAXPS gives b when they compare equal or either is NaN; NaN lanes become all ones */
  return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

static inline __m256 normalise8(__m256 x, __m256 a, __m256 beta, int fused) {
  return fused ? _mm256_fmadd_ps(x, a, beta) : _mm256_add_ps(_mm256_mul_ps(x, a), beta);
}

/* Lanes 0..n-1 of eight (n <= 8; n <= 0: none): the masks of a row's last windows. */
static inline __m256i first_lanes(long n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n)), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
}

/* Columns 2j .. 2j+15 of row r as its even and odd columns, in order (n = 8 windows); for
   n < 8 only the 2n columns of those windows are read (the other lanes are 0). */
static inline void columns8(const float *r, long j, long n, __m256 *even, __m256 *odd) {
  __m256 lo, hi;
  if (n == 8) {
    lo = _mm256_loadu_ps(r + 2 * j);
    hi = _mm256_loadu_ps(r + 2 * j + 8);
  } else {
    lo = _mm256_maskload_ps(r + 2 * j, first_lanes(2 * n));
    hi = _mm256_maskload_ps(r + 2 * j + 8, first_lanes(2 * n - 8));
  }
  /* shuffle within 128-bit lanes, then order the lanes */
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
}

static inline void store8(float *q, long n, __m256 v) {
  if (n == 8)
    _mm256_storeu_ps(q, v);
  else
    _mm256_maskstore_ps(q, first_lanes(n), v);
}
#endif

/* The window a step of eight starts at in a row of ow windows (j = 0, 8, 16, ...): a row's
   last step overlaps the one before (the same results again) unless the row has fewer than 8,
   which one masked step covers. */
static inline long step_start(long j, long ow) { return ow - j >= 8 || ow < 8 ? j : ow - 8; }
static inline long step_windows(long ow) { return ow < 8 ? ow : 8; }

/* Without a graph, a Conv-4 block's BatchNorm, 2x2 max-pool and ReLU in one pass:
   out[n, c, i, j] = relu(max(max(y[2i, 2j], y[2i+1, 2j]), max(y[2i, 2j+1], y[2i+1, 2j+1])))
   with y the BatchNorm output as in mtml_bn_apply, the pool's row pairs first as
   `conv4.max_pool` takes them, and torch.relu's -0 kept (x < 0 ? 0 : x). */
void mtml_bn_apply_pool_relu(const float *x, long n, long c, long h, long w, const float *mean,
                             const float *invstd, const float *weight, const float *bias, int fused,
                             float *out) {
  long oh = h / 2, ow = w / 2;
  for (long k = 0; k < c; k++) {
    struct affine af = channel_affine(k, mean, invstd, weight, bias, fused);
#if defined(MTML_AVX2)
    __m256 va = _mm256_set1_ps(af.a), vbeta = _mm256_set1_ps(af.beta), zero = _mm256_setzero_ps();
#endif
    for (long s = 0; s < n; s++) {
      const float *p = x + (s * c + k) * h * w;
      float *q = out + (s * c + k) * oh * ow;
      for (long i = 0; i < oh; i++) {
        const float *r0 = p + 2 * i * w, *r1 = r0 + w;
        long j = 0;
#if defined(MTML_AVX2)
        for (; j < ow; j += 8) {
          long at = step_start(j, ow), nw = step_windows(ow);
          __m256 e0, o0, e1, o1;
          columns8(r0, at, nw, &e0, &o0);
          columns8(r1, at, nw, &e1, &o1);
#define Y(v) normalise8(v, va, vbeta, fused)
          __m256 m = torch_maximum8(torch_maximum8(Y(e0), Y(e1)), torch_maximum8(Y(o0), Y(o1)));
#undef Y
          store8(q + i * ow + at, nw, _mm256_blendv_ps(m, zero, _mm256_cmp_ps(m, zero, _CMP_LT_OQ)));
        }
#endif
        for (; j < ow; j++) {
          float y00 = affine1(r0[2 * j], &af), y01 = affine1(r0[2 * j + 1], &af);
          float y10 = affine1(r1[2 * j], &af), y11 = affine1(r1[2 * j + 1], &af);
          float m = torch_maximum(torch_maximum(y00, y10), torch_maximum(y01, y11));
          q[i * ow + j] = m < 0.0f ? 0.0f : m;
        }
      }
    }
  }
}

/* The 2x2, stride-2 max-pool's choice per window, as torch's CPU max_pool2d makes it: the
   window's positions in order (row-major), keeping the first unless a later one is larger or
   NaN (then that one), starting from the first position; index = row * w + column in the
   plane. The values pooled are the map's own, or (with a graph, a block after its conv) its
   BatchNorm output y = x * a + beta as in mtml_bn_apply, and then the value out is relu(y)
   at the chosen position (torch.relu: x < 0 ? 0 : x, -0 kept). */

static inline void pool_window(const float *r0, const float *r1, long j, long base, long w, const struct affine *af,
                               int64_t *index, float *out) {
  float v[4] = {affine1(r0[2 * j], af), affine1(r0[2 * j + 1], af), affine1(r1[2 * j], af),
                affine1(r1[2 * j + 1], af)};
  int arg = 0;
  for (int q = 1; q < 4; q++)
    if (v[q] > v[arg] || v[q] != v[q]) arg = q;  /* from the first position: -inf windows keep it */
  *index = base + (arg & 1) + (arg >> 1) * w;
  *out = af && v[arg] < 0.0f ? 0.0f : v[arg];
}

#if defined(MTML_AVX2)
/* Windows j .. j+n-1 (n <= 8) of one row pair at once, the same choice as pool_window lane by
   lane; n < 8 reads and writes only the row's own columns. */
static inline void pool8(const float *r0, const float *r1, long j, long n, long base, long w, const struct affine *af,
                         int64_t *index, float *out) {
  __m256 v[4];
  columns8(r0, j, n, &v[0], &v[1]);
  columns8(r1, j, n, &v[2], &v[3]);
  if (af) {
    __m256 va = _mm256_set1_ps(af->a), vbeta = _mm256_set1_ps(af->beta);
    for (int q = 0; q < 4; q++) v[q] = normalise8(v[q], va, vbeta, af->fused);
  }
  __m256 best = v[0];
  __m256i arg = _mm256_setzero_si256();
  for (int q = 1; q < 4; q++) {
    __m256 take = _mm256_or_ps(_mm256_cmp_ps(v[q], best, _CMP_GT_OQ), _mm256_cmp_ps(v[q], v[q], _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, v[q], take);
    arg = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(arg),
                                               _mm256_castsi256_ps(_mm256_set1_epi32(q)), take));
  }
  __m256i at = _mm256_add_epi32(_mm256_add_epi32(_mm256_set_epi32(14, 12, 10, 8, 6, 4, 2, 0),
                                                 _mm256_set1_epi32((int)base)),
                                _mm256_add_epi32(_mm256_and_si256(arg, _mm256_set1_epi32(1)),
                                                 _mm256_mullo_epi32(_mm256_srli_epi32(arg, 1),
                                                                    _mm256_set1_epi32((int)w))));
  __m256i at0 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(at));
  __m256i at1 = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(at, 1));
  if (n == 8) {
    _mm256_storeu_si256((__m256i *)index, at0);
    _mm256_storeu_si256((__m256i *)(index + 4), at1);
  } else {
    __m256i mo = first_lanes(n);
    _mm256_maskstore_epi64((long long *)index, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(mo)), at0);
    _mm256_maskstore_epi64((long long *)(index + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(mo, 1)),
                           at1);
  }
  if (af) {
    __m256 zero = _mm256_setzero_ps();
    best = _mm256_blendv_ps(best, zero, _mm256_cmp_ps(best, zero, _CMP_LT_OQ));
  }
  store8(out, n, best);
}
#endif

/* One plane: index and out get (h / 2) x (w / 2) windows. */
static inline void pool_plane(const float *src, long h, long w, const struct affine *af, int64_t *ix, float *o) {
  long oh = h / 2, ow = w / 2;
  for (long i = 0; i < oh; i++) {
    const float *r0 = src + 2 * i * w, *r1 = r0 + w;
    long j = 0;
#if defined(MTML_AVX2)
    if (h * w < (1L << 30)) {  /* positions fit the int32 lanes */
      for (; j < ow; j += 8) {
        long at = step_start(j, ow);
        pool8(r0, r1, at, step_windows(ow), 2 * i * w + 2 * at, w, af, ix + i * ow + at, o + i * ow + at);
      }
    }
#endif
    for (; j < ow; j++) pool_window(r0, r1, j, 2 * i * w + 2 * j, w, af, ix + i * ow + j, o + i * ow + j);
  }
}

/* max_pool2d(x, 2, return_indices=True) of `planes` contiguous h x w planes. */
void mtml_pool_index(const float *x, long planes, long h, long w, int64_t *index, float *out) {
  long size = (h / 2) * (w / 2);
  for (long p = 0; p < planes; p++) pool_plane(x + p * h * w, h, w, NULL, index + p * size, out + p * size);
}

/* With a graph, a Conv-4 block after its convolution in one pass: out = relu(max_pool2d(y, 2))
   and the pool's index, y = batch_norm(x) as in mtml_bn_apply (y itself is not kept). */
void mtml_bn_apply_pool_relu_index(const float *x, long n, long c, long h, long w, const float *mean,
                                   const float *invstd, const float *weight, const float *bias, int fused,
                                   int64_t *index, float *out) {
  long size = (h / 2) * (w / 2);
  for (long k = 0; k < c; k++) {
    struct affine af = channel_affine(k, mean, invstd, weight, bias, fused);
    for (long s = 0; s < n; s++)
      pool_plane(x + (s * c + k) * h * w, h, w, &af, index + (s * c + k) * size, out + (s * c + k) * size);
  }
}

/* The pool's gradient: zeros, and each window's chosen position gets 0 + its output's
   gradient (what scatter_add into zeros, gather's backward, computes: -0 becomes +0). With
   `relu_out` (the block's output relu(pool(y))), ReLU's backward first, as threshold_backward
   computes it: 0 where the output is <= 0. */
void mtml_pool_backward(const float *grad, const float *relu_out, const int64_t *index, long planes, long h, long w,
                        float *grad_in) {
  long in_size = h * w, out_size = (h / 2) * (w / 2);
  for (long p = 0; p < planes; p++) {
    float *dst = grad_in + p * in_size;
    for (long i = 0; i < in_size; i++) dst[i] = 0.0f;
    const float *g = grad + p * out_size;
    const int64_t *ix = index + p * out_size;
    if (relu_out) {
      const float *o = relu_out + p * out_size;
      for (long j = 0; j < out_size; j++) dst[ix[j]] += o[j] <= 0.0f ? 0.0f : g[j];
    } else {
      for (long j = 0; j < out_size; j++) dst[ix[j]] += g[j];
    }
  }
}
