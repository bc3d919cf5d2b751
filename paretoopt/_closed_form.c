/* The PAMA closed form (He & Maghsudi, ECML-PKDD 2025, Theorem 1) over the objective
 * dimension of an n x N row-major matrix, on the CPU, in one pass from memory.
 *
 * paretoopt compiles this file at first use when a C compiler is present (see
 * paretoopt/_native.py) and otherwise computes the same values with torch operations
 * (paretoopt/_closed_form.py). The results are those of the torch formulas bit for bit, apart
 * from the sign of a zero s*: no fused multiply-add (-ffp-contract=off), no fast-math, every
 * value is one IEEE operation of the formula in the element type. This file includes itself
 * once per element type (float, double), so it is compiled by its full path.
 *
 * Both kernels take the columns [begin, end) in blocks of `cols` columns. Per block the rows
 * are folded into a running min and max eight at a time (eight read streams, the running
 * extrema in L1), NaN is detected on pairs of inputs (an unordered compare covers two), and
 * infinities show in the min or max themselves. They return nonzero when a value that the
 * torch formula would reject was seen (the caller then scans the input for the exact error);
 * an overflow of max - min only sends the caller to that scan.
 */
#ifndef PARETOOPT_T

#include <float.h>
#include <stdint.h>

#define PARETOOPT_MAX_COLS 4096

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
/* One AVX2 body and one baseline body, chosen at load time by the CPU (glibc ifunc). */
#define PARETOOPT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PARETOOPT_CLONES
#endif

#define PO_MIN(x, y) ((x) < (y) ? (x) : (y))
#define PO_MAX(x, y) ((x) > (y) ? (x) : (y))
#define PO_NAN2(x, y) __builtin_isunordered(x, y)

int paretoopt_abi_version(void) { return 1; }

#define PARETOOPT_T float
#define PO_SFX f32
#define PO_TINY FLT_MIN
#define PO_BIG FLT_MAX
#include __FILE__
#undef PARETOOPT_T
#undef PO_SFX
#undef PO_TINY
#undef PO_BIG

#define PARETOOPT_T double
#define PO_SFX f64
#define PO_TINY DBL_MIN
#define PO_BIG DBL_MAX
#include __FILE__
#undef PARETOOPT_T
#undef PO_SFX
#undef PO_TINY
#undef PO_BIG

#else /* one element type: T */

#define T PARETOOPT_T
#define PO_CAT2(a, b) a##_##b
#define PO_CAT(a, b) PO_CAT2(a, b)
#define PO_FN(name) PO_CAT(name, PO_SFX)

/* Min and max over the n rows of the columns [j0, j0 + w) into mn and mx; nonzero if a NaN
 * was read. */
static inline __attribute__((always_inline)) int PO_FN(po_extrema)(
    const T *restrict a, int64_t n, int64_t stride, int64_t j0, int64_t w, T *restrict mn,
    T *restrict mx) {
    int nan = 0;
    const T *r0 = a + j0, *r1 = n > 1 ? r0 + stride : r0;
    for (int64_t j = 0; j < w; j++) {
        const T x = r0[j], y = r1[j];
        mn[j] = PO_MIN(x, y);
        mx[j] = PO_MAX(x, y);
        nan |= PO_NAN2(x, y);
    }
    int64_t i = 2;
    for (; i + 7 < n; i += 8) {
        const T *p0 = a + i * stride + j0, *p1 = p0 + stride, *p2 = p1 + stride;
        const T *p3 = p2 + stride, *p4 = p3 + stride, *p5 = p4 + stride, *p6 = p5 + stride;
        const T *p7 = p6 + stride;
        for (int64_t j = 0; j < w; j++) {
            const T x0 = p0[j], x1 = p1[j], x2 = p2[j], x3 = p3[j];
            const T x4 = p4[j], x5 = p5[j], x6 = p6[j], x7 = p7[j];
            const T lo = PO_MIN(PO_MIN(PO_MIN(x0, x1), PO_MIN(x2, x3)),
                                PO_MIN(PO_MIN(x4, x5), PO_MIN(x6, x7)));
            const T hi = PO_MAX(PO_MAX(PO_MAX(x0, x1), PO_MAX(x2, x3)),
                                PO_MAX(PO_MAX(x4, x5), PO_MAX(x6, x7)));
            mn[j] = PO_MIN(lo, mn[j]);
            mx[j] = PO_MAX(hi, mx[j]);
            nan |= PO_NAN2(x0, x1) | PO_NAN2(x2, x3) | PO_NAN2(x4, x5) | PO_NAN2(x6, x7);
        }
    }
    for (; i + 3 < n; i += 4) {
        const T *p0 = a + i * stride + j0, *p1 = p0 + stride, *p2 = p1 + stride;
        const T *p3 = p2 + stride;
        for (int64_t j = 0; j < w; j++) {
            const T x0 = p0[j], x1 = p1[j], x2 = p2[j], x3 = p3[j];
            const T lo = PO_MIN(PO_MIN(x0, x1), PO_MIN(x2, x3));
            const T hi = PO_MAX(PO_MAX(x0, x1), PO_MAX(x2, x3));
            mn[j] = PO_MIN(lo, mn[j]);
            mx[j] = PO_MAX(hi, mx[j]);
            nan |= PO_NAN2(x0, x1) | PO_NAN2(x2, x3);
        }
    }
    for (; i + 1 < n; i += 2) {
        const T *p0 = a + i * stride + j0, *p1 = p0 + stride;
        for (int64_t j = 0; j < w; j++) {
            const T x0 = p0[j], x1 = p1[j];
            mn[j] = PO_MIN(PO_MIN(x0, x1), mn[j]);
            mx[j] = PO_MAX(PO_MAX(x0, x1), mx[j]);
            nan |= PO_NAN2(x0, x1);
        }
    }
    for (; i < n; i++) {
        const T *p0 = a + i * stride + j0;
        for (int64_t j = 0; j < w; j++) {
            const T x0 = p0[j];
            mn[j] = PO_MIN(x0, mn[j]);
            mx[j] = PO_MAX(x0, mx[j]);
            nan |= PO_NAN2(x0, x0);
        }
    }
    return nan;
}

/* s* = max(min_i a_i, 0) + min(max_i a_i, 0) per column (noon: max(min_i a_i, 0), the s* of
 * the clipped input), into out[begin:end]. Nonzero if any input is NaN or infinite. */
PARETOOPT_CLONES int PO_FN(paretoopt_s_star)(const T *restrict a, int64_t n, int64_t stride,
                                             int64_t begin, int64_t end, int64_t cols,
                                             T *restrict out, int noon) {
    T mn[PARETOOPT_MAX_COLS], mx[PARETOOPT_MAX_COLS];
    int bad = 0;
    if (cols < 1 || cols > PARETOOPT_MAX_COLS) return -1;
    for (int64_t j0 = begin; j0 < end; j0 += cols) {
        const int64_t w = end - j0 < cols ? end - j0 : cols;
        bad |= PO_FN(po_extrema)(a, n, stride, j0, w, mn, mx);
        T *o = out + j0;
        for (int64_t j = 0; j < w; j++) {
            const T d = mx[j] - mn[j];
            bad |= !(d - d == 0);
        }
        if (noon) {
            for (int64_t j = 0; j < w; j++) o[j] = PO_MAX(mn[j], (T)0);
        } else {
            for (int64_t j = 0; j < w; j++) o[j] = PO_MAX(mn[j], (T)0) + PO_MIN(mx[j], (T)0);
        }
    }
    return bad;
}

/* The weights' kernel for two objectives: every column in registers, one pass, no scratch.
 * The group sizes are 0, 1 or 2, so one over a size is 1 or 0.5 (exact, as the division) and
 * in a mixed column each extreme is one objective (x != y), so its share is divided by 1. */
static inline __attribute__((always_inline)) int PO_FN(po_closed_form2)(
    const T *restrict r0, const T *restrict r1, int64_t begin, int64_t end,
    T *restrict s_out, T *restrict w0, T *restrict w1, int noon) {
    int nan = 0, bad = 0;
    if (noon) {
        for (int64_t j = begin; j < end; j++) {
            const T x = r0[j], y = r1[j];
            const T mn = PO_MIN(x, y);
            nan |= PO_NAN2(x, y);
            bad |= PO_MAX(x, y) > (T)PO_BIG; /* +inf; -inf clips to 0 */
            const T s = PO_MAX(mn, (T)0);
            const T ex = x <= s ? (T)1 : (T)0, ey = y <= s ? (T)1 : (T)0;
            const T inv = ex + ey > 1 ? (T)0.5 : (T)1;
            s_out[j] = s;
            w0[j] = ex * inv; /* 1 * inv or 0 * inv: exact */
            w1[j] = ey * inv;
        }
        return nan | bad;
    }
    /* Without clipping, for x != y the weight on the larger objective is t and on the smaller
     * 1 - t: t = 0 where s* is the min (min > 0, or min == 0: the zero is the min), 1 where
     * it is the max (max < 0, or max == 0), lambda in mixed columns; 1 - t is then exactly the
     * formula's 1 or 0 or 1 - lambda. A tie (x == y, zeros of both signs included) is one
     * group of two: 0.5 each. */
    for (int64_t j = begin; j < end; j++) {
        const T x = r0[j], y = r1[j];
        const T mn = PO_MIN(x, y), mx = PO_MAX(x, y), d = mx - mn;
        nan |= PO_NAN2(x, y);
        bad |= !(d - d == 0);
        s_out[j] = PO_MAX(mn, (T)0) + PO_MIN(mx, (T)0);
        /* max - min overflows only for values near the type's max: then the halves. */
        const int over = d > (T)PO_BIG;
        const T num = over ? mn * (T)0.5 : mn;
        const T den = over ? mx * (T)0.5 - mn * (T)0.5 : PO_MAX(d, (T)PO_TINY);
        T lam = -(num / den);
        lam = PO_MIN(PO_MAX(lam, (T)0), (T)1);
        const T t = mn >= 0 ? (T)0 : mx <= 0 ? (T)1 : lam;
        const T w_x = x > y ? t : (T)1 - t, w_y = x > y ? (T)1 - t : t;
        w0[j] = x == y ? (T)0.5 : w_x;
        w1[j] = x == y ? (T)0.5 : w_y;
    }
    return nan | bad;
}

/* s* and the simplex weights that attain it (the choice of paretoopt.pama_closed_form):
 * weights w[i * wstride + j]. Per block, in cache: the extrema and s*; in one pass the size of
 * the group s* names (objectives equal to s*; with noon, those whose clipped value is s*, i.e.
 * raw <= s*) and, without noon, of the min and max groups; the group's weight one over its
 * size, and in mixed-sign columns (no objective equals s*) the min's and max's shares
 * (1 - lambda, lambda) over their sizes. In a block without ties every size is 0 or 1 and
 * the divisions by them, exact, are skipped. Nonzero if an input is NaN or infinite (noon:
 * NaN or +inf, since -inf clips to 0). */
PARETOOPT_CLONES int PO_FN(paretoopt_closed_form)(const T *restrict a, int64_t n,
                                                  int64_t stride, int64_t begin, int64_t end,
                                                  int64_t cols, T *restrict s_out,
                                                  T *restrict wts, int64_t wstride, int noon) {
    T mn[PARETOOPT_MAX_COLS], mx[PARETOOPT_MAX_COLS], cnt[PARETOOPT_MAX_COLS];
    T inv[PARETOOPT_MAX_COLS], cmin[PARETOOPT_MAX_COLS], cmax[PARETOOPT_MAX_COLS];
    int bad = 0;
    if (cols < 1 || cols > PARETOOPT_MAX_COLS) return -1;
    if (n == 2)
        return PO_FN(po_closed_form2)(a, a + stride, begin, end, s_out, wts, wts + wstride, noon);
    for (int64_t j0 = begin; j0 < end; j0 += cols) {
        const int64_t w = end - j0 < cols ? end - j0 : cols;
        bad |= PO_FN(po_extrema)(a, n, stride, j0, w, mn, mx);
        T *restrict s = s_out + j0;
        int mixed = 0, ties = 0;
        if (noon) {
            for (int64_t j = 0; j < w; j++) {
                bad |= mx[j] > (T)PO_BIG; /* +inf; -inf clips to 0 */
                s[j] = PO_MAX(mn[j], (T)0);
                cnt[j] = 0;
            }
            for (int64_t i = 0; i < n; i++) {
                const T *restrict r = a + i * stride + j0;
                for (int64_t j = 0; j < w; j++) cnt[j] += r[j] <= s[j] ? (T)1 : (T)0;
            }
            for (int64_t j = 0; j < w; j++) ties |= cnt[j] > 1;
        } else {
            for (int64_t j = 0; j < w; j++) {
                const T d = mx[j] - mn[j];
                bad |= !(d - d == 0);
                s[j] = PO_MAX(mn[j], (T)0) + PO_MIN(mx[j], (T)0);
                cnt[j] = cmin[j] = cmax[j] = 0;
            }
            /* Rows in pairs: half the scratch traffic (the counts are small integers, exact
             * in any order). */
            int64_t i = 0;
            for (; i + 1 < n; i += 2) {
                const T *restrict r = a + i * stride + j0, *restrict q = r + stride;
                for (int64_t j = 0; j < w; j++) {
                    const T v = r[j], u = q[j];
                    cnt[j] += (v == s[j] ? (T)1 : (T)0) + (u == s[j] ? (T)1 : (T)0);
                    cmin[j] += (v == mn[j] ? (T)1 : (T)0) + (u == mn[j] ? (T)1 : (T)0);
                    cmax[j] += (v == mx[j] ? (T)1 : (T)0) + (u == mx[j] ? (T)1 : (T)0);
                }
            }
            for (; i < n; i++) {
                const T *restrict r = a + i * stride + j0;
                for (int64_t j = 0; j < w; j++) {
                    const T v = r[j];
                    cnt[j] += v == s[j] ? (T)1 : (T)0;
                    cmin[j] += v == mn[j] ? (T)1 : (T)0;
                    cmax[j] += v == mx[j] ? (T)1 : (T)0;
                }
            }
            for (int64_t j = 0; j < w; j++) {
                mixed |= cnt[j] == 0;
                ties |= (cnt[j] > 1) | (cmin[j] > 1) | (cmax[j] > 1);
            }
        }
        /* One over the group's size (1 where there is none); x / 1 == x, so without ties the
         * quotients are the dividends themselves. */
        if (ties) {
            for (int64_t j = 0; j < w; j++) inv[j] = (T)1 / PO_MAX(cnt[j], (T)1);
        } else {
            for (int64_t j = 0; j < w; j++) inv[j] = 1;
        }
        if (noon || !mixed) {
            for (int64_t i = 0; i < n; i++) {
                const T *restrict r = a + i * stride + j0;
                T *restrict o = wts + i * wstride + j0;
                if (noon) {
                    for (int64_t j = 0; j < w; j++) o[j] = r[j] <= s[j] ? inv[j] : (T)0;
                } else {
                    for (int64_t j = 0; j < w; j++) o[j] = r[j] == s[j] ? inv[j] : (T)0;
                }
            }
            continue;
        }
        /* Mixed strict signs: lambda * max + (1 - lambda) * min = 0, lambda = -min / (max -
         * min) clamped to [0, 1]; each group uniform over its ties. The shares are multiplied
         * by 1 in mixed columns and 0 elsewhere: no branch, so the loop vectorises. */
        for (int64_t j = 0; j < w; j++) {
            /* max - min overflows only for values near the type's max: -(min / 2) / (max / 2
             * - min / 2) is then the same lambda, exactly computable. */
            const T diff = mx[j] - mn[j];
            const int over = diff > (T)PO_BIG;
            const T num = over ? mn[j] * (T)0.5 : mn[j];
            const T den = over ? mx[j] * (T)0.5 - mn[j] * (T)0.5 : PO_MAX(diff, (T)PO_TINY);
            T lam = -(num / den);
            lam = PO_MIN(PO_MAX(lam, (T)0), (T)1);
            const T mixed_col = cnt[j] == 0 ? (T)1 : (T)0;
            if (ties) {
                cmin[j] = ((T)1 - lam) / cmin[j] * mixed_col;
                cmax[j] = lam / cmax[j] * mixed_col;
            } else {
                cmin[j] = ((T)1 - lam) * mixed_col;
                cmax[j] = lam * mixed_col;
            }
        }
        for (int64_t i = 0; i < n; i++) {
            const T *restrict r = a + i * stride + j0;
            T *restrict o = wts + i * wstride + j0;
            for (int64_t j = 0; j < w; j++) {
                /* At most one term is nonzero: s*'s group outside mixed columns, the min's
                 * or the max's share (min < 0 < max) in them. */
                const T v = r[j];
                const T grp = v == s[j] ? inv[j] : (T)0;
                const T at_min = v == mn[j] ? cmin[j] : (T)0;
                const T at_max = v == mx[j] ? cmax[j] : (T)0;
                o[j] = grp + at_min + at_max;
            }
        }
    }
    return bad;
}

#undef T
#undef PO_FN
#undef PO_CAT
#undef PO_CAT2

#endif
