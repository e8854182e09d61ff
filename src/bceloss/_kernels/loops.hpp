// The loops of the fused kernels: one pass over a run of blocks, piece by piece.
//
// A block (BLOCK elements, or BLOCK kept ones under a mask) is computed in pieces of PIECE
// elements whose buffers stay in L1: its operands read in place where they are stored in
// the compute type, else decoded into a buffer; the terms of `formulas.hpp` in one loop per
// case (`segment`, compiled for each vector width); the loss added into LANES float64
// partial sums in `_summation.block_sums`' order; the outputs written in place, or encoded
// from a buffer into their storage type.
#pragma once

#include <cstdint>
#include <cstring>

#include "formulas.hpp"

#if !defined(__GNUC__)
#error "bceloss's kernels need GCC or clang (vector extensions, __restrict, __builtin_*)"
#endif

// One build serves every x86-64 machine: the hot loops are compiled for AVX-512 (x86-64-v4),
// AVX2 with FMA (x86-64-v3) and the baseline, and the loader picks one for the CPU (GCC's
// function multiversioning, through glibc's ifunc). Elsewhere the baseline alone: the same
// results, as nothing is contracted unless written as fma. (Older GCCs know no
// arch=x86-64-v4 clone.)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__GLIBC__)
#define BCELOSS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BCELOSS_CLONES
#endif

namespace bceloss {

constexpr int64_t BLOCK = 8192;  // elements of a summation block (`_summation.BLOCK`)
constexpr int64_t LANES = 64;    // partial sums of a block (`_summation.LANES`)
constexpr int64_t PIECE = 1024;  // elements of a block computed at a time (a multiple of LANES)

// How an operand or an output is stored. float16 and bfloat16 travel as their bits.
enum class Storage : int { f32, f64, f16, bf16, b8, i8, u8, i32, u32, i64, u64 };

enum class Kind : int { logits, probabilities, focal };

// Whether n values all lie in [0, 1] or are NaN (BCE's check of probabilities), counted a
// block at a time (an integer sum vectorizes, a flag's OR does not), the answer given at the
// first block with a value outside.
template <class T>
BCELOSS_CLONES bool all_in_unit_range(const T* v, int64_t n) {
    constexpr int64_t block = 4096;
    for (int64_t start = 0; start < n; start += block) {
        const int64_t end = start + block < n ? start + block : n;
        int outside = 0;  // NaN compares false both ways: inside
        for (int64_t i = start; i < end; ++i) outside += (v[i] < T(0)) | (v[i] > T(1));
        if (outside != 0) return false;
    }
    return true;
}

template <class F>
constexpr Storage storage_of();
template <>
constexpr Storage storage_of<float>() {
    return Storage::f32;
}
template <>
constexpr Storage storage_of<double>() {
    return Storage::f64;
}

// A flat, contiguous input: element i of the loss reads element i % period (a periodic
// weight; period = n for the input and the target). data is null where it is absent.
struct Operand {
    const void* data;
    Storage type;
    int64_t period;
};

// A flat, contiguous output; data is null where it is not wanted.
struct Output {
    void* data;
    Storage type;
};

// The scalars of a call, in the compute type.
template <class F>
struct Options {
    F divisor;  // of the gradients (a mean's denominator over the seed of a backward pass)
    Smooth<F> smooth;
    F ignore;  // the ignored label, NaN for none
    F alpha;   // the focal loss's, when it has one
    double gamma;
};

// The segment loop of one case: m elements of the operands (in the compute type) into the
// loss l and, as `Grad` says, d/dx into g (Grad >= 1) and d/dy into h (Grad == 2), the
// gradients divided by the divisor in the loop, where the divider works beside the busier
// multiply-add units. `Flag`: pos_weight (logits) or alpha (focal) given. `Plain`: no label
// smoothing and no ignored label (logits and probabilities).
template <class F>
using Segment = void (*)(int64_t m, const F* x, const F* y, const F* w, const F* p, F* l, F* g,
                         F* h, const Options<F>& o);

template <class F, Kind K, int Grad, bool HasW, bool Flag, bool Plain>
BCELOSS_CLONES void segment(int64_t m, const F* __restrict x, const F* __restrict y,
                            const F* __restrict w, const F* __restrict p, F* __restrict l,
                            F* __restrict g, F* __restrict h, const Options<F>& o) {
    const Options<F> opt = o;  // in registers: the outputs cannot alias it
    if constexpr (K == Kind::probabilities && Plain && Grad < 2) {
        // targets of 0 and 1 alone (the usual labels): one log an element, not two, with the
        // same bits (`probabilities_hard`); a NaN target counts as another value
        // (counted in 32 bits, the floats' width: a 64-bit count widens each comparison first;
        // m is at most a PIECE)
        int32_t soft = 0;
        for (int64_t k = 0; k < m; ++k) soft += (y[k] != F(0)) & (y[k] != F(1));
        if (soft == 0) {
#pragma GCC unroll 4
            for (int64_t k = 0; k < m; ++k) {
                const Terms<F> t = probabilities_hard<F>(x[k], y[k], HasW ? w[k] : F(1));
                l[k] = t.loss;
                if constexpr (Grad >= 1) g[k] = t.gx / opt.divisor;
            }
            return;
        }
    }
    // Unrolled: several vectors in flight hide the latency of the polynomials' chains of
    // multiply-adds (one vector at a time waits on each).
#pragma GCC unroll 4
    for (int64_t k = 0; k < m; ++k) {
        const F wk = HasW ? w[k] : F(1);  // a constant without a weight: w l folds to l
        Terms<F> t;
        if constexpr (K == Kind::logits) {
            t = logits<F, Flag, Plain>(x[k], y[k], wk, Flag ? p[k] : F(1), opt.smooth, opt.ignore);
        } else if constexpr (K == Kind::probabilities) {
            t = probabilities<F>(x[k], y[k], wk, opt.smooth);
        } else {
            t = focal<F, Flag>(x[k], y[k], wk, opt.alpha, opt.gamma, opt.ignore);
        }
        l[k] = t.loss;
        if constexpr (Grad >= 1) g[k] = t.gx / opt.divisor;
        if constexpr (Grad == 2) h[k] = t.gy / opt.divisor;
    }
}

// The segment loop for a call: every case compiled ahead of time, picked once per call.
template <class F>
Segment<F> segment_for(Kind kind, int grad, bool has_w, bool flag, bool plain);

// Element i of a stored operand in the compute type (halves widened exactly; integers
// rounded once, as a conversion does).
template <class F>
void decode(const Operand& a, int64_t start, int64_t count, F* dst);

// The compute-type elements start .. start + count of a (periodic) operand: a pointer into
// the operand itself where it holds the compute type and does not wrap, else `buf`, filled.
template <class F>
const F* view(const Operand& a, int64_t start, int64_t count, F* buf) {
    int64_t j = start % a.period;
    if (a.type == storage_of<F>() && j + count <= a.period) {
        return static_cast<const F*>(a.data) + j;
    }
    for (int64_t done = 0; done < count; j = 0) {
        const int64_t m = count - done < a.period - j ? count - done : a.period - j;
        decode<F>(a, j, m, buf + done);
        done += m;
    }
    return buf;
}

// buf[0 .. count) stored into out.data at start, in out's type (float64 to a half type
// through a float32 rounded to odd: rounded once).
template <class F>
void encode(const Output& out, int64_t start, int64_t count, const F* buf);

// Element k of buf into lane k % LANES, each lane a sequential float64 sum.
template <class F>
void add_lanes(double* lanes, const F* buf, int64_t count);

// The kept elements of buf, in order, into the lanes from lane kept % LANES on: what
// `add_lanes` gives buf[keep]. Returns the new number kept.
template <class F>
int64_t add_kept(double* lanes, const F* buf, const uint8_t* keep, int64_t count, int64_t kept,
                 double* packed);

// The lanes' sum as a tree of halves (`_summation.block_sums`); the lanes are overwritten.
double fold(double* lanes);

// Where each block of BLOCK kept elements begins in the mask `keep` of n bytes: starts[0] = 0,
// starts[blocks] = n, at most n / BLOCK + 2 entries. Returns the number of blocks; `kept` gets
// the number of elements kept.
int64_t kept_blocks(const uint8_t* keep, int64_t n, int64_t* starts, int64_t* kept);

// A call of the kernel: block b covers the flat elements starts[b] .. starts[b + 1] (BLOCK of
// them, or BLOCK kept ones under the mask `keep`). sums[b] gets its loss's sum, wsums[b] its
// weights' (wd, float64) for 'weighted_mean'; out, gx, gy the elementwise loss and gradients
// (0 where the mask drops an element). Absent outputs (null) are not computed.
template <class F>
struct Call {
    Segment<F> segment;  // null when only the weights' sums are wanted
    Operand x, y, w, p, wd;
    const uint8_t* keep;
    Options<F> options;
    Output out, gx, gy;
    double* sums;
    double* wsums;
    const int64_t* starts;
    int64_t blocks;
    int64_t* outside;  // per block: input values outside [0, 1] (counted where not null)
};

// Blocks first .. last of a call, on the calling thread.
template <class F>
void run_blocks(const Call<F>& call, int64_t first, int64_t last);

}  // namespace bceloss
